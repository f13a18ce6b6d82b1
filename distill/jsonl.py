"""The package's one JSON-lines reader and writer.

Lines are split on "\\n" only: `str.splitlines()` also breaks at U+2028,
U+2029, form feeds and other characters that `json.dumps(...,
ensure_ascii=False)` writes unescaped inside strings, so a file we wrote
ourselves would no longer read back. Every failure is one UserError naming
the file, the line and the fix; records are JSON objects.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from distill.atomic import AtomicFile
from distill.errors import UserError


def parse_json(text: str, where: str, *, problem: str = "is not readable JSON") -> Any:
    """json.loads with one-line UserErrors (malformed, nested too deep, integers too long).

    The message starts "<where> <problem> (<reason>)"; callers add the fix.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        reason = f"{err.msg} at line {err.lineno} column {err.colno}"
    except RecursionError:
        reason = "nested too deeply"
    except ValueError as err:  # e.g. an integer longer than Python's 4300-digit limit
        reason = str(err).splitlines()[0]
    raise UserError(f"{where} {problem} ({reason})")


def read_jsonl(path: str, *, hint: str = "check the path") -> list[tuple[int, dict]]:
    """(1-based line number, record) for every non-blank line of a JSON-lines file.

    `hint` ends the message when the file is missing (e.g. "check --data-dir").
    A UTF-8 byte-order mark is tolerated.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise UserError(f"{path} not found; {hint}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a JSON-lines file; {hint}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {path} ({err.reason} at byte {err.start}); it must be UTF-8 JSON lines") from None
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or err}); {hint}") from None
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = parse_json(line, f"{where}:", problem="malformed JSON line")
        except UserError as err:
            raise UserError(f"{err}; fix or remove that line (the file must hold one JSON object per line)") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object per line, got {type(record).__name__}; "
                            "fix or remove that line")
        records.append((number, record))
    return records


def jsonl_line(record: Mapping[str, Any]) -> str:
    """One record as a JSON line (UTF-8 kept readable; "\\n" inside strings is escaped by json)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> int:
    """Writes the records atomically (see distill/atomic.py); returns how many were written."""
    count = 0
    with AtomicFile(path) as out:
        for record in records:
            out.write(jsonl_line(record))
            count += 1
    return count

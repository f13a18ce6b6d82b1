"""Writing a run's outputs in the formats the data layer reads (DESIGN.md section 2).

For dataset `name` and split `split`, under `out` (paths from the data
layer's own layout functions, so `load_examples(name, split, out)` reads them):

    <name>/<split>.teacher.jsonl     one line per example, in split-file order:
        {"id", "input", "label"?, "rationale", "rationales", "teacher_label",
         "teacher_raw": [n raw completions], "parse_ok", "error"}
    <name>/llm/<split>_CoT_<i>.json  the reference layout: JSON lists of the
        first sample's raw completion ("" for a failed prompt), 1000 a block
    <name>/<name>_<split>.json       the split's raw records, as read
(for the generic "jsonl" dataset the folder is `out` itself and the split
file `<split>.jsonl`; it has no llm/ blocks).

Every file is written to a temporary name and moved into place with
os.replace, so a crash never leaves a half-written output, and stale
higher-numbered CoT blocks from an earlier, longer run are removed.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

from distill.data.readers import dataset_dir, split_path
from distill.data.teacher_outputs import teacher_jsonl_path

COT_BLOCK_SIZE = 1000


class AtomicWriter:
    """A text file that appears at `path` only when complete (temp file + os.replace)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._tmp = f"{path}.tmp-{os.getpid()}"
        self._handle = open(self._tmp, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        self._handle.write(text)

    def commit(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> "AtomicWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self._handle.close()
            os.remove(self._tmp)


def write_json_atomic(path: str, value: object) -> None:
    with AtomicWriter(path) as out:
        out.write(json.dumps(value, ensure_ascii=False))


def output_paths(name: str, out: str, split: str) -> dict[str, str]:
    """The files a run writes: teacher jsonl, raw split file, and the llm/ folder."""
    return {"teacher": teacher_jsonl_path(name, out, split), "split": split_path(name, out, split),
            "llm": os.path.join(dataset_dir(name, out), "llm")}


class _CotBlocks:
    """llm/<split>_CoT_<i>.json blocks written as the records stream past."""

    def __init__(self, folder: str, split: str) -> None:
        self.folder, self.split = folder, split
        self.count, self._block = 0, []

    def add(self, text: str) -> None:
        self._block.append(text)
        if len(self._block) == COT_BLOCK_SIZE:
            self._flush()

    def _flush(self) -> None:
        write_json_atomic(os.path.join(self.folder, f"{self.split}_CoT_{self.count}.json"), self._block)
        self.count, self._block = self.count + 1, []

    def finish(self) -> None:
        """Write the last partial block and remove stale blocks of an earlier, longer run."""
        if self._block or self.count == 0:
            self._flush()
        pattern = re.compile(rf"{re.escape(self.split)}_CoT_(\d+)\.json")
        for entry in os.listdir(self.folder):
            match = pattern.fullmatch(entry)
            if match and int(match.group(1)) >= self.count:
                os.remove(os.path.join(self.folder, entry))


def write_outputs(name: str, split: str, out: str, records: Iterable[dict], raw_records: list[dict]) -> dict[str, str]:
    """Write the three outputs, streaming `records` (teacher.jsonl lines in split-file order).

    The raw split file holds raw_records[:number of records] (a --limit run
    writes the examples it prompted). The teacher file is committed last.
    Returns `output_paths`.
    """
    paths = output_paths(name, out, split)
    blocks = _CotBlocks(paths["llm"], split) if name != "jsonl" else None
    written = 0
    with AtomicWriter(paths["teacher"]) as teacher:
        for record in records:
            teacher.write(json.dumps(record, ensure_ascii=False) + "\n")
            if blocks is not None:
                blocks.add(record["teacher_raw"][0] if record["teacher_raw"] else "")
            written += 1
        if blocks is not None:
            blocks.finish()
        with AtomicWriter(paths["split"]) as split_file:
            for raw in raw_records[:written]:
                split_file.write(json.dumps(raw, ensure_ascii=False) + "\n")
    return paths

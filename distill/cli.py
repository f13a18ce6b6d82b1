"""The `distill` console command: a table of subcommands, each a module's `main`.

Subcommand modules are imported only when chosen, so `distill teacher` never
imports TensorFlow and `distill --help` is instant. Every `main` takes the
remaining argv and returns an exit code. `run_main` is the error boundary of
the command and of the `python -m` entry points: a `UserError`, or a known
failure of the environment (a file that cannot be read or written, a full
disk), becomes one `error: ...` line on stderr and exit code 2 (with
DISTILL_DEBUG=1 the traceback too); anything else is a bug and keeps its
traceback, with exit code 1.

A process that runs a command of `XLA_COMMANDS` first restarts itself once
with malloc on huge pages (distill/heap.py: a third of a CPU train step went
to page faults); `main` called from Python (tests, notebooks) never restarts.
"""
import importlib
import os
import sys
import traceback
from collections.abc import Callable

from distill.errors import UserError

# (subcommand words) -> ("module:function", one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("data", "stats"): ("distill.data.stats:main", "per-split counts, teacher coverage, parse failures, teacher accuracy"),
    ("data", "build"): ("distill.data.tfds_builder:main", "prepare a dataset's splits as TFDS datasets"),
    ("data", "download"): ("distill.data.download:main", "fetch and unpack the paper's released datasets"),
    ("vocab", "train"): ("distill.vocab:main", "train a SentencePiece vocabulary from a dataset"),
    ("teacher",): ("distill.teacher.cli:main", "prompt a teacher LLM for rationales and labels (cached, resumable)"),
    ("train",): ("distill.train:main", "train a student (T5X-style gin flags)"),
    ("eval",): ("distill.eval:main", "evaluate a checkpoint on the label task"),
    ("infer",): ("distill.infer:main", "decode a task's split with a checkpoint (gin)"),
    ("predict",): ("distill.predict:main", "predict labels/rationales for text or a JSONL file"),
    ("serve",): ("distill.serve.cli:main", "serve a student behind an OpenAI-compatible API (dynamic batching)"),
    ("export",): ("distill.models.export:main", "export a checkpoint as a Hugging Face T5 directory"),
    ("quickstart",): ("distill.quickstart:main", "the whole pipeline on SVAMP with a tiny T5 on CPU"),
    ("sweep",): ("distill.sweep:main", "run a grid of experiments and collect results.csv"),
    ("report",): ("distill.report:main", "tables and plots from results.csv"),
}

# Commands whose processes run XLA executions, each allocating its buffers afresh (distill/heap.py).
XLA_COMMANDS = {("train",), ("eval",), ("infer",), ("predict",), ("serve",), ("quickstart",), ("sweep",)}


def _usage() -> str:
    lines = ["usage: distill <command> [args...]", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {help_text}")
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """The longest command prefix of argv and the arguments after it."""
    for length in (2, 1):
        words = tuple(argv[:length])
        if words in COMMANDS:
            return words, argv[length:]
    return None


def main(argv: list[str] | None = None, *, process_entry: bool | None = None) -> int:
    """Runs `distill <argv>`; process_entry (default: argv is None, the console command) allows the restart."""
    process_entry = argv is None if process_entry is None else process_entry
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    resolved = _resolve(argv)
    if resolved is None:
        print(f"error: unknown command {' '.join(argv[:2])!r}; run `distill --help` for the list", file=sys.stderr)
        return 2
    words, rest = resolved
    if process_entry and words in XLA_COMMANDS:
        from distill.heap import restart_with_huge_pages

        restart_with_huge_pages()
    target = COMMANDS[words][0]
    module_name, function_name = target.split(":")
    return run_main(lambda: getattr(importlib.import_module(module_name), function_name)(rest))


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror}{where}: check the path, its permissions and the free disk space"
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def run_main(entry: Callable[[], int | None]) -> int:
    """Runs a command's main; known failures become one `error:` line and exit code 2."""
    try:
        return int(entry() or 0)
    except (UserError, OSError) as err:
        if os.environ.get("DISTILL_DEBUG") == "1":
            traceback.print_exc()
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

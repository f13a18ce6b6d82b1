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

Every file is written through the package's atomic-write helper
(distill/atomic.py), so a crash never leaves a half-written output, and lines
through its one JSON-lines writer (distill/jsonl.py); stale higher-numbered
CoT blocks from an earlier, longer run are removed.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

from distill.atomic import AtomicFile, write_atomically
from distill.data.readers import dataset_dir, split_path
from distill.data.teacher_outputs import teacher_jsonl_path
from distill.jsonl import jsonl_line

COT_BLOCK_SIZE = 1000


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
        write_atomically(os.path.join(self.folder, f"{self.split}_CoT_{self.count}.json"),
                         json.dumps(self._block, ensure_ascii=False))
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
    with AtomicFile(paths["teacher"]) as teacher:
        for record in records:
            teacher.write(jsonl_line(record))
            if blocks is not None:
                blocks.add(record["teacher_raw"][0] if record["teacher_raw"] else "")
            written += 1
        if blocks is not None:
            blocks.finish()
        with AtomicFile(paths["split"]) as split_file:
            for raw in raw_records[:written]:
                split_file.write(jsonl_line(raw))
    return paths

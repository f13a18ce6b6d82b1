"""Helpers for the vocab / tasks / feature-converter / TFDS tests.

A tiny generic-JSONL dataset with inline teacher outputs (one of them a
parse failure), a vocabulary trained on it in a second, a clean seqio
registry per test, and readers that turn tf.data into plain Python.
"""
import contextlib
import json
import pathlib

import numpy as np

# Ten training questions; q3 has no teacher output (a parse failure), q7 no gold label.
TRAIN = [
    {"id": f"q{i}", "input": f"What is {i} plus {i + 1}?", "label": f"sum {2 * i + 1}",
     "rationale": f"{i} and {i + 1} together make {2 * i + 1}.", "teacher_label": f"sum {2 * i + 1}"}
    for i in range(10)
]
TRAIN[3] = {"id": "q3", "input": "What is 3 plus 4?", "label": "sum 7"}
TRAIN[5] = {**TRAIN[5], "teacher_label": "sum 12"}  # the teacher is wrong here
TRAIN[7] = {**TRAIN[7], "label": None}
VALID = [{"id": "v0", "input": "What is 20 plus 21?", "label": "sum 41",
          "rationale": "20 and 21 together make 41.", "teacher_label": "sum 41"}]
TEST = [{"id": f"t{i}", "input": f"What is {i} plus {i}?", "label": f"sum {2 * i}",
         "rationale": f"{i} twice is {2 * i}.", "teacher_label": f"sum {2 * i}"} for i in range(3)]


def write_jsonl_dataset(folder: pathlib.Path) -> pathlib.Path:
    """The tiny dataset as `train.jsonl`, `valid.jsonl`, `test.jsonl` in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for record in records:
                f.write(json.dumps({k: v for k, v in record.items() if v is not None}) + "\n")
    return folder


def train_tiny_vocab(path: pathlib.Path) -> str:
    """A vocabulary covering the tiny dataset and the task prefixes (about a second)."""
    from distill.vocab import TASK_PREFIX_SYMBOLS, train_vocabulary

    texts = [r[k] for r in TRAIN + VALID + TEST for k in ("input", "label", "rationale") if r.get(k)]
    return train_vocabulary(texts, size=120, out_path=str(path), user_defined_symbols=TASK_PREFIX_SYMBOLS)


@contextlib.contextmanager
def isolated_registry(*, empty: bool = True):
    """seqio's task and mixture registries as they were before, once the block ends.

    With empty=True the block starts from empty registries (seqio's
    `test_utils.clear_tasks`/`clear_mixtures`); with empty=False it sees what
    is registered and only its own additions and replacements are undone.
    """
    import seqio
    from seqio import test_utils

    saved = dict(seqio.TaskRegistry._REGISTRY), dict(seqio.MixtureRegistry._REGISTRY)
    if empty:
        test_utils.clear_tasks()
        test_utils.clear_mixtures()
    try:
        yield
    finally:
        test_utils.clear_tasks()
        test_utils.clear_mixtures()
        seqio.TaskRegistry._REGISTRY.update(saved[0])
        seqio.MixtureRegistry._REGISTRY.update(saved[1])


def as_python(value):
    """bytes -> str, numpy arrays -> lists, numpy scalars -> Python scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_all(ds) -> list[dict]:
    """Every example of a tf.data dataset as a dict of plain Python values."""
    return [{k: as_python(v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]

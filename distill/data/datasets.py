"""The data layer's front door: dataset specs and `load_examples`.

    >>> examples = load_examples("svamp", "train", "/data")   # 720 of 800
    >>> examples[0]
    {"id": "svamp-train-0", "input": "Luke scored 84 points ...",
     "label": "( 84.0 / 2.0 )", "rationale": "Luke scored 84 points after 2 rounds. ...",
     "teacher_label": "(84 / 2)", "teacher_raw": "... The answer is (84 / 2).\\n\\nQ: ...",
     "parse_ok": True}

Splits ("train", "valid", "test"):
- "valid" is the dataset's own valid file when present; otherwise 10% of
  the train file (the reference code's seed-0 split, see
  `distill.data.splits`), and "train" is then the other 90%.
- `train_fraction` keeps a deterministic, nested subset of train (the 12.5%
  subset is inside the 25% one); `seed` picks which subset.
- Examples keep their file order. A derived valid split takes its teacher
  outputs from the train files at the same positions.

Teacher outputs are joined only when with_teacher and the split has them
(see `distill.data.teacher_outputs` for the two file formats and which
wins); the generic "jsonl" dataset may also carry them inline.

Reading never writes: nothing under the data dir is created or changed.
"""
import os

from distill.data import splits
from distill.data.readers import SPLITS, dataset_dir, read_split, split_path
from distill.data.specs import DATASET_NAMES, DatasetSpec, get_spec
from distill.data.teacher_outputs import inline_teacher_outputs, load_teacher_outputs
from distill.errors import UserError

__all__ = ["DATASET_NAMES", "DatasetSpec", "SPLITS", "available_datasets", "get_spec",
           "load_examples", "resolve_data_dir", "valid_source"]

DATA_DIR_ENV = "DISTILL_DATA_DIR"


def _check_data_dir(data_dir: str) -> str:
    if not os.path.isdir(data_dir):
        raise UserError(f"data dir {data_dir} does not exist; pass --data-dir DIR or set {DATA_DIR_ENV} "
                        "to the folder holding the datasets (<dataset>/<dataset>_train.json)")
    return data_dir


def resolve_data_dir(data_dir: str | None, *, dataset: str | None = None) -> str:
    """data_dir, else $DISTILL_DATA_DIR, checked once here for every entry point.

    UserError when neither names an existing folder, or (with `dataset`) when
    the dataset is unknown or its train/test files are missing there.
    """
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise UserError(f"no data dir given; pass --data-dir DIR or set {DATA_DIR_ENV}")
    _check_data_dir(chosen)
    if dataset is not None:
        get_spec(dataset)
        missing = [path for path in (split_path(dataset, chosen, split) for split in ("train", "test"))
                   if not os.path.isfile(path)]
        if missing:
            raise UserError(f"no {dataset} data in {chosen} (missing {missing[0]}); set --data-dir / "
                            f"--gin.DATA_DIR or ${DATA_DIR_ENV} to the folder holding it, or run "
                            "`distill data download`")
    return chosen


def available_datasets(data_dir: str) -> list[str]:
    """Named datasets whose train and test files exist under data_dir ([] if it is missing)."""
    if not data_dir or not os.path.isdir(data_dir):
        return []
    return [name for name in DATASET_NAMES
            if all(os.path.isfile(split_path(name, data_dir, split)) for split in ("train", "test"))]


def valid_source(name: str, data_dir: str) -> str:
    """"file" when the dataset has its own valid split file, else "train" (10% carved out)."""
    return "file" if os.path.isfile(split_path(name, data_dir, "valid")) else "train"


def _check_split_file(name: str, data_dir: str, split: str) -> str:
    path = split_path(name, data_dir, split)
    if os.path.isfile(path):
        return path
    folder = dataset_dir(name, data_dir)
    if not os.path.isdir(folder):
        found = ", ".join(available_datasets(data_dir)) or "none"
        raise UserError(f"dataset folder {folder} not found (datasets found under {data_dir}: {found}); "
                        "pass the data dir that holds it or run `distill data download`")
    layout = f"{split}.jsonl" if name == "jsonl" else f"{name}/{name}_{split}.json"
    raise UserError(f"split file {path} not found; the {split} split must be at <data dir>/{layout}")


def _read_file_split(name: str, data_dir: str, split: str, with_teacher: bool) -> list[dict]:
    """All examples of one split file, teacher outputs joined when present."""
    path = _check_split_file(name, data_dir, split)
    examples, raw = read_split(name, data_dir, split)
    if not with_teacher:
        return examples
    outputs = load_teacher_outputs(name, data_dir, split, [e["id"] for e in examples], path)
    if outputs is None and name == "jsonl":
        outputs = inline_teacher_outputs(name, raw)
    if outputs is not None:
        for example, output in zip(examples, outputs):
            example.update(output)
    return examples


def load_examples(name: str, split: str, data_dir: str, *, train_fraction: float = 1.0,
                  with_teacher: bool = True, seed: int = 0) -> list[dict]:
    """Normalized examples of one split, in file order.

    Returns [{"id": str, "input": str, "label": str}] plus, when with_teacher
    and the split has teacher outputs, {"rationale": str|None,
    "teacher_label": str|None, "teacher_raw": str|None, "parse_ok": bool}.
    For name == "jsonl", data_dir is the folder holding train/test(/valid).jsonl.
    train_fraction and seed pick train's subset only (valid and test ignore
    them; a derived valid split always uses seed 0).
    UserError for an unknown dataset or split, a missing data dir or file,
    a malformed line, a bad train_fraction, or teacher/split misalignment.
    """
    get_spec(name)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    fraction = splits.check_fraction(train_fraction)
    if not data_dir:
        raise UserError(f"no data dir given; pass --data-dir DIR or set {DATA_DIR_ENV}")
    _check_data_dir(data_dir)
    if split == "test" or (split == "valid" and valid_source(name, data_dir) == "file"):
        return _read_file_split(name, data_dir, split, with_teacher)
    train_file = _read_file_split(name, data_dir, "train", with_teacher)
    if valid_source(name, data_dir) == "file":
        positions = list(range(len(train_file)))
    else:
        positions, valid_positions = splits.derived_valid_split(len(train_file))
        if split == "valid":
            return [train_file[i] for i in valid_positions]
    return [train_file[i] for i in splits.fraction_subset(positions, fraction, seed)]

"""Prepare a dataset's splits as a TFDS dataset (`distill data build`).

Why: on a multi-host pod every host must read the same examples without the
raw files and teacher completions on its local disk, and each host should read
only its share of the files. A prepared TFDS dataset (on a local disk or a
`gs://` bucket every host reads) gives both: `distill.tasks` reads it through
`seqio.TfdsDataSource`, which hands each host a `seqio.ShardInfo` and so a
disjoint set of TFRecord files (or, when there are fewer files than hosts,
every host reads all files and keeps every n-th example).

Layout: `<out>/distill_<name>/<TFDS_VERSION>/` with splits `train`,
`validation`, `test` (seqio's names; `validation` is distill's `valid`, i.e.
the dataset's own valid file or 10% of train). Each record is the normalized
example joined with its parsed teacher output, strings never None:

    {"id": "17", "input": "Luke scored 84 points ...", "label": "( 84.0 / 2.0 )",
     "rationale": "He scored 84 points in 2 rounds ...", "teacher_label": "( 84.0 / 2.0 )",
     "parse_ok": True}

A missing teacher output or a parse failure is `parse_ok=False` with empty
`rationale`/`teacher_label`. The full train split is stored; a training-data
fraction is applied when the tasks read it, so one build serves every fraction.
The build never writes into the data dir and never replaces an existing
prepared dataset (TFDS writes into a temporary folder and renames it).
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Iterable, Mapping

from distill.errors import UserError

TFDS_VERSION = "1.0.0"
# seqio / TFDS split name -> distill.data split name.
SPLITS: Mapping[str, str] = {"train": "train", "validation": "valid", "test": "test"}
TEXT_FIELDS = ("id", "input", "label", "rationale", "teacher_label")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def tfds_name(name: str) -> str:
    """The TFDS dataset name for a distill dataset name (`svamp` -> `distill_svamp`)."""
    return f"distill_{name}"


def builder_dir(tfds_dir: str, name: str) -> str:
    """Where `distill data build --out tfds_dir` puts dataset `name` (a version folder)."""
    return f"{tfds_dir.rstrip('/')}/{tfds_name(name)}/{TFDS_VERSION}"


def to_record(example: Mapping) -> dict:
    """A normalized example as a flat record with fixed fields (the TFDS features).

    `{"id": "3", "input": "Q", "label": "a", "rationale": None, "parse_ok": False}`
    -> `{"id": "3", "input": "Q", "label": "a", "rationale": "", "teacher_label": "", "parse_ok": False}`
    (an example without teacher output has no teacher keys at all: same record).
    """
    record = {field: str(example.get(field) or "") for field in TEXT_FIELDS}
    record["parse_ok"] = bool(example.get("parse_ok", False))
    return record


def _features():
    import numpy as np
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {**{field: tfds.features.Text() for field in TEXT_FIELDS}, "parse_ok": tfds.features.Scalar(dtype=np.bool_)}
    )


@functools.cache
def _builder_class():
    """TFDS's adhoc builder without a code path (no checksums file to look up).

    Finding the code path of a builder needs the `importlib_resources`
    package, which tfds imports lazily and which is not always installed;
    a builder whose examples come from memory has no checksums anyway.
    """
    import tensorflow_datasets as tfds

    class DistillBuilder(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
        code_path = None

    return DistillBuilder


def _is_within(path: str, folder: str) -> bool:
    if "://" in path or "://" in folder:
        return path.rstrip("/").startswith(folder.rstrip("/") + "/") or path.rstrip("/") == folder.rstrip("/")
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _keyed(records: Iterable[dict]) -> list[tuple[str, dict]]:
    return [(f"{index:09d}", record) for index, record in enumerate(records)]


def build(dataset: str, data_dir: str, out_dir: str, *, name: str | None = None,
          num_shards: int | None = None) -> str:
    """Prepare `dataset` from `data_dir` as TFDS dataset `distill_<name>` under `out_dir`.

    `name` defaults to `dataset` (give one for a `jsonl` dataset, e.g. the
    task prefix you register it under). `num_shards` files per split (default:
    TFDS's choice by size, often one); give at least the number of hosts so
    each host reads only its own files. Returns the prepared version folder.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from distill.data import datasets

    name = name or dataset
    if num_shards is not None and num_shards < 1:
        raise UserError(f"--num-shards {num_shards} must be at least 1")
    if not _NAME_RE.match(name):
        raise UserError(f"dataset name {name!r} must be lowercase letters, digits and '_' (pass --name)")
    if not data_dir or not os.path.isdir(data_dir):
        raise UserError(f"data dir {data_dir!r} does not exist; pass --data-dir DIR or set DISTILL_DATA_DIR")
    if _is_within(out_dir, data_dir):
        raise UserError(f"--out {out_dir!r} is inside the data dir {data_dir!r}; choose a folder outside it")
    target = builder_dir(out_dir, name)
    if tf.io.gfile.exists(f"{target}/dataset_info.json"):
        raise UserError(f"{target} is already prepared; delete that folder to rebuild it, or choose another --out")
    split_records = {
        tfds_split: _keyed(to_record(ex) for ex in datasets.load_examples(dataset, split, data_dir))
        for tfds_split, split in SPLITS.items()
    }
    for tfds_split, records in split_records.items():
        if not records:
            raise UserError(f"dataset {dataset!r} in {data_dir!r} has no {SPLITS[tfds_split]} examples; nothing to build")
    builder = _builder_class()(
        name=tfds_name(name),
        version=TFDS_VERSION,
        features=_features(),
        split_datasets=split_records,
        data_dir=out_dir,
        description=f"distill dataset {dataset!r} from {data_dir}: normalized examples joined with parsed teacher outputs.",
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=num_shards))
    return str(builder.data_dir)


def main(argv: list[str] | None = None) -> int:
    """`distill data build --dataset NAME [--data-dir DIR] [--out TFDS_DIR] [--name NAME] [--num-shards N]`."""
    parser = argparse.ArgumentParser(prog="distill data build", description=build.__doc__)
    parser.add_argument("--dataset", required=True, help="svamp, cqa, esnli, anli1 or jsonl")
    parser.add_argument("--data-dir", default=os.environ.get("DISTILL_DATA_DIR"),
                        help="dataset root (default: $DISTILL_DATA_DIR); for jsonl the folder of *.jsonl")
    parser.add_argument("--out", default=os.environ.get("DISTILL_TFDS_DIR") or os.path.expanduser("~/tensorflow_datasets"),
                        help="TFDS data dir, local or gs:// (default: $DISTILL_TFDS_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--name", default=None, help="TFDS name suffix (default: the dataset name)")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="files per split (default: by size); at least the number of hosts that read it")
    args = parser.parse_args(argv)
    if not args.data_dir:
        raise UserError("no data dir: pass --data-dir DIR or set DISTILL_DATA_DIR")
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(False)
    prepared = build(args.dataset, args.data_dir, args.out, name=args.name, num_shards=args.num_shards)
    print(f"prepared {prepared} (splits: {', '.join(SPLITS)})")
    return 0


if __name__ == "__main__":
    from distill import cli

    sys.exit(cli.main(["data", "build", *sys.argv[1:]]))

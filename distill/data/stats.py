"""`distill data stats`: per-split counts, teacher coverage, parse failures, teacher accuracy.

    distill data stats --dataset svamp [--data-dir DIR] [--json]

Splits are the ones `load_examples` serves (a derived valid split is 10% of
the train file, and train is then the other 90%), so the rows add up to the
files on disk. teacher_accuracy scores the teacher's parsed label against
gold with the dataset's metric (svamp: equation values) over every example
that has a teacher output, parse failures counting as wrong; it is null
without teacher outputs, or when some example has no gold label (JSONL).

--json prints one object:
    {"train": {"examples": 720, "teacher_outputs": 720, "parse_failures": 32,
               "teacher_accuracy": 0.6083}, "valid": {...}, "test": {...}}
"""
import argparse
import json
import os
import sys

from distill.data.datasets import SPLITS, load_examples, resolve_data_dir, valid_source
from distill.data.readers import split_path
from distill.data.specs import get_spec
from distill.metrics import metric_fn_for


def split_stats(dataset: str, examples: list[dict]) -> dict:
    """{"examples", "teacher_outputs", "parse_failures", "teacher_accuracy"} of one split."""
    with_teacher = [e for e in examples if "parse_ok" in e]
    has_gold = with_teacher and all(e["label"] != "" for e in with_teacher)
    accuracy = None
    if has_gold:
        golds = [e["label"] for e in with_teacher]
        teacher = [e["teacher_label"] or "" for e in with_teacher]
        accuracy = metric_fn_for(dataset)(golds, teacher)["accuracy"]
    return {"examples": len(examples), "teacher_outputs": len(with_teacher),
            "parse_failures": sum(not e["parse_ok"] for e in with_teacher),
            "teacher_accuracy": accuracy}


def dataset_stats(dataset: str, data_dir: str) -> dict[str, dict]:
    """split -> split_stats for every split the dataset has on disk (test/valid may be absent)."""
    stats = {}
    for split in SPLITS:
        file_split = "train" if split == "valid" and valid_source(dataset, data_dir) == "train" else split
        if split != "train" and not os.path.isfile(split_path(dataset, data_dir, file_split)):
            continue
        stats[split] = split_stats(dataset, load_examples(dataset, split, data_dir))
    return stats


def format_table(dataset: str, data_dir: str, stats: dict[str, dict]) -> str:
    """The human-readable form, with the parse failure rate per split."""
    lines = [f"{dataset} ({get_spec(dataset).task_type}) in {data_dir}",
             f"{'split':<6} {'examples':>8} {'teacher_outputs':>15} {'parse_failures':>14} "
             f"{'failure_rate':>12} {'teacher_accuracy':>16}"]
    for split, row in stats.items():
        outputs = row["teacher_outputs"]
        rate = f"{100 * row['parse_failures'] / outputs:.2f}%" if outputs else "-"
        accuracy = "-" if row["teacher_accuracy"] is None else f"{row['teacher_accuracy']:.4f}"
        lines.append(f"{split:<6} {row['examples']:>8} {outputs:>15} {row['parse_failures']:>14} "
                     f"{rate:>12} {accuracy:>16}")
    total_outputs = sum(row["teacher_outputs"] for row in stats.values())
    total_failures = sum(row["parse_failures"] for row in stats.values())
    if total_outputs:
        lines.append(f"all teacher outputs: {total_outputs}, parsed {total_outputs - total_failures}, "
                     f"parse failures {total_failures} ({100 * total_failures / total_outputs:.2f}%)")
    if "valid" in stats and valid_source(dataset, data_dir) == "train":
        lines.append("valid = 10% of the train file (seed 0, as in the reference code); train = the other 90%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill data stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="svamp, cqa, esnli, anli1 or jsonl")
    parser.add_argument("--data-dir", default=None,
                        help="root of the reference layout (for jsonl: the folder of train/test.jsonl); "
                             "default $DISTILL_DATA_DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object {split: {...}}")
    args = parser.parse_args(argv)
    get_spec(args.dataset)
    data_dir = resolve_data_dir(args.data_dir, dataset=args.dataset)
    stats = dataset_stats(args.dataset, data_dir)
    print(json.dumps(stats) if args.json else format_table(args.dataset, data_dir, stats))
    return 0


if __name__ == "__main__":
    from distill import cli

    sys.exit(cli.main(["data", "stats", *sys.argv[1:]]))

"""The model-dir layout, in one place: its file names, run.json, metrics.json, and loading.

`distill train` writes a model dir; eval, infer, predict, export, serve and
sweep read it. Every one of them goes through this module, so the layout
has one owner:

    <model_dir>/run.json                 what the run was trained with (dataset, tasks, task
                                         prefixes, lengths, vocabulary, T5Config): `read_run`/`write_run`
    <model_dir>/metrics.json             evaluations per step (distill/evaluation.py's content):
                                         `read_metrics`/`write_metrics`
    <model_dir>/checkpoints/<step>/      orbax checkpoints (distill/checkpointing.py)
    <model_dir>/best/<step>/             a copy of the validation-selected step's checkpoint
    <model_dir>/predictions/             decoded splits, predictions/<split>_step<N>.jsonl
    <model_dir>/events/                  TensorBoard
    <model_dir>/feed/<key>/              training batches and eval examples written once by a
                                         child process (distill/train_feed.py); a cache, deletable
    <model_dir>/config.gin, vocab/spm.model

`load_trained(path)` turns anything a user may pass as a checkpoint (a
Hugging Face T5 folder, a model dir, its checkpoints/ folder, one
checkpoints/<step> folder) into config, params and tokenizer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import TYPE_CHECKING, Any

from distill.atomic import write_atomically
from distill.errors import UserError
from distill.jsonl import parse_json
from distill.task_prefixes import TASK_PREFIXES, environment_prefixes, recorded_prefixes, task_prefixes_from_hf

if TYPE_CHECKING:
    import sentencepiece as spm

    from distill.models.t5 import T5Config

RUN_FILE = "run.json"
TASK_PREFIXES_KEY = "task_prefixes"  # run.json: {"label": ..., "rationale": ...} (distill/task_prefixes.py)
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.gin"
VOCAB_FILE = os.path.join("vocab", "spm.model")
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"  # best/<step>: the validation-selected checkpoint, outside retention
PREDICTIONS_DIR = "predictions"
EVENTS_DIR = "events"
FEED_DIR = "feed"  # feed/<key>/: the training batches written once (distill/train_feed.py), a cache
HF_CONFIG_FILE = "config.json"
HF_TOKENIZER_FILE = "spiece.model"


def _read_json_object(path: str, what: str, fix: str) -> dict[str, Any]:
    """A JSON object file ({} when absent); UserError naming it when unreadable."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is unreadable ({err}); {fix}") from None
    try:
        data = parse_json(text, path)
    except UserError as err:
        raise UserError(f"{err}; {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object ({what}); {fix}")
    return data


def read_run(model_dir: str) -> dict[str, Any]:
    """run.json of a model dir ({} when there is none)."""
    return _read_json_object(os.path.join(model_dir, RUN_FILE), "a run description",
                             f"it describes the run in {model_dir}: restore it or use a new MODEL_DIR")


def write_run(model_dir: str, info: dict[str, Any]) -> None:
    write_atomically(os.path.join(model_dir, RUN_FILE), json.dumps(info, indent=2) + "\n")


def read_metrics(model_dir: str) -> dict[str, Any]:
    """metrics.json of a model dir ({} when there is none)."""
    return _read_json_object(os.path.join(model_dir, METRICS_FILE), "metrics",
                             "move it away to start a new one")


def write_metrics(model_dir: str, data: dict[str, Any]) -> None:
    write_atomically(os.path.join(model_dir, METRICS_FILE), json.dumps(data, indent=2) + "\n")


def predictions_path(model_dir: str, name: str) -> str:
    """<model_dir>/predictions/<name> (e.g. "test_step60.jsonl")."""
    return os.path.join(model_dir, PREDICTIONS_DIR, name)


def is_hf_dir(path: str) -> bool:
    """A Hugging Face T5 folder: it holds config.json."""
    return os.path.isfile(os.path.join(path, HF_CONFIG_FILE))


def find_model_dir(path: str) -> str | None:
    """The model dir holding `path` (itself, or a parent with run.json), or None."""
    current = os.path.abspath(path)
    while True:
        if os.path.isfile(os.path.join(current, RUN_FILE)):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def resolve_checkpoint(path: str) -> tuple[str, int, str]:
    """(model dir, step, step folder) for a model dir (its latest step), its checkpoints/ folder, or a
    <step> folder (checkpoints/<step>, best/<step>).

    UserError when the path does not exist, is not inside a model dir, or
    holds no finished checkpoint.
    """
    from distill import checkpointing

    absolute = os.path.abspath(path.rstrip("/") or "/")
    if not os.path.exists(absolute):
        raise UserError(f"checkpoint {path} does not exist: pass a Hugging Face T5 folder, a model dir or "
                        "<model_dir>/checkpoints/<step>")
    model_dir = find_model_dir(absolute)
    not_a_run = (f"is neither a Hugging Face T5 folder ({HF_CONFIG_FILE}) nor inside a model dir written by "
                 f"`distill train` ({RUN_FILE})")
    if checkpointing.is_complete_step_dir(pathlib.Path(absolute)):
        if model_dir is None:
            raise UserError(f"{path} {not_a_run}")
        return model_dir, int(os.path.basename(absolute)), absolute
    steps = checkpointing.finished_steps(os.path.join(model_dir or absolute, CHECKPOINTS_DIR))
    if not steps:
        raise UserError(f"{path} holds no finished checkpoint (expected {CHECKPOINTS_DIR}/<step> inside)"
                        + ("" if model_dir else f" and {not_a_run}"))
    if model_dir is None:
        raise UserError(f"{path} {not_a_run}")
    return model_dir, steps[-1], os.path.join(model_dir, CHECKPOINTS_DIR, str(steps[-1]))


def vocabulary_file(model_dir: str, run_info: dict[str, Any]) -> str | None:
    """The run's SentencePiece file: the one run.json names, else <model_dir>/vocab/spm.model."""
    candidates = [run_info["vocabulary_path"]] if run_info.get("vocabulary_path") else []
    candidates.append(os.path.join(model_dir, VOCAB_FILE))
    return next((c for c in candidates if os.path.isfile(c)), None)


def run_model_config(model_dir: str, run_info: dict[str, Any]) -> "T5Config":
    """The T5Config run.json records, checked for size before anything is traced."""
    from distill.models.t5 import T5Config

    fields = run_info.get("model_config")
    if not isinstance(fields, dict):
        raise UserError(f"{os.path.join(model_dir, RUN_FILE)} has no model_config; was it written by `distill train`?")
    try:
        return T5Config(**fields)
    except TypeError as err:
        raise UserError(f"{os.path.join(model_dir, RUN_FILE)}: model_config is not a T5Config ({err})") from None


@dataclasses.dataclass(frozen=True)
class Trained:
    """A model ready to decode or export.

    model_dir/step are None for a Hugging Face folder; run_info is {} there.
    tokenizer_path is the SentencePiece file (None when the run has none).
    task_prefixes: what the model learned to see before each task's inputs
    (distill/task_prefixes.py), from run.json or an export's config.json (a T5X
    run's: $DISTILL_LABEL_PREFIX / $DISTILL_RATIONALE_PREFIX, as it registered its tasks).
    """

    config: "T5Config"
    params: Any
    tokenizer_path: str | None
    model_dir: str | None = None
    step: int | None = None
    run_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = ""
    task_prefixes: dict[str, str] = dataclasses.field(default_factory=lambda: dict(TASK_PREFIXES))

    def tokenizer(self) -> "spm.SentencePieceProcessor":
        """The SentencePiece processor, checked against the model's embedding rows."""
        from distill.vocab import check_fits, load_tokenizer

        if self.tokenizer_path is None:
            raise UserError(f"no vocabulary for {self.source}: run.json names none and there is no {VOCAB_FILE}; "
                            f"copy the run's SentencePiece model to <model_dir>/{VOCAB_FILE}")
        tokenizer = load_tokenizer(self.tokenizer_path)
        check_fits(tokenizer.get_piece_size(), self.config.vocab_size, self.tokenizer_path, self.source)
        return tokenizer


def load_trained(path: str, *, param_dtype: str | None = None, require_tokenizer: bool = False) -> Trained:
    """Config, params (one-device layout, no optimizer state) and tokenizer file of any checkpoint path.

    `path`: a Hugging Face T5 folder (config.json, weights, spiece.model),
    a model dir (its latest finished step), its checkpoints/ folder, or one
    checkpoints/<step> folder. param_dtype: HF folders only (default float32).
    require_tokenizer: refuse a checkpoint without a SentencePiece file
    before any weights are read (whoever decodes text needs one).
    """
    from distill.models import t5x_checkpoints

    if t5x_checkpoints.is_t5x_checkpoint(path):  # upstream t5x.train's MODEL_DIR or MODEL_DIR/checkpoint_<N>
        model_dir, step = t5x_checkpoints.resolve_t5x_checkpoint(path)
        tokenizer = t5x_checkpoints.t5x_vocabulary_file(model_dir)
        if require_tokenizer and tokenizer is None:
            raise UserError(f"no local SentencePiece file for the T5X checkpoint {path}: its config.gin names none; "
                            "set DISTILL_VOCABULARY to the run's vocabulary file")
        config, params = t5x_checkpoints.load_t5x_checkpoint(path)
        return Trained(config=config, params=params, tokenizer_path=tokenizer, model_dir=model_dir, step=step,
                       source=path, task_prefixes=environment_prefixes(os.environ))
    if os.path.isdir(path) and is_hf_dir(path):
        from distill.models.hf_checkpoints import load_hf_checkpoint, read_hf_config

        tokenizer = os.path.join(path, HF_TOKENIZER_FILE)
        if require_tokenizer and not os.path.isfile(tokenizer):
            raise UserError(f"no SentencePiece tokenizer in {path}: expected {tokenizer} "
                            "(copy the model's spiece.model there)")
        prefixes = task_prefixes_from_hf(read_hf_config(path), os.path.join(path, HF_CONFIG_FILE))
        config, params = load_hf_checkpoint(path, param_dtype=param_dtype)
        return Trained(config=config, params=params, tokenizer_path=tokenizer if os.path.isfile(tokenizer) else None,
                       source=path, task_prefixes=prefixes)
    from flax import linen as nn

    from distill import checkpointing
    from distill.models.t5 import abstract_params
    from distill.partitioning import Partitioner

    model_dir, step, step_dir = resolve_checkpoint(path)
    run_info = read_run(model_dir)
    config = run_model_config(model_dir, run_info)
    trained = Trained(config=config, params=None, tokenizer_path=vocabulary_file(model_dir, run_info),
                      model_dir=model_dir, step=step, run_info=run_info, source=path,
                      task_prefixes=recorded_prefixes(run_info.get(TASK_PREFIXES_KEY),
                                                      os.path.join(model_dir, RUN_FILE)))
    if require_tokenizer:
        trained.tokenizer()
    boxed = abstract_params(config)
    params = checkpointing.restore_params(step_dir, nn.unbox(boxed)["params"],
                                          Partitioner().shardings_for(boxed)["params"])
    return dataclasses.replace(trained, params=params)

"""Train a step-by-step student: the T5X-style entry point and the library function.

    python -m distill.train \\
      --gin_file=gin_configs/experiments/svamp/step_by_step_gt_tiny.gin \\
      --gin.MODEL_DIR="'runs/svamp_tiny'" --gin.TRAIN_STEPS=60

`train(*, ...)` reads top to bottom: check every input (one clear UserError
before anything is compiled), vocabulary, tasks, model and state (fresh,
imported, or resumed from MODEL_DIR's latest checkpoint with the data
position saved in it), then the loop that logs, evaluates, checkpoints and
stops cleanly on SIGTERM. Relaunching the same command resumes; a run killed
with -9 and relaunched ends with the same parameters as an uninterrupted one
(same data order, same dropout keys, same optimizer state).

The model dir's layout (checkpoints/<step>, events/, predictions/,
metrics.json, run.json, config.gin, vocab/) is owned by distill/run_dir.py.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from distill import run_dir
from distill.errors import UserError
from distill.task_prefixes import TASK_PREFIXES, checked_prefixes, recorded_prefixes

if TYPE_CHECKING:
    import optax

    from distill.models.t5 import T5Config
    from distill.partitioning import Partitioner
    from distill.trainer import Trainer
# T5Config fields that decide parameter shapes (a checkpoint must agree on them).
SHAPE_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_encoder_layers",
                "num_decoder_layers", "relative_attention_num_buckets", "feed_forward_proj",
                "tie_word_embeddings")


def train(
    *,
    model_dir: str,
    dataset: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int,
    model_config: "T5Config",
    optimizer: "optax.GradientTransformation",
    partitioner: "Partitioner | None" = None,
    learning_rate_fn: Callable[[int], float] | None = None,
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    num_microbatches: int = 1,
    train_fraction: float = 1.0,
    label_prefix: str = TASK_PREFIXES["label"],
    rationale_prefix: str = TASK_PREFIXES["rationale"],
    data_dir: str | None = None,
    tfds_dir: str | None = None,
    vocabulary_path: str | None = None,
    vocabulary_size: int | None = None,
    initial_checkpoint_path: str | None = None,
    seed: int = 0,
    pack: bool = True,
    trim_padding: bool = False,
    pack_batch: bool = False,
    feed: str = "process",
    eval_period: int = 0,
    eval_splits: Sequence[str] = ("validation", "test"),
    eval_batch_size: int = 64,
    max_decode_length: int = 64,
    decode_method: str = "greedy",
    num_beams: int = 4,
    num_rationale_examples: int = 4,
    eval_max_examples: int | None = None,
    checkpoint_period: int = 0,
    keep_checkpoints: int = 3,
    async_checkpointing: bool = True,
    log_period: int = 10,
    eval_baseline: bool = True,
    early_stopping_patience: int = 0,
    peak_flops: float | None = None,
    config_text: str | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) a run in `model_dir`; returns the metrics.json content it wrote, plus step/preempted
    and tokens_per_second (this process's mean, distill/metric_writer.py; absent when it ran no step).

    Args (gin macro in brackets, see gin_configs/runs/train.gin):
      model_dir [MODEL_DIR]: output folder; an existing run there is resumed.
      dataset [DATASET]: svamp | cqa | esnli | anli1 | jsonl.
      mixture_or_task_name [MIXTURE_OR_TASK_NAME]: e.g. svamp_step_by_step_gt.
      task_feature_lengths [TASK_FEATURE_LENGTHS]: {"inputs": Li, "targets": Lt}.
      train_steps [TRAIN_STEPS], batch_size [BATCH_SIZE] (global, rows).
      model_config: a T5Config. optimizer: an optax transformation.
      partitioner: distill.partitioning.Partitioner (default: 1 model partition).
      learning_rate_fn: step -> lr, only for logging.
      alpha [ALPHA]: label-task weight (1.0 = label task only).
      label_prefix [LABEL_PREFIX], rationale_prefix [RATIONALE_PREFIX]: the text before each input
        of the label / rationale task (distill/task_prefixes.py), recorded in run.json for
        evaluation, `distill predict`, `distill serve` and `distill export`.
      train_fraction [TRAIN_FRACTION], data_dir [DATA_DIR] (None: $DISTILL_DATA_DIR),
      tfds_dir: read the TFDS datasets `distill data build` prepared there.
      vocabulary_path [VOCABULARY_PATH]: None = the initial HF checkpoint's
        spiece.model if any, else MODEL_DIR/vocab/spm.model (trained once, then reused)
        with at most `vocabulary_size` pieces (default: model_config.vocab_size).
      initial_checkpoint_path [INITIAL_CHECKPOINT_PATH]: HF T5 folder, or one of
        our model dirs / checkpoints/<step> folders; used only for a fresh run.
      eval_max_examples: decode only the first N examples of each split (None = all).
      eval_period [EVAL_PERIOD], checkpoint_period [CHECKPOINT_PERIOD]: in steps,
        0 = only at the end. peak_flops [PEAK_FLOPS]: all devices' peak FLOP/s (MFU).
      trim_padding [TRIM_PADDING]: unpacked rows only, cut each batch to a
        power-of-two bucket of its longest input / target (as the reference
        pads to the longest row); one process only.
      pack_batch [PACK_BATCH]: unpacked rows only, lay each batch's sequences
        out in fewer, longer packed rows (distill/batch_packing.py): the same
        examples per step as the reference, without its padding; one process.
      feed [TRAIN_FEED]: "process" = a child process writes the batches and
        evaluation examples once and exits before training starts (meanwhile this
        process builds the state and, where every batch has one shape, compiles
        the train step), so this process holds no TensorFlow
        (distill/train_feed.py); "inline" = the seqio pipeline runs in this process.
      eval_baseline: with an initial checkpoint, evaluate it before step 1
        (metrics.json "baseline"; the pre-distillation accuracy to beat).
      early_stopping_patience: stop after this many evaluations without a
        better validation accuracy (0 = never). Test accuracy decides nothing:
        metrics.json "best" is the validation-selected step, and its
        checkpoint is kept in MODEL_DIR/best/<step> whatever keep_checkpoints says.
      config_text: the gin config, written to MODEL_DIR/config.gin.
    """
    import jax
    import numpy as np

    from distill import batch_packing, checkpointing, flops, input_pipeline, train_feed
    from distill.atomic import write_atomically
    from distill.cpu import print_emulated_bfloat16_note
    from distill.data.datasets import resolve_data_dir
    from distill.evaluation import EvalSettings, Evaluator, example_requests
    from distill.metric_writer import MetricWriter
    from distill.partitioning import Partitioner
    from distill.task_specs import task_and_mixture_names
    from distill.trainer import Trainer
    from distill.vocab import check_fits, load_tokenizer

    # ------------------------------------------------------------ check inputs
    if "://" not in model_dir:
        model_dir = os.path.abspath(model_dir)  # orbax needs absolute paths
    lengths = _check_lengths(task_feature_lengths)
    for name, value in (("train_steps", train_steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name}={value!r} must be a positive integer (--gin.{name.upper()}=...)")
    for name, value in (("eval_period", eval_period), ("checkpoint_period", checkpoint_period),
                        ("early_stopping_patience", early_stopping_patience)):
        if not isinstance(value, int) or value < 0:
            raise UserError(f"{name}={value!r} must be an integer >= 0 (0 = only at the end)")
    if feed not in train_feed.FEEDS:
        raise UserError(f"TRAIN_FEED={feed!r} must be one of {', '.join(map(repr, train_feed.FEEDS))}")
    if not 0.0 < train_fraction <= 1.0:
        raise UserError(f"TRAIN_FRACTION={train_fraction!r} must be in (0, 1]")
    prefixes = checked_prefixes(label_prefix, rationale_prefix)
    data_dir = resolve_data_dir(data_dir, dataset=dataset)
    partitioner = partitioner if partitioner is not None else Partitioner()
    partitioner.check_batch_size(batch_size)
    shard = partitioner.input_shard()
    if trim_padding and (pack or shard.num_shards > 1):
        raise UserError("TRIM_PADDING=True cuts unpacked rows to their batch's longest row: set PACK=False, and "
                        "run one process (hosts would cut their shards to different lengths)")
    if pack_batch and (pack or trim_padding or shard.num_shards > 1):
        raise UserError("PACK_BATCH=True re-packs each batch of unpacked rows: set PACK=False and TRIM_PADDING=False, "
                        "and run one process (hosts would pack their shards into different shapes)")
    primary = jax.process_index() == 0
    run_info = run_dir.read_run(model_dir)
    if run_info:
        _check_same_shapes(model_config, run_info.get("model_config", {}), f"{model_dir} holds a run with")
        recorded = recorded_prefixes(run_info.get(run_dir.TASK_PREFIXES_KEY), os.path.join(model_dir, run_dir.RUN_FILE))
        if recorded != prefixes:
            raise UserError(f"{model_dir} holds a run trained with task prefixes {recorded}, not {prefixes}: set "
                            "LABEL_PREFIX and RATIONALE_PREFIX as it had them, or choose a new MODEL_DIR")
    initial = _inspect_initial_checkpoint(initial_checkpoint_path, model_config)

    # -------------------------------------------------------- vocab and tasks
    names = task_and_mixture_names(dataset)
    if mixture_or_task_name not in names:
        raise UserError(f"unknown task or mixture {mixture_or_task_name!r} for dataset {dataset!r}; "
                        f"use one of {', '.join(names)}")
    os.makedirs(model_dir, exist_ok=True)
    vocab_path = _resolve_vocabulary(vocabulary_path, initial, model_dir, run_info, dataset, data_dir,
                                     vocabulary_size or model_config.vocab_size, primary)
    vocabulary = load_tokenizer(vocab_path)
    pieces = vocabulary.get_piece_size()
    check_fits(pieces, model_config.vocab_size, vocab_path, "T5Config",
               fix=f"set --gin.VOCAB_SIZE={_round_up(pieces)} (or T5Config.vocab_size) or use a smaller vocabulary")
    if feed == "inline":
        from distill.tasks import register_tasks

        register_tasks(dataset=dataset, data_dir=data_dir, vocabulary=vocab_path, train_fraction=train_fraction,
                       tfds_dir=tfds_dir, label_prefix=prefixes["label"], rationale_prefix=prefixes["rationale"])
    label_task, rationale_task = _eval_tasks(mixture_or_task_name, names)

    # ------------------------------------------------------- model and state
    print_emulated_bfloat16_note(model_config.matmul_operand_dtype.name)
    trainer = Trainer(config=model_config, optimizer=optimizer, partitioner=partitioner, alpha=alpha,
                      label_smoothing=label_smoothing, z_loss=z_loss, num_microbatches=num_microbatches,
                      seed=seed)
    if batch_size % (num_microbatches * partitioner.data_parallel_size):
        raise UserError(f"batch size {batch_size} is not divisible by num_microbatches ({num_microbatches}) x "
                        f"data-parallel size ({partitioner.data_parallel_size})")
    data_spec = input_pipeline.TrainDataSpec(
        mixture_or_task_name=mixture_or_task_name, task_feature_lengths=tuple(sorted(lengths.items())),
        batch_size=batch_size // shard.num_shards, pack=pack, seed=seed, shard_index=shard.index,
        num_shards=shard.num_shards, trim_padding=trim_padding, pack_batch=pack_batch,
        row_multiple=num_microbatches * partitioner.data_parallel_size,
        decoder_group=batch_packing.decoder_group(pack_batch=pack_batch, num_microbatches=num_microbatches))
    manager = checkpointing.CheckpointManager(model_dir, save_every=checkpoint_period or train_steps,
                                              keep=keep_checkpoints, async_save=async_checkpointing)
    latest = manager.latest_step()
    if primary:
        run_dir.write_run(model_dir, {
            "dataset": dataset, "data_dir": os.path.abspath(data_dir), "train_fraction": train_fraction,
            "mixture_or_task_name": mixture_or_task_name, "label_task": label_task,
            "rationale_task": rationale_task, run_dir.TASK_PREFIXES_KEY: prefixes, "task_feature_lengths": lengths,
            "vocabulary_path": os.path.abspath(vocab_path), "model_config": _config_dict(model_config),
        })
        if config_text:
            write_atomically(os.path.join(model_dir, run_dir.CONFIG_FILE), config_text)

    eval_settings = EvalSettings(splits=tuple(eval_splits), batch_size=eval_batch_size,
                                 max_input_length=lengths["inputs"], max_decode_length=max_decode_length,
                                 method=decode_method, num_beams=num_beams,
                                 num_rationale_examples=num_rationale_examples,
                                 rationale_max_decode_length=lengths["targets"], max_examples=eval_max_examples)

    def build_state() -> tuple[Any, int, int]:
        """(state, data position, step): restored, imported or fresh; where every batch has one
        shape, the train step is compiled too."""
        position = 0
        if latest is not None:
            state, extra = manager.restore(trainer.abstract_state, trainer.state_shardings)
            input_pipeline.check_data_state(data_spec, extra)
            position = int(extra.get("position", 0))
            print(f"resuming {model_dir} from step {latest}", flush=True)
        elif initial is not None:
            state = trainer.init_from_params(_load_initial_params(initial, trainer))
        else:
            state = trainer.create_state()
        step = int(jax.device_get(state.step))
        shapes = data_spec.fixed_batch_shapes()
        if shapes is not None and step < train_steps:
            trainer.precompile_train_step(state, {name: np.zeros(shape, np.int32) for name, shape in shapes.items()})
        return state, position, step

    fed = None
    if feed == "process":  # the state is built and the step compiled while the child writes (two cores busy)
        fed = train_feed.TrainFeed(_feed_root(model_dir), data_spec, train_feed.FeedSource(
            dataset=dataset, data_dir=os.path.abspath(data_dir), vocabulary_path=os.path.abspath(vocab_path),
            train_fraction=train_fraction, tfds_dir=tfds_dir, label_prefix=prefixes["label"],
            rationale_prefix=prefixes["rationale"]))
        state, position, step = fed.prepare(
            0, min(train_steps, train_feed.AHEAD_BATCHES),
            [train_feed.EvalRequest(*request) for request in example_requests(label_task, rationale_task, eval_settings)],
            while_writing=build_state)
    else:
        state, position, step = build_state()
    data = fed.batches(position, stop=train_steps) if fed else input_pipeline.TrainData(data_spec, position=position)

    evaluator = Evaluator(label_task=label_task, rationale_task=rationale_task, dataset=dataset, vocabulary=vocabulary,
                          output_dir=model_dir, write=primary, settings=eval_settings,
                          read_examples=fed.eval_examples if fed else None)
    writer = MetricWriter(os.path.join(model_dir, run_dir.EVENTS_DIR), total_steps=train_steps, peak_flops=peak_flops,
                          enabled=primary)

    def run_eval(at_step: int) -> bool:
        """Evaluates; keeps the checkpoint of a new best step; True when early stopping says stop."""
        for split, metrics in evaluator.evaluate(model_config, state.params, at_step).items():
            writer.report_eval(at_step, split, metrics)
        writer.flush()
        best = evaluator.metrics.get("best")
        if best and best["step"] == at_step:
            manager.save(at_step, state, {**data.state(), "seed": seed}, force=True)
            if primary:
                manager.keep_copy(at_step, os.path.join(model_dir, run_dir.BEST_DIR))
        return bool(early_stopping_patience and best and _evaluations_since(evaluator.metrics, best["step"])
                    >= early_stopping_patience)

    if initial is not None and eval_baseline and step == 0 and "baseline" not in evaluator.metrics:
        evaluator.evaluate(model_config, state.params, 0, baseline=True)

    # ------------------------------------------------------------- train loop
    preempted = False
    stopped_early = "early_stopped_at" in evaluator.metrics
    with checkpointing.PreemptionGuard() as guard:
        pending: list[dict[str, Any]] = []
        while step < train_steps and not stopped_early:
            batch = next(data)
            input_tokens, target_tokens = input_pipeline.count_tokens(batch)
            state, metrics = trainer.train_step(state, batch)
            step += 1
            pending.append(metrics)
            writer.throughput.add(
                tokens=(input_tokens + target_tokens) * shard.num_shards,
                flops=flops.train_flops(model_config, input_tokens=input_tokens * shard.num_shards,
                                        target_tokens=target_tokens * shard.num_shards,
                                        input_length=batch["encoder_input_tokens"].shape[1],
                                        target_length=batch["decoder_target_tokens"].shape[1]))
            if step % log_period == 0 or step == train_steps:
                scalars = _mean_metrics(jax.device_get(pending))
                if learning_rate_fn is not None:
                    scalars["learning_rate"] = float(learning_rate_fn(step - 1))
                writer.report_train(step, scalars)
                pending = []
            manager.save(step, state, {**data.state(), "seed": seed}, force=step == train_steps)
            if eval_period and step % eval_period == 0 and step < train_steps and run_eval(step):
                manager.save(step, state, {**data.state(), "seed": seed}, force=True)
                stopped_early = True
                evaluator.mark_early_stop(step)
                print(f"early stopping at step {step}: {early_stopping_patience} evaluations without a better "
                      "validation accuracy", flush=True)
            if guard.should_stop():
                manager.save(step, state, {**data.state(), "seed": seed}, force=True)
                preempted = True
                break

    # ------------------------------------------------------------ final eval
    if not preempted and not stopped_early and not evaluator.has_step(step):
        run_eval(step)
    manager.close()
    writer.close()
    if preempted:
        print(f"stopped by SIGTERM at step {step}; checkpoint saved, relaunch to resume", flush=True)
    result = {**evaluator.metrics, "preempted": preempted, "step": step}
    tokens_per_second = writer.mean_tokens_per_sec()
    if tokens_per_second is not None:
        result["tokens_per_second"] = tokens_per_second
    return result


# ----------------------------------------------------------------------------
# Checks and helpers (all before compilation)
# ----------------------------------------------------------------------------


def _check_lengths(task_feature_lengths: Any) -> dict[str, int]:
    if not isinstance(task_feature_lengths, Mapping) or set(task_feature_lengths) != {"inputs", "targets"}:
        raise UserError(f"TASK_FEATURE_LENGTHS={task_feature_lengths!r} must be "
                        "{'inputs': <int>, 'targets': <int>}")
    lengths = dict(task_feature_lengths)
    for key, value in lengths.items():
        if not isinstance(value, int) or value < 2:
            raise UserError(f"TASK_FEATURE_LENGTHS[{key!r}]={value!r} must be an integer >= 2")
    return lengths


def _config_dict(config: "T5Config") -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)


def _check_same_shapes(config: "T5Config", other: Mapping[str, Any], what: str) -> None:
    for field in SHAPE_FIELDS:
        if field in other and other[field] != getattr(config, field):
            raise UserError(f"{what} {field}={other[field]!r} but this config has {field}={getattr(config, field)!r}: "
                            "use the same model gin file or a new MODEL_DIR")


def _inspect_initial_checkpoint(path: str | None, config: "T5Config") -> dict[str, Any] | None:
    """{"kind": "hf"|"run", "path": ...} after checking its shapes against `config`."""
    if not path:
        return None
    if not os.path.exists(path):
        raise UserError(f"INITIAL_CHECKPOINT_PATH {path} does not exist: give a Hugging Face T5 folder or a "
                        "distill model dir")
    if run_dir.is_hf_dir(path):
        from distill.models.hf_checkpoints import config_from_hf, read_hf_config

        hf_config = config_from_hf(read_hf_config(path))
        _check_same_shapes(config, _config_dict(hf_config), f"INITIAL_CHECKPOINT_PATH {path} has")
        return {"kind": "hf", "path": path}
    model_dir = run_dir.find_model_dir(path)
    run_info = run_dir.read_run(model_dir) if model_dir else {}
    if not run_info:
        raise UserError(f"INITIAL_CHECKPOINT_PATH {path} is neither a Hugging Face T5 folder (config.json) nor a "
                        "distill model dir (run.json)")
    _check_same_shapes(config, run_info.get("model_config", {}), f"INITIAL_CHECKPOINT_PATH {path} has")
    return {"kind": "run", "path": path, "vocabulary_path": run_info.get("vocabulary_path")}


def _load_initial_params(initial: dict[str, Any], trainer: "Trainer") -> Any:
    if initial["kind"] == "hf":
        from distill.models.hf_checkpoints import load_hf_checkpoint

        _, params = load_hf_checkpoint(initial["path"])
        return params
    from distill import checkpointing

    return checkpointing.restore_params(initial["path"], trainer.abstract_state.params,
                                        trainer.state_shardings.params)


def _resolve_vocabulary(vocabulary_path: str | None, initial: dict[str, Any] | None, model_dir: str,
                        run_info: Mapping[str, Any], dataset: str, data_dir: str, size: int, primary: bool) -> str:
    """The vocabulary file: given, the initial checkpoint's, the run's own, or a new trained one."""
    if vocabulary_path:
        return vocabulary_path
    if initial and initial["kind"] == "hf" and os.path.isfile(os.path.join(initial["path"], "spiece.model")):
        return os.path.join(initial["path"], "spiece.model")
    if initial and initial["kind"] == "run" and initial.get("vocabulary_path"):
        return initial["vocabulary_path"]
    own = os.path.join(model_dir, run_dir.VOCAB_FILE)
    if os.path.isfile(own):
        return own
    if run_info.get("vocabulary_path") and os.path.isfile(run_info["vocabulary_path"]):
        return run_info["vocabulary_path"]
    if primary:
        from distill.vocab import train_vocabulary_for_dataset

        print(f"training a {size}-piece SentencePiece vocabulary on {dataset} into {own}", flush=True)
        train_vocabulary_for_dataset(dataset, data_dir, size=size, out_path=own)
    return own


def _feed_root(model_dir: str) -> str:
    """Where the training feed goes: MODEL_DIR/feed, or a local temp folder for a remote model dir."""
    if "://" in model_dir:
        import tempfile

        return os.path.join(tempfile.gettempdir(), "distill-feed")
    return os.path.join(model_dir, run_dir.FEED_DIR)


def _round_up(n: int, multiple: int = 128) -> int:
    return -(-n // multiple) * multiple


def _eval_tasks(mixture_or_task_name: str, names: Sequence[str]) -> tuple[str, str | None]:
    """(label task to evaluate, rationale task or None) for a mixture or task name."""
    label = mixture_or_task_name.replace("_step_by_step_", "_label_")
    if label not in names:
        raise UserError(f"cannot tell which label task evaluates {mixture_or_task_name!r}; registered: "
                        f"{', '.join(names)}")
    prefix = label.rsplit("_label_", 1)[0]
    rationale = f"{prefix}_rationale" if f"{prefix}_rationale" in names else None
    return label, rationale


def _evaluations_since(metrics: Mapping[str, Any], step: int) -> int:
    """How many evaluations metrics.json holds after `step`."""
    return sum(1 for evaluated in metrics.get("evals", {}) if int(evaluated) > step)


def _mean_metrics(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per-interval means of the step metrics (token counts are averaged too)."""
    keys = history[0].keys()
    return {key: float(sum(float(m[key]) for m in history) / len(history)) for key in keys}


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m distill.train --gin_file=... --gin.MACRO=value` (also `distill train`)."""
    from distill import gin_bindings
    from distill.heap import limit_malloc_arenas

    limit_malloc_arenas()  # before jax starts its threads (distill/heap.py)

    code, result = gin_bindings.run_entry_point("distill train", argv, train, name="train", pass_config_text=True)
    if code:
        return code
    summary = {k: result[k] for k in ("step", "test_accuracy", "validation_accuracy") if k in result}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from distill import cli

    sys.exit(cli.main(["train", *sys.argv[1:]], process_entry=True))

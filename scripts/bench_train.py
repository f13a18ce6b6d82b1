"""Training throughput of the student: steps/s, non-padding tokens/s, peak memory, MFU.

Three sources of batches, one measurement (compile excluded: `--warmup`
steps first, then `--steps` timed steps ending with a device sync):

  # A gin experiment through the real SeqIO pipeline (its feed child needs TensorFlow + data):
  python scripts/bench_train.py --gin_file=experiments/svamp/step_by_step_gt_tiny.gin

  # The paper's code's setup (../shared/reference/bench.sh on the same machine, same init and
  # tokenizer): the paper-setting gin files (experiments/svamp/standard_gt.gin or
  # step_by_step_gt.gin) on T5 v1.1 tiny, 32 examples a step, lr 5e-4, dropout 0.1, with
  # INITIAL_CHECKPOINT_PATH = the reference's tiny-t5 folder (its spiece.model is the vocabulary)
  # and the paper's code's task prefixes (--prompts distill: ours); --against reads the paper run
  # that bench.sh just wrote and prints one more line, `against [...]`, with both ratios and the ceiling:
  python scripts/bench_train.py --reference standard --init "$REF/code/models/tiny-t5" --against "$REF/standard.json"
  python scripts/bench_train.py --reference step_by_step --init "$REF/code/models/tiny-t5" \\
      --against "$REF/task_prefix.json"

  # Synthetic packed batches, no TensorFlow/seqio imported (GPU machines):
  python scripts/bench_train.py --synthetic --model base --dtype bfloat16 \\
      --batch-size 64 --peak-flops 989e12

Before the clock starts, the timed batches are read from the pipeline and every distinct batch
shape among them runs one untimed step, so no compilation is timed (trimmed or re-packed
batches come in a few shapes). Examples/s counts a step-by-step example once for its two
sequences (label and rationale), as the paper's code does. FLOP/s are useful FLOPs
(distill.flops on non-padding tokens) against a matmul peak measured on the spot in the matmul operand
dtype (`--matmul-dtype bfloat16`: bfloat16 products, float32 activations, params and loss). The
ceiling is the examples/s of those useful FLOPs at that peak: what no implementation computing
these tokens on this machine passes (with --against, as a multiple of the paper code's figure).

Synthetic rows are packed to inputs 512 / targets 128 with SVAMP-like
lengths: inputs 40-160 tokens, labels 4-16, rationales 40-120; the
step-by-step mix alternates label and rationale examples (`--method
standard` packs labels only). MFU uses distill.flops (non-padding tokens,
encoder weights x input tokens + decoder weights x target tokens, plus
attention). Peak memory: the process's max RSS, and on accelerators the
device's peak bytes in use; with the default TRAIN_FEED = 'process' the SeqIO pipeline runs in a
child that exits before the model is built, and its own peak is printed apart. Tokens per CPU-second (process CPU time, all
threads) stays comparable when other jobs share the cores; the reference
used 2 threads on 2 otherwise idle cores, i.e. at most 2 CPU-seconds/second.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from typing import Any, Iterator

import numpy as np

from distill.task_prefixes import TASK_PREFIXES

MODELS = ("micro", "tiny", "small", "base", "large")
# --reference --prompts: (LABEL_PREFIX, RATIONALE_PREFIX) per mode. The paper's code feeds standard
# fine-tuning bare inputs and its step-by-step tasks 'predict: ' / 'explain: ' (run.py, tokenize_function);
# ours cost 7 tokens each with the reference tokenizer ('[' and ']' are unknown pieces).
OUR_PROMPTS = (TASK_PREFIXES["label"], TASK_PREFIXES["rationale"])
REFERENCE_PROMPTS = {
    "standard": {"paper": ("", "explain: "), "distill": OUR_PROMPTS},
    "step_by_step": {"paper": ("predict: ", "explain: "), "distill": OUR_PROMPTS},
}
MICRO = ["T5Config.d_model = 32", "T5Config.d_kv = 8", "T5Config.d_ff = 64", "T5Config.num_heads = 2",
         "T5Config.num_encoder_layers = 1", "T5Config.num_decoder_layers = 1", "VOCAB_SIZE = 512"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    from distill.gin_bindings import rewrite_gin_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gin_file", action="append", help="experiment gin file(s) (real SeqIO pipeline)")
    source.add_argument("--reference", choices=("standard", "step_by_step"), help="the paper's code's setup")
    source.add_argument("--synthetic", action="store_true", help="random packed batches, no TensorFlow")
    parser.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings (--gin.X=Y works)")
    parser.add_argument("--model", choices=MODELS, default="tiny", help="T5 v1.1 size (synthetic)")
    parser.add_argument("--method", choices=("standard", "step_by_step"), default="step_by_step",
                        help="synthetic task mix")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the config's; 32)")
    parser.add_argument("--input-length", type=int, default=512)
    parser.add_argument("--target-length", type=int, default=128)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default=None,
                        help="operand dtype of the weight products (T5Config.matmul_dtype; default: --dtype)")
    parser.add_argument("--remat", choices=("none", "full", "minimal"), default="none")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    parser.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s of all devices, for MFU")
    parser.add_argument("--data-dir", default=None, help="default: $DISTILL_DATA_DIR")
    parser.add_argument("--init", default=None, help="--reference: the Hugging Face T5 folder to start from "
                                                    "(the paper code's tiny-t5, made by ../shared/reference/bench.sh)")
    parser.add_argument("--prompts", choices=tuple(REFERENCE_PROMPTS["standard"]), default="paper", help=(
        "--reference: the task prefixes; 'paper' (default) those of the paper's code (none for standard, "
        "'predict: ' / 'explain: ' for step-by-step), so both sides compute the same tokens; 'distill' ours "
        "('[label] ' / '[rationale] ')"))
    parser.add_argument("--against", default=None, metavar="JSON", help=(
        "--reference: the paper's code's run of the same method, as ../shared/reference/bench.sh writes it "
        "($REF/standard.json or $REF/task_prefix.json, run just before in the same sitting): prints the "
        "ratios and the ceiling ratio on one more line"))
    args = parser.parse_args(rewrite_gin_args(argv))
    if args.against and not args.reference:
        parser.error("--against needs --reference standard|step_by_step")
    return args


# ----------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------


def synthetic_batches(*, batch_size: int, input_length: int, target_length: int, vocab_size: int,
                      method: str, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Endless packed batches in THE training batch format (distill.feature_converters)."""
    rng = np.random.default_rng(seed)
    keys = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_input_tokens",
            "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids", "decoder_positions",
            "decoder_task_ids")
    count = 0
    while True:
        batch = {k: np.zeros((batch_size, input_length if k.startswith("encoder") else target_length), np.int32)
                 for k in keys}
        for row in range(batch_size):
            used_in = used_tgt = 0
            segment = 0
            while True:
                rationale = method == "step_by_step" and count % 2 == 1
                n_in = int(rng.integers(40, 161))
                n_tgt = int(rng.integers(40, 121) if rationale else rng.integers(4, 17))
                if used_in + n_in > input_length or used_tgt + n_tgt > target_length:
                    break
                count += 1
                segment += 1
                targets = rng.integers(2, vocab_size, n_tgt)
                targets[-1] = 1  # EOS
                enc, dec = slice(used_in, used_in + n_in), slice(used_tgt, used_tgt + n_tgt)
                batch["encoder_input_tokens"][row, enc] = rng.integers(2, vocab_size, n_in)
                batch["encoder_input_tokens"][row, used_in + n_in - 1] = 1
                batch["encoder_segment_ids"][row, enc] = segment
                batch["encoder_positions"][row, enc] = np.arange(n_in)
                batch["decoder_target_tokens"][row, dec] = targets
                batch["decoder_input_tokens"][row, dec] = np.concatenate([[0], targets[:-1]])
                batch["decoder_loss_weights"][row, dec] = 1
                batch["decoder_segment_ids"][row, dec] = segment
                batch["decoder_positions"][row, dec] = np.arange(n_tgt)
                batch["decoder_task_ids"][row, dec] = int(rationale)
                used_in += n_in
                used_tgt += n_tgt
        yield batch


def gin_setup(gin_files: list[str], bindings: list[str], data_dir: str | None, batch_size: int | None,
              count: int) -> tuple[Any, Any, Iterator[dict[str, np.ndarray]], dict[str, int], Any, Any]:
    """(T5Config, optimizer, numpy batches, lengths, initial params or None, feed) of a gin experiment.

    The batches come as `distill train` gets them: with TRAIN_FEED = 'process' (the default) a child
    process runs the SeqIO pipeline for the first `count` batches and exits before the model is built
    (distill/train_feed.py, into a temp folder); with 'inline' the pipeline runs here.
    """
    import dataclasses
    import tempfile

    import gin

    from distill import gin_bindings, input_pipeline, train_feed
    from distill.batch_packing import decoder_group
    from distill.data import datasets
    from distill.train import train
    from distill.vocab import train_vocabulary_for_dataset

    gin_bindings.parse_gin(gin_files, bindings, entry_points={"train": train})
    macro = gin.query_parameter
    config = gin_bindings.T5Config()
    optimizer = gin_bindings.make_optimizer()
    dataset = macro("%DATASET")
    data_dir = datasets.resolve_data_dir(data_dir or macro("%DATA_DIR"))
    vocab_path = macro("%VOCABULARY_PATH")
    init = macro("%INITIAL_CHECKPOINT_PATH")
    initial_params = None
    if init:
        from distill.run_dir import load_trained

        trained = load_trained(init, require_tokenizer=not vocab_path)
        initial_params, vocab_path = trained.params, vocab_path or trained.tokenizer_path
        config = dataclasses.replace(trained.config, dtype=config.dtype, matmul_dtype=config.matmul_dtype,
                                     remat_policy=config.remat_policy, dropout_rate=config.dropout_rate)
    scratch = tempfile.mkdtemp(prefix="bench_train_")
    if not vocab_path:
        vocab_path = os.path.join(scratch, "spm.model")
        train_vocabulary_for_dataset(dataset, data_dir, size=config.vocab_size, out_path=vocab_path)
    lengths = dict(macro("%TASK_FEATURE_LENGTHS"))
    spec = input_pipeline.TrainDataSpec(
        mixture_or_task_name=macro("%MIXTURE_OR_TASK_NAME"), task_feature_lengths=tuple(sorted(lengths.items())),
        batch_size=batch_size or macro("%BATCH_SIZE"), pack=macro("%PACK"), seed=macro("%SEED"),
        trim_padding=macro("%TRIM_PADDING") and not macro("%PACK"), pack_batch=macro("%PACK_BATCH"),
        decoder_group=decoder_group(pack_batch=macro("%PACK_BATCH")))  # as distill train does
    if macro("%TRAIN_FEED") == "inline":
        from distill.tasks import register_tasks

        register_tasks(dataset=dataset, data_dir=data_dir, vocabulary=vocab_path,
                       train_fraction=macro("%TRAIN_FRACTION"), label_prefix=macro("%LABEL_PREFIX"),
                       rationale_prefix=macro("%RATIONALE_PREFIX"))
        return config, optimizer, input_pipeline.TrainData(spec), lengths, initial_params, None
    feed = train_feed.TrainFeed(scratch, spec, train_feed.FeedSource(
        dataset=dataset, data_dir=os.path.abspath(data_dir), vocabulary_path=os.path.abspath(vocab_path),
        train_fraction=macro("%TRAIN_FRACTION"), label_prefix=macro("%LABEL_PREFIX"),
        rationale_prefix=macro("%RATIONALE_PREFIX")))
    feed.prepare(0, count)
    return config, optimizer, feed.batches(), lengths, initial_params, feed


def reference_bindings(mode: str, init: str | None, prompts: str = "paper") -> tuple[list[str], list[str]]:
    """Gin files/bindings of the paper's code's setup (see module docstring): 32 examples a step, the
    task prefixes of `prompts` (REFERENCE_PROMPTS)."""
    if not init:
        raise SystemExit("error: --reference needs --init DIR, the paper code's tiny-t5 folder "
                         "(bash ../shared/reference/bench.sh \"$REF\" standard 60 makes $REF/code/models/tiny-t5)")
    experiment = "standard_gt" if mode == "standard" else "step_by_step_gt"
    rows = 32 if mode == "standard" else 64  # a step-by-step example is two rows
    return [f"experiments/svamp/{experiment}.gin", "models/t5_1_1_tiny.gin"], [
        f"INITIAL_CHECKPOINT_PATH = '{init}'", "VOCAB_SIZE = 4000", f"BATCH_SIZE = {rows}",
        "OPTIMIZER = 'adamw'", "LEARNING_RATE = 5e-4", "DROPOUT_RATE = 0.1",
        *(f"{macro} = {prefix!r}" for macro, prefix in zip(("LABEL_PREFIX", "RATIONALE_PREFIX"),
                                                            REFERENCE_PROMPTS[mode][prompts]))]


# --reference mode -> the paper code's --model_type of the same method (bench.sh's METHOD).
PAPER_MODEL_TYPES = {"standard": "standard", "step_by_step": "task_prefix"}


def paper_run(path: str, mode: str) -> dict[str, float]:
    """The paper's code's figures from the JSON that ../shared/reference/bench.sh writes ($REF/<method>.json)
    and the `/usr/bin/time -v` report beside it (<method>.time): steps/s after the warm-up bench.sh also
    skips, examples/s, peak RSS in GiB (KiB / 2**20, as ours; bench.sh's own line prints KiB / 1e6) and the
    run's start (epoch seconds)."""
    from distill.errors import UserError

    method = PAPER_MODEL_TYPES[mode]
    fix = f'run bash ../shared/reference/bench.sh "$REF" {method} 60 and pass $REF/{method}.json'
    time_path = os.path.splitext(path)[0] + ".time"
    try:
        with open(path) as f:
            run = json.load(f)
        with open(time_path) as f:
            rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
        argv, step_times = run["argv"], [float(t) for t in run["step_t"]]
        model_type, batch = argv[argv.index("--model_type") + 1], int(argv[argv.index("--batch_size") + 1])
        started = float(run["t_start"])
    except OSError as err:
        raise UserError(f"--against: cannot read {err.filename}: {err.strerror}; {fix}") from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise UserError(f"--against: {path} is not a run of the paper's code as bench.sh writes it; {fix}") from None
    if model_type != method:
        raise UserError(f"--against: {path} is a {model_type!r} run; --reference {mode} compares with "
                        f"{method!r}: {fix}")
    skip = min(10, len(step_times) // 4)
    if batch < 1 or rss is None or len(step_times) - skip < 2 or not step_times[-1] > step_times[skip]:
        raise UserError(f"--against: {path} has no batch size or too few timed steps, or {time_path} no peak "
                        f"RSS; {fix}")
    steps_per_sec = (len(step_times) - 1 - skip) / (step_times[-1] - step_times[skip])
    return {"steps_per_sec": steps_per_sec, "examples_per_sec": batch * steps_per_sec,
            "peak_rss_gb": int(rss.group(1)) / 2**20, "started": started}


def model_config(model: str, dtype: str, remat: str, matmul_dtype: str = "") -> Any:
    import dataclasses

    from distill import gin_bindings

    if model == "micro":
        gin_bindings.parse_gin(["models/t5_1_1_tiny.gin"], MICRO)
    else:
        gin_bindings.parse_gin([f"models/t5_1_1_{model}.gin"], [])
    return dataclasses.replace(gin_bindings.T5Config(), dtype=dtype, matmul_dtype=matmul_dtype, remat_policy=remat)


# ----------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------


def count_sequences(batch: dict[str, np.ndarray]) -> int:
    """Training sequences (one example of one task) in a batch, packed or not."""
    if "decoder_segment_ids" in batch:
        return int(batch["decoder_segment_ids"].max(axis=1).sum())
    return int(np.count_nonzero(batch["decoder_loss_weights"].any(axis=1)))


def _shape(batch: dict[str, np.ndarray]) -> tuple:
    return tuple(sorted((name, value.shape) for name, value in batch.items()))


def measure(config: Any, optimizer: Any, batches: Iterator[dict[str, np.ndarray]], *, steps: int, warmup: int,
            peak_flops: float | None, initial_params: Any = None) -> dict[str, float]:
    import jax

    from distill import flops
    from distill.partitioning import Partitioner
    from distill.trainer import Trainer

    rss_before_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # imports + data pipeline
    trainer = Trainer(config=config, optimizer=optimizer, partitioner=Partitioner(), alpha=0.5)
    state = trainer.create_state() if initial_params is None else trainer.init_from_params(initial_params)
    for _ in range(warmup):
        state, metrics = trainer.train_step(state, next(batches))
    timed = [next(batches) for _ in range(steps)]
    shapes: dict[tuple, dict[str, np.ndarray]] = {}
    for batch in timed:
        shapes.setdefault(_shape(batch), batch)
    for batch in shapes.values():  # compile every shape the timed steps use, untimed
        state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(state)
    tokens = sequences = 0
    total_flops = 0.0
    for batch in timed:
        n_in = int(np.count_nonzero(batch["encoder_input_tokens"]))
        n_tgt = int(np.count_nonzero(batch["decoder_target_tokens"]))
        tokens += n_in + n_tgt
        sequences += count_sequences(batch)
        total_flops += flops.train_flops(config, input_tokens=n_in, target_tokens=n_tgt,
                                         input_length=batch["encoder_input_tokens"].shape[1],
                                         target_length=batch["decoder_target_tokens"].shape[1])
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in timed:
        state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start  # all threads; robust to other jobs sharing the cores
    result = {"steps_per_sec": steps / seconds, "tokens_per_sec": tokens / seconds,
              "tokens_per_step": tokens / steps, "sequences_per_sec": sequences / seconds, "loss": float(metrics["loss"]),
              "tokens_per_cpu_second": tokens / cpu_seconds, "cpu_seconds_per_step": cpu_seconds / steps,
              "flops_per_sec": total_flops / seconds, "shapes": len(shapes),
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "rss_before_model_gb": rss_before_model,
              "mfu": flops.mfu(total_flops / steps, steps / seconds, peak_flops)}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats and jax.devices()[0].platform != "cpu":
        result["device_peak_gb"] = stats["peak_bytes_in_use"] / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from distill.errors import UserError
    from distill.heap import limit_malloc_arenas, restart_with_huge_pages

    if argv is None:
        restart_with_huge_pages()  # as `distill train` does (distill/heap.py); a no-op once restarted
    limit_malloc_arenas()  # as `distill train` does (distill/heap.py)

    initial_params = feed = None
    try:
        if args.synthetic:
            config = model_config(args.model, args.dtype, args.remat, args.matmul_dtype or "")
            from distill.optimizers import make_optimizer

            optimizer = make_optimizer("adamw", 5e-5)
            lengths = {"inputs": args.input_length, "targets": args.target_length}
            batches = synthetic_batches(batch_size=args.batch_size or 32, input_length=args.input_length,
                                        target_length=args.target_length, vocab_size=config.vocab_size,
                                        method=args.method)
            label, two_rows = f"synthetic {args.method}, model {args.model}", args.method == "step_by_step"
        else:
            files, bindings = (reference_bindings(args.reference, args.init, args.prompts) if args.reference
                               else (args.gin_file, []))
            bindings += [f"T5Config.dtype = '{args.dtype}'", f"T5Config.matmul_dtype = '{args.matmul_dtype or ''}'",
                         f"T5Config.remat_policy = '{args.remat}'"]
            config, optimizer, batches, lengths, initial_params, feed = gin_setup(
                files, bindings + args.gin_bindings, args.data_dir, args.batch_size, args.warmup + args.steps)
            label = f"reference {args.reference}, {args.prompts} prompts" if args.reference else " + ".join(files)
            two_rows = "step_by_step" in batches.spec.mixture_or_task_name
        paper = paper_run(args.against, args.reference) if args.against else None
        import jax

        from distill.flops import matmul_peak

        peak = matmul_peak(config.matmul_operand_dtype.name) if jax.devices()[0].platform == "cpu" else None
        result = measure(config, optimizer, batches, steps=args.steps, warmup=args.warmup,
                         peak_flops=args.peak_flops, initial_params=initial_params)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    examples = result["sequences_per_sec"] / (2 if two_rows else 1)
    mfu = "" if result["mfu"] is None else f" | MFU {100 * result['mfu']:.1f}%"
    achieved = f"{result['flops_per_sec'] / 1e9:.0f} GFLOP/s useful"
    # The most examples/s any implementation computing these tokens reaches with every product at the peak.
    ceiling = peak * examples / result["flops_per_sec"] if peak else None
    if peak:
        achieved += (f" = {100 * result['flops_per_sec'] / peak:.0f}% of the {peak / 1e9:.0f} GFLOP/s "
                     f"{config.matmul_operand_dtype.name} matmul peak now (ceiling {ceiling:.1f} examples/s)")
    writer = ("" if feed is None or feed.writer_peak_rss_gb is None else
              f" | feed writer peak RSS {feed.writer_peak_rss_gb:.2f} GB (a child that exited before the model)")
    device = f" | device peak {result['device_peak_gb']:.2f} GB" if "device_peak_gb" in result else ""
    print(f"bench [{label}] {jax.devices()[0].platform} x{jax.device_count()}, dtype {config.dtype}, "
          f"matmul operands {config.matmul_operand_dtype.name}, "
          f"lengths {lengths['inputs']}/{lengths['targets']}, {result['shapes']} batch shapes: "
          f"{result['steps_per_sec']:.3f} steps/s | {examples:.1f} examples/s | "
          f"{result['sequences_per_sec']:.1f} sequences/s | {result['tokens_per_sec']:,.0f} non-padding tokens/s "
          f"({result['tokens_per_step']:,.0f}/step) | {achieved} | {result['tokens_per_cpu_second']:,.0f} tokens per "
          f"CPU-second ({result['cpu_seconds_per_step']:.2f} CPU-s/step) | "
          f"peak RSS {result['peak_rss_gb']:.2f} GB ({result['rss_before_model_gb']:.2f} GB before the model: "
          f"imports, data){writer}{device}{mfu}")
    if paper:
        minutes = (time.time() - paper["started"]) / 60
        bound = (f" | ceiling x{ceiling / paper['examples_per_sec']:.2f}: every useful product at the "
                 f"{config.matmul_operand_dtype.name} matmul peak above" if ceiling else "")
        print(f"against [the paper's code, {PAPER_MODEL_TYPES[args.reference]}] ({args.against}, started "
              f"{minutes:.0f} min ago): {paper['examples_per_sec']:.1f} examples/s, peak RSS "
              f"{paper['peak_rss_gb']:.2f} GiB | distill x{examples / paper['examples_per_sec']:.2f} examples/s, "
              f"x{result['peak_rss_gb'] / paper['peak_rss_gb']:.2f} peak RSS{bound}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

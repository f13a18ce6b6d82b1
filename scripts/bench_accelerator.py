"""One table for a session with a GPU or TPU: train-step MFU, decode throughput and peak device memory.

    python scripts/bench_accelerator.py                  # T5 v1.1 base and large, bfloat16 (a few minutes on one H200)
    python scripts/bench_accelerator.py --models micro --steps 2 --decode-batch 4    # CPU smoke run

Each model runs in its own process, so its peak device memory is its own. A process times
--steps train steps of synthetic packed step-by-step batches (scripts/bench_train.py's: rows of
512 input / 128 target tokens with SVAMP-like lengths) after compiling, and reports examples/s,
useful TFLOP/s (distill.flops on the non-padding tokens) and MFU against --peak-flops (default:
PEAK_BF16 for the device kind, when listed). Then it times greedy decoding of --decode-batch rows
of 128 input tokens for 64 new tokens, after compiling, from a random init of the same shape.
Nothing imports TensorFlow or seqio: GPU machines have neither.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
# Dense bfloat16 peak FLOP/s per chip, from the vendors' data sheets, by a prefix of jax's device_kind.
PEAK_BF16 = {"NVIDIA H200": 989e12, "NVIDIA H100": 989e12, "NVIDIA A100": 312e12, "TPU v4": 275e12,
             "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6 lite": 918e12}
DECODE_INPUT, DECODE_NEW_TOKENS = 128, 64


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="base,large", help="comma list of T5 v1.1 sizes (micro, tiny, ... large)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=64, help="train rows per step (512/128 tokens each)")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps")
    parser.add_argument("--decode-batch", type=int, default=64, help="rows decoded together")
    parser.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s of all devices (MFU)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    return parser.parse_args(argv)


def _peak_flops(explicit: float | None) -> float | None:
    import jax

    if explicit:
        return explicit
    kind = jax.devices()[0].device_kind
    per_chip = next((peak for prefix, peak in PEAK_BF16.items() if kind.startswith(prefix)), None)
    return per_chip * jax.device_count() if per_chip else None


def _device_peak_gb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def _decode_rows_per_second(config, batch: int) -> float:
    import flax.linen as nn
    import jax
    import numpy as np

    from distill.models.t5 import init_params
    from distill.predict import decoding_params, predict_batch

    params = nn.unbox(init_params(config, jax.random.PRNGKey(0), encoder_length=8, decoder_length=8))["params"]
    params = decoding_params(config, params)
    tokens = np.random.default_rng(0).integers(2, config.vocab_size, (batch, DECODE_INPUT)).astype(np.int32)
    tokens[:, -1] = 1  # EOS
    decode = lambda: jax.block_until_ready(  # noqa: E731
        predict_batch(config, params, tokens, method="greedy", max_decode_length=DECODE_NEW_TOKENS))
    decode()  # compiles
    start = time.perf_counter()
    decode()
    return batch / (time.perf_counter() - start)


def measure_one(args: argparse.Namespace) -> dict:
    """Train-step and decode figures of one model size, in this process."""
    import jax

    sys.path.insert(0, SCRIPTS)
    import bench_train

    from distill.optimizers import make_optimizer

    config = bench_train.model_config(args.one, args.dtype, "none")
    peak = _peak_flops(args.peak_flops)
    batches = bench_train.synthetic_batches(batch_size=args.batch_size, input_length=512, target_length=128,
                                            vocab_size=config.vocab_size, method="step_by_step")
    train = bench_train.measure(config, make_optimizer("adamw", 5e-5), batches, steps=args.steps, warmup=2,
                                peak_flops=peak)
    train_peak = _device_peak_gb()
    rows_per_second = _decode_rows_per_second(config, args.decode_batch)
    return {"model": args.one, "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
            "examples_per_sec": train["sequences_per_sec"] / 2, "tflops": train["flops_per_sec"] / 1e12,
            "mfu": train["mfu"], "train_peak_gb": train_peak, "decode_rows_per_sec": rows_per_second,
            "decode_tokens_per_sec": rows_per_second * DECODE_NEW_TOKENS, "peak_gb": _device_peak_gb(),
            "host_peak_rss_gb": train["peak_rss_gb"],
            "imported_tensorflow": any(name in sys.modules for name in ("tensorflow", "seqio"))}


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args)))
        return 0
    rows = []
    for model in args.models.split(","):
        command = [sys.executable, os.path.abspath(__file__), "--one", model, "--dtype", args.dtype,
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--decode-batch", str(args.decode_batch)]
        if args.peak_flops:
            command += ["--peak-flops", str(args.peak_flops)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"error: {model} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if rows[-1]["imported_tensorflow"]:
            print(f"warning: measuring {model} imported TensorFlow or seqio, which GPU machines lack", file=sys.stderr)
    print(f"{rows[0]['device']}, {args.dtype}, train: {args.batch_size} packed rows of 512/128, step-by-step; "
          f"decode: {args.decode_batch} rows of {DECODE_INPUT} tokens, {DECODE_NEW_TOKENS} new, greedy")
    print("| model | train examples/s | useful TFLOP/s | MFU | train peak GB | decode rows/s | decode tokens/s | "
          "peak GB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {r['model']} | {r['examples_per_sec']:.1f} | {r['tflops']:.2f} | {mfu} | "
              f"{_cell(r['train_peak_gb'], '.2f')} | {r['decode_rows_per_sec']:.1f} | {r['decode_tokens_per_sec']:,.0f} | "
              f"{_cell(r['peak_gb'], '.2f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

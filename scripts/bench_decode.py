"""Decoding throughput: distill's compiled KV-cache decoder vs Hugging Face `generate`.

Builds a random T5 of a given shape with transformers, saves it, loads the same
weights into the Flax model (distill.models.checkpoints.load_hf_checkpoint),
and decodes the same random batch with both, greedy and beam search, for a fixed
number of new tokens (random weights rarely emit EOS, so both run to the
length limit and do equal work). Each backend runs in its own subprocess pinned
to the same CPUs, with torch.set_num_threads equal to the CPU count, so their
peak RSS figures are separate. Compile time (JAX's first call minus a steady
call) is reported apart from the steady throughput.

    python scripts/bench_decode.py --size tiny --batch 32 --threads 2
    python scripts/bench_decode.py --size small --methods greedy,beam

Prints one line per (backend, method) and a ratio line per method.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

# name -> HF T5Config kwargs (T5 v1.1 family: gated-GELU, untied logits).
SIZES = {
    "tiny": dict(d_model=256, d_ff=1024, d_kv=32, num_heads=4, num_layers=4, num_decoder_layers=4, vocab_size=32128),
    "small": dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8,
                  vocab_size=32128),
}


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input-length", type=int, default=64, help="padded encoder length (rows vary in length)")
    parser.add_argument("--decode-length", type=int, default=32, help="new tokens per example")
    parser.add_argument("--methods", default="greedy,beam", help="comma list of greedy, beam")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPUs both backends may use")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after warm-up (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    # Internal: run one backend in this process.
    parser.add_argument("--backend", choices=("jax", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _pin(threads: int) -> None:
    """Restrict this process to `threads` CPUs (before jax/torch create their thread pools)."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)


def _inputs(args):
    """Random encoder ids [batch, input_length]: lengths between half and full, EOS-terminated, 0-padded."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    vocab = SIZES[args.size]["vocab_size"]
    tokens = np.zeros((args.batch, args.input_length), np.int32)
    for row in range(args.batch):
        n = int(rng.integers(args.input_length // 2, args.input_length + 1))
        tokens[row, : n - 1] = rng.integers(3, min(vocab, 32000), n - 1)
        tokens[row, n - 1] = 1
    return tokens


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of `repeats` later calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _run_jax(args) -> dict:
    import jax
    import numpy as np

    from distill.models.checkpoints import load_hf_checkpoint
    from distill.predict import predict_batch

    config, params = load_hf_checkpoint(args.checkpoint)
    config = config.replace(dropout_rate=0.0)
    params = jax.device_put(params)
    tokens = jax.device_put(_inputs(args))
    results = {}
    for method in args.methods.split(","):
        def decode():
            out = predict_batch(config, params, tokens, method=method, num_beams=args.num_beams,
                                max_decode_length=args.decode_length)
            return np.asarray(out)

        first, steady = _time(decode, args.repeats)
        results[method] = dict(seconds=steady, compile=max(first - steady, 0.0))
    results["peak_rss_mib"] = _peak_rss_mib()
    results["device"] = str(jax.devices()[0].platform)
    return results


def _run_hf(args) -> dict:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model = transformers.T5ForConditionalGeneration.from_pretrained(args.checkpoint).eval()
    ids = torch.from_numpy(_inputs(args)).long()
    mask = (ids != 0).long()
    results = {}
    for method in args.methods.split(","):
        beams = args.num_beams if method == "beam" else 1

        def decode():
            with torch.inference_mode():
                return model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=beams,
                                      max_new_tokens=args.decode_length)

        _, steady = _time(decode, args.repeats)
        results[method] = dict(seconds=steady)
    results["peak_rss_mib"] = _peak_rss_mib()
    return results


def _save_random_model(args, directory: str) -> None:
    import torch
    import transformers

    torch.manual_seed(args.seed)
    config = transformers.T5Config(**SIZES[args.size], feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    transformers.T5ForConditionalGeneration(config).eval().save_pretrained(directory)


def _child(args, backend: str, checkpoint: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--backend", backend, "--checkpoint", checkpoint]
    for flag in ("size", "batch", "input_length", "decode_length", "methods", "num_beams", "threads", "repeats",
                 "seed"):
        argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = _parse_args(argv)
    _pin(args.threads)
    if args.backend:
        result = _run_jax(args) if args.backend == "jax" else _run_hf(args)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as directory:
        _save_random_model(args, directory)
        ours = _child(args, "jax", directory)
        theirs = _child(args, "hf", directory)
    print(f"bench_decode size={args.size} batch={args.batch} input_length={args.input_length} "
          f"new_tokens={args.decode_length} beams={args.num_beams} threads={args.threads} jax_device={ours['device']}")
    for method in args.methods.split(","):
        a, b = ours[method], theirs[method]
        print(f"  {method:6s} distill: {args.batch / a['seconds']:8.1f} examples/s  ({a['seconds']:.3f} s/batch, "
              f"compile {a['compile']:.1f} s)")
        print(f"  {method:6s} HF     : {args.batch / b['seconds']:8.1f} examples/s  ({b['seconds']:.3f} s/batch)")
        print(f"  {method:6s} ratio  : {b['seconds'] / a['seconds']:.2f}x HF throughput")
    print(f"  peak RSS: distill {ours['peak_rss_mib']:.0f} MiB, HF {theirs['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

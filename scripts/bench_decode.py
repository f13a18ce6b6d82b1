"""Decoding throughput: distill's compiled KV-cache decoder vs Hugging Face `generate`.

Builds a random T5 of a given shape with transformers, saves it, loads the same
weights into the Flax model (distill.models.hf_checkpoints.load_hf_checkpoint),
and decodes the same random batch with both, greedy and beam search, for a fixed
number of new tokens (random weights rarely emit EOS, so both run to the
length limit and do equal work; the mean generated length is printed to show it).

Each backend lives in its own process (so peak RSS is its own), pinned to the
same `--threads` CPUs, torch.set_num_threads(threads) for HF. The parent
alternates timed runs between them, so load from other processes on a shared
machine hits both alike; wall-clock medians give examples/s, and process CPU
time is printed too (with one thread it measures work, not waiting). Compile
time (JAX's first call minus a steady one) is reported apart. Each method's line
ends with its ceiling: the examples/s of the batch's useful FLOPs
(distill.flops.decode_flops) at a float32 (or --matmul-dtype) matmul peak
measured in the JAX process, as a multiple of HF's figure: no implementation
on this machine passes it.

    python scripts/bench_decode.py --size tiny --batch 32
    python scripts/bench_decode.py --size small --methods greedy,beam --threads 2

Prints one line per (backend, method), a ratio line per method, and peak RSS.
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
    "micro": dict(d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1, vocab_size=512),
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
    parser.add_argument("--threads", type=int, default=1,
                        help="CPUs each backend is pinned to (torch.set_num_threads too); 1 = least noise")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after warm-up (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="distill's T5Config.matmul_dtype (Hugging Face runs float32 either way)")
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


def _jax_decoder(args):
    """decode(method) for distill: the Flax T5 on the saved weights, through predict_batch."""
    import jax
    import numpy as np

    from distill import flops
    from distill.models.hf_checkpoints import load_hf_checkpoint
    from distill.predict import decoding_params, predict_batch

    config, params = load_hf_checkpoint(args.checkpoint)
    config = config.replace(matmul_dtype=args.matmul_dtype)
    params = jax.device_put(decoding_params(config, params))
    inputs = _inputs(args)
    tokens = jax.device_put(inputs)

    def decode(method: str) -> np.ndarray:
        return np.asarray(predict_batch(config, params, tokens, method=method, num_beams=args.num_beams,
                                        max_decode_length=args.decode_length))

    lengths = [int(n) for n in np.count_nonzero(inputs, axis=1)]
    useful = {method: flops.decode_flops(config, input_lengths=lengths, new_tokens=args.decode_length,
                                         beams=args.num_beams if method == "beam" else 1)
              for method in ("greedy", "beam")}
    return decode, {"device": jax.devices()[0].platform, "flops": useful,
                    "peak": flops.matmul_peak(config.matmul_operand_dtype.name)}


def _hf_decoder(args):
    """decode(method) for transformers: generate on the same weights and batch."""
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    model = transformers.T5ForConditionalGeneration.from_pretrained(args.checkpoint).eval()
    ids = torch.from_numpy(_inputs(args)).long()
    mask = (ids != 0).long()

    def decode(method: str):
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.decode_length,
                                 num_beams=args.num_beams if method == "beam" else 1)
        return out[:, 1:].numpy()

    return decode, {"device": "cpu"}


def _serve(args) -> None:
    """Child process: answer "run <method>" lines with one timed decode each (JSON), until EOF."""
    import numpy as np

    decode, about = (_jax_decoder if args.backend == "jax" else _hf_decoder)(args)
    print(json.dumps(about), flush=True)
    for line in sys.stdin:
        method = line.split()[1]
        wall, cpu = time.perf_counter(), time.process_time()
        tokens = decode(method)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        # Rows that emitted EOS stop early; report the mean generated length so equal work is visible.
        lengths = [int(np.argmax(row == 1)) + 1 if (row == 1).any() else row.shape[0] for row in tokens]
        print(json.dumps({"wall": wall, "cpu": cpu, "mean_length": float(np.mean(lengths)),
                          "peak_rss_mib": _peak_rss_mib()}), flush=True)


class _Child:
    """One backend in its own process, pinned to the same CPUs, driven line by line."""

    def __init__(self, args, backend: str, checkpoint: str):
        argv = [sys.executable, os.path.abspath(__file__), "--backend", backend, "--checkpoint", checkpoint]
        for flag in ("size", "batch", "input_length", "decode_length", "num_beams", "threads", "seed", "matmul_dtype"):
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.about = self._read()  # its device; the JAX child adds each method's useful FLOPs and the matmul peak
        self.device = self.about["device"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"benchmark child {self.process.args[3]} died (exit {self.process.wait()})")
        return json.loads(line)

    def run(self, method: str) -> dict:
        self.process.stdin.write(f"run {method}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def _save_random_model(args, directory: str) -> None:
    import torch
    import transformers

    torch.manual_seed(args.seed)
    config = transformers.T5Config(**SIZES[args.size], feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    transformers.T5ForConditionalGeneration(config).eval().save_pretrained(directory)


def main(argv=None) -> int:
    from distill.xla_flags import single_threaded_eigen

    args = _parse_args(argv)
    single_threaded_eigen()  # our decoder runs as `distill predict` runs it
    _pin(args.threads)
    if args.backend:
        _serve(args)
        return 0
    methods = args.methods.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        _save_random_model(args, directory)
        ours, theirs = _Child(args, "jax", directory), _Child(args, "hf", directory)
        try:
            for method in methods:
                first = ours.run(method)  # compiles
                theirs.run(method)  # warm-up
                # Alternate the two so that load from other processes hits both alike.
                runs = [(ours.run(method), theirs.run(method)) for _ in range(args.repeats)]
                median = lambda key, side: statistics.median(r[side][key] for r in runs)  # noqa: E731
                results[method] = dict(
                    ours_wall=median("wall", 0), theirs_wall=median("wall", 1), ours_cpu=median("cpu", 0),
                    theirs_cpu=median("cpu", 1), compile=max(first["wall"] - median("wall", 0), 0.0),
                    ours_length=runs[-1][0]["mean_length"], theirs_length=runs[-1][1]["mean_length"],
                    ours_rss=runs[-1][0]["peak_rss_mib"], theirs_rss=runs[-1][1]["peak_rss_mib"])
        finally:
            ours.close()
            theirs.close()
    print(f"bench_decode size={args.size} batch={args.batch} input_length={args.input_length} "
          f"new_tokens={args.decode_length} beams={args.num_beams} threads={args.threads} "
          f"jax_device={ours.device} repeats={args.repeats} distill_matmuls={args.matmul_dtype} HF=float32")
    for method in methods:
        r = results[method]
        for name, side in (("distill", "ours"), ("HF", "theirs")):
            extra = f", compile {r['compile']:.1f} s" if side == "ours" else ""
            print(f"  {method:6s} {name:7s}: {args.batch / r[side + '_wall']:8.1f} examples/s  "
                  f"({r[side + '_wall']:.3f} s/batch wall, {r[side + '_cpu']:.3f} s CPU, "
                  f"mean length {r[side + '_length']:.1f}{extra})")
        ceiling = ours.about["peak"] / ours.about["flops"][method] * r["theirs_wall"]  # batches/s x HF's s/batch
        print(f"  {method:6s} ratio  : {r['theirs_wall'] / r['ours_wall']:.2f}x HF throughput "
              f"(CPU-time ratio {r['theirs_cpu'] / r['ours_cpu']:.2f}x; ceiling {ceiling:.2f}x: the batch's "
              f"{ours.about['flops'][method] / 1e9:.1f} useful GFLOP at the {ours.about['peak'] / 1e9:.0f} GFLOP/s "
              f"{args.matmul_dtype} matmul peak)")
    print(f"  peak RSS: distill {max(r['ours_rss'] for r in results.values()):.0f} MiB, "
          f"HF {max(r['theirs_rss'] for r in results.values()):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

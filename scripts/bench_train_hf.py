"""The reference training recipe (the paper's PyTorch/transformers code) timed on this machine.

Issue 5's reference figures were measured with the paper's own code on a
2-core machine; this script rebuilds that recipe so `bench_train.py
--reference` can be compared with a baseline measured on the *same* cores:

  python scripts/bench_train_hf.py --method standard
  python scripts/bench_train_hf.py --method step_by_step

Recipe (as in the paper's repository): transformers' T5ForConditionalGeneration
with the T5 v1.1 shape of bench_train's `tiny` (d_model 256, d_ff 1024, d_kv
32, 4 heads, 4+4 layers), a 4000-piece SentencePiece vocabulary trained on
SVAMP train, batch 32 examples per step, inputs and targets cut at 256
tokens and padded to the longest in the batch (DataCollatorForSeq2Seq),
AdamW at 5e-5, dropout 0.1, torch threads = 2. Step-by-step runs two forward
passes per step ("predict: " / "explain: " prefixes, as the reference) and
adds alpha * label loss + (1 - alpha) * rationale loss.

Non-padding tokens count inputs plus targets of every sequence the step
trains on (both tasks for step-by-step), the same count bench_train uses.
Needs torch and transformers (`pip install -e .[test]`); no TensorFlow.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=("standard", "step_by_step"), default="standard")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256, help="cut inputs and targets at this many tokens")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--micro", action="store_true", help="a 1+1-layer d_model 32 model (tests)")
    parser.add_argument("--data-dir", default=os.environ.get("DISTILL_DATA_DIR"), help="default: $DISTILL_DATA_DIR")
    return parser.parse_args(argv)


def encode_examples(method: str, data_dir: str, max_length: int) -> list[list[tuple[list[int], list[int]]]]:
    """Per SVAMP train example: the (input ids, target ids) pairs one step trains on, EOS-terminated."""
    from distill.data import datasets
    from distill.vocab import EOS_ID, train_vocabulary_for_dataset

    import sentencepiece as spm

    path = train_vocabulary_for_dataset("svamp", data_dir, size=4000,
                                        out_path=os.path.join(tempfile.mkdtemp(prefix="bench_hf_"), "spm.model"))
    sp = spm.SentencePieceProcessor(model_file=path)

    def ids(text: str) -> list[int]:
        return sp.encode(text)[: max_length - 1] + [EOS_ID]

    examples = []
    for ex in datasets.load_examples("svamp", "train", data_dir):
        if method == "standard":
            examples.append([(ids(ex["input"]), ids(ex["label"]))])
        else:
            examples.append([(ids("predict: " + ex["input"]), ids(ex["label"])),
                             (ids("explain: " + ex["input"]), ids(ex.get("rationale") or ""))])
    return examples


def collate(pairs: list[tuple[list[int], list[int]]]) -> dict:
    """DataCollatorForSeq2Seq: pad to the longest; pad id 0, label padding -100."""
    import torch

    width_in = max(len(i) for i, _ in pairs)
    width_out = max(len(t) for _, t in pairs)
    input_ids = torch.zeros((len(pairs), width_in), dtype=torch.long)
    labels = torch.full((len(pairs), width_out), -100, dtype=torch.long)
    for row, (i, t) in enumerate(pairs):
        input_ids[row, : len(i)] = torch.tensor(i)
        labels[row, : len(t)] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.data_dir or not os.path.isdir(args.data_dir):
        print(f"error: data dir {args.data_dir!r} not found; pass --data-dir or set DISTILL_DATA_DIR", file=sys.stderr)
        return 2
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    shape = (dict(d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1) if args.micro else
             dict(d_model=256, d_ff=1024, d_kv=32, num_heads=4, num_layers=4, num_decoder_layers=4))
    model = T5ForConditionalGeneration(T5Config(vocab_size=4000, feed_forward_proj="gated-gelu",
                                                tie_word_embeddings=False, dropout_rate=0.1,
                                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **shape))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    examples = encode_examples(args.method, args.data_dir, args.max_length)
    order = np.random.default_rng(0).permutation(len(examples))

    def batches():
        while True:
            for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
                chosen = [examples[i] for i in order[start: start + args.batch_size]]
                yield [collate([ex[task] for ex in chosen]) for task in range(len(chosen[0]))]

    def step(tasks: list[dict]) -> float:
        optimizer.zero_grad()
        task_losses = [model(**batch).loss for batch in tasks]
        loss = task_losses[0] if len(task_losses) == 1 else (
            args.alpha * task_losses[0] + (1 - args.alpha) * task_losses[1])
        loss.backward()
        optimizer.step()
        return float(loss)

    stream = batches()
    for _ in range(args.warmup):
        step(next(stream))
    tokens = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        tasks = next(stream)
        tokens += sum(int((b["input_ids"] != 0).sum() + (b["labels"] != -100).sum()) for b in tasks)
        loss = step(tasks)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"bench-hf [{args.method}, torch {torch.__version__}, {args.threads} threads] batch {args.batch_size}: "
          f"{args.steps / seconds:.3f} steps/s | {tokens / seconds:,.0f} non-padding tokens/s "
          f"({tokens / args.steps:,.0f}/step) | {tokens / cpu_seconds:,.0f} tokens per CPU-second "
          f"({cpu_seconds / args.steps:.2f} CPU-s/step) | peak RSS {peak:.2f} GB | loss {loss:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

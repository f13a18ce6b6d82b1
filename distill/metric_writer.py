"""TensorBoard scalars and the console progress line of a training run.

One object owns both outputs so the numbers a user sees on the console are
the numbers in TensorBoard. Throughput is measured over the interval since
the previous report (wall clock, after the step's results are on the host),
so compilation time shows up only in the first interval.

Scalars written (tags):
    train/loss, train/label_loss, train/rationale_loss, train/accuracy,
    train/learning_rate, train/grad_norm     (whatever the trainer reports)
    perf/steps_per_sec, perf/tokens_per_sec (non-padding input + target),
    perf/mfu                                 (only when peak FLOP/s is given)
    <split>/accuracy ...                     (evaluation metrics)
Only process 0 writes (the others construct a disabled writer).
"""
from __future__ import annotations

import datetime
import sys
import time
from typing import IO, Mapping


class Throughput:
    """Accumulates steps, tokens and FLOPs between two reports."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0
        self.tokens = 0
        self.flops = 0.0

    def add(self, *, tokens: int, flops: float) -> None:
        self.steps += 1
        self.tokens += int(tokens)
        self.flops += float(flops)

    def rates(self, peak_flops: float | None) -> dict[str, float]:
        """steps/s, tokens/s and (with peak_flops) MFU since the last reset."""
        seconds = max(time.perf_counter() - self.start, 1e-9)
        rates = {"steps_per_sec": self.steps / seconds, "tokens_per_sec": self.tokens / seconds}
        if peak_flops:
            rates["mfu"] = self.flops / seconds / peak_flops
        return rates


def steady_mean(rates: list[float]) -> float | None:
    """The mean of per-report rates, the first (compiling) interval left out unless it is the only one."""
    values = rates[1:] if len(rates) > 1 else rates
    return sum(values) / len(values) if values else None


class MetricWriter:
    """Writes scalars to `<log_dir>` (tensorboardX events) and a console line.

    total_steps: the run's last step, for the ETA on the console.
    peak_flops: peak FLOP/s of all devices together, or None for no MFU.
    """

    def __init__(self, log_dir: str | None, *, total_steps: int, peak_flops: float | None = None,
                 enabled: bool = True, stream: IO[str] | None = None) -> None:
        self.total_steps = total_steps
        self.peak_flops = peak_flops
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.throughput = Throughput()
        self._tokens_per_sec: list[float] = []  # one per report_train, this process's
        self._writer = None
        if enabled and log_dir:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=log_dir, flush_secs=30)

    def write_scalars(self, step: int, scalars: Mapping[str, float], *, prefix: str = "") -> None:
        """Writes each scalar as `<prefix>/<name>` at `step`."""
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(f"{prefix}/{name}" if prefix else name, float(value), step)

    def report_train(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Writes train metrics and throughput since the last report; prints the line.

        Returns the throughput figures (steps_per_sec, tokens_per_sec, mfu?).
        """
        rates = self.throughput.rates(self.peak_flops)
        self._tokens_per_sec.append(rates["tokens_per_sec"])
        remaining = max(self.total_steps - step, 0)
        eta = remaining / rates["steps_per_sec"] if rates["steps_per_sec"] > 0 else float("inf")
        self.throughput.reset()
        if not self.enabled:
            return rates
        self.write_scalars(step, metrics, prefix="train")
        self.write_scalars(step, rates, prefix="perf")
        self._print(progress_line(step, self.total_steps, metrics, rates, eta))
        return rates

    def mean_tokens_per_sec(self) -> float | None:
        """The run's throughput for sweep records (distill/sweep.py): `steady_mean` of the reported tokens/s.

        Kept here, so reading it back needs no TensorFlow to parse the event files.
        """
        return steady_mean(self._tokens_per_sec)

    def report_eval(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        """Writes one split's evaluation metrics and prints them."""
        if not self.enabled:
            return
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.write_scalars(step, numeric, prefix=split)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in numeric.items())
        self._print(f"eval step {step} {split}: {shown}")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def progress_line(step: int, total_steps: int, metrics: Mapping[str, float], rates: Mapping[str, float],
                  eta_seconds: float) -> str:
    """`step 40/60 | loss 3.2140 (label 1.2, rationale 4.3) | 2.31 steps/s | ... | ETA 0:00:09`."""
    parts = [f"step {step}/{total_steps}"]
    if "loss" in metrics:
        loss = f"loss {metrics['loss']:.4f}"
        per_task = [f"{name.removesuffix('_loss')} {metrics[name]:.3f}"
                    for name in ("label_loss", "rationale_loss") if name in metrics]
        parts.append(loss + (f" ({', '.join(per_task)})" if per_task else ""))
    if "learning_rate" in metrics:
        parts.append(f"lr {metrics['learning_rate']:.2e}")
    parts.append(f"{rates['steps_per_sec']:.2f} steps/s")
    parts.append(f"{rates['tokens_per_sec']:,.0f} tok/s")
    if "mfu" in rates:
        parts.append(f"MFU {100 * rates['mfu']:.1f}%")
    eta = "?" if eta_seconds == float("inf") else str(datetime.timedelta(seconds=round(eta_seconds)))
    parts.append(f"ETA {eta}")
    return " | ".join(parts)

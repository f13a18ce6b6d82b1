"""What a teacher run used and what it cost: tokens per run and in total, priced.

The cache records, for every stored answer, the tokens the server reported
and the run (hence the backend) that stored it (distill/teacher/cache.py), so
these figures are queries over the prompts of one split: "this run" counts
the answers this run stored, "total" every answer the export is made of,
whichever run paid for it. A cost is an estimate from the user's prices
(USD per million tokens); answers stored by an `openai-batch` run are priced
with the batch discount, every other backend at the full price. Without
prices only tokens are reported.

The figures are printed in the run summary and written beside the export as
`<out>/<dataset>/<split>.teacher_usage.json`.
"""
from __future__ import annotations

import dataclasses
import json
import os

from distill.atomic import write_atomically
from distill.data.readers import dataset_dir

# The backend name of runs billed at the Batch API's discount.
BATCH_BACKEND = "openai-batch"


@dataclasses.dataclass(frozen=True)
class Prices:
    """USD per million prompt / completion tokens; `batch_discount` is the fraction batch runs save."""

    input_per_million: float | None = None
    output_per_million: float | None = None
    batch_discount: float = 0.5

    @property
    def known(self) -> bool:
        return self.input_per_million is not None or self.output_per_million is not None

    def cost(self, prompt_tokens: float, completion_tokens: float, *, batch: bool) -> float:
        """USD for these tokens (a missing price counts as 0)."""
        full = (prompt_tokens * (self.input_per_million or 0.0)
                + completion_tokens * (self.output_per_million or 0.0)) / 1e6
        return full * (1.0 - self.batch_discount) if batch else full


@dataclasses.dataclass(frozen=True)
class Usage:
    """Answers and tokens, priced (cost None without prices)."""

    answers: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {"answers": self.answers, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.tokens,
                "cost_usd": None if self.cost is None else round(self.cost, 6)}


def priced(by_backend: dict[str, tuple[int, int, int]], prices: Prices) -> Usage:
    """`CompletionCache.usage(...)` output summed over backends, each priced at its own rate."""
    answers = sum(a for a, _, _ in by_backend.values())
    prompt_tokens = sum(p for _, p, _ in by_backend.values())
    completion_tokens = sum(c for _, _, c in by_backend.values())
    cost = None
    if prices.known:
        cost = sum(prices.cost(p, c, batch=backend == BATCH_BACKEND) for backend, (_, p, c) in by_backend.items())
    return Usage(answers, prompt_tokens, completion_tokens, cost)


def usage_path(name: str, out: str, split: str) -> str:
    """Beside the split's teacher.jsonl (distill/data/teacher_outputs.py)."""
    return os.path.join(dataset_dir(name, out), f"{split}.teacher_usage.json")


def write_usage(path: str, *, backend: str, model: str, prices: Prices, run: Usage, total: Usage,
                budget_stop: str | None) -> None:
    """The usage report as JSON, atomically (distill/atomic.py)."""
    report = {
        "backend": backend, "model": model,
        "prices_usd_per_million": {"input": prices.input_per_million, "output": prices.output_per_million,
                                   "batch_discount": prices.batch_discount},
        "this_run": run.as_dict(), "total": total.as_dict(), "budget_stop": budget_stop,
    }
    write_atomically(path, json.dumps(report, indent=2) + "\n")


def format_cost(cost: float | None) -> str:
    return "n/a (pass --price-input / --price-output)" if cost is None else f"${cost:.4f}"

"""Spending limits: stop issuing requests before a cost or token budget would be exceeded.

A request's final usage is known only when its answer arrives, so each one
first *reserves* an upper estimate: its prompt tokens estimated from the
prompt's length (4 characters ~ 1 token, +1; real tokenizers give about
3.5-4.5 characters per token on English text) plus the most it may generate
(max_tokens x n). A request is issued only if what is already spent, plus
what is reserved by requests in flight, plus its own reservation stays within
every limit; when its answer arrives the reservation is settled to the usage
the server reported (or kept as spent when the server reports none), and a
failed request gives its reservation back.

The budget covers everything the split's export is made of: answers already
in the cache count as spent (`spent_tokens`, `spent_cost`), so a rerun with
the same limits sends nothing more than the first run left room for, and a
rerun with a higher limit continues where the first one stopped without
sending anything answered again. Once one reservation is refused the budget
is `exhausted` and no further request is issued, even if later settlements
free room: a run stops at a predictable point.
"""
from __future__ import annotations

import dataclasses

from distill.teacher.accounting import Prices
from distill.teacher.backends.base import Prompt, SamplingParams


def estimate_prompt_tokens(prompt: Prompt) -> int:
    """len(text) // 4 + 1: a rough upper estimate of the tokens of a prompt (chat contents joined)."""
    text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
    return len(text) // 4 + 1


@dataclasses.dataclass(frozen=True)
class Reservation:
    prompt_tokens: int
    completion_tokens: int


class Budget:
    """Limits on total tokens and/or estimated cost (None: no limit) for one run's requests."""

    def __init__(self, *, max_cost: float | None = None, max_tokens: int | None = None,
                 prices: Prices = Prices(), batch: bool = False, spent_tokens: int = 0,
                 spent_cost: float = 0.0) -> None:
        self.max_cost, self.max_tokens = max_cost, max_tokens
        self.prices, self.batch = prices, batch
        self.spent_tokens, self.spent_cost = spent_tokens, spent_cost
        self.reserved_tokens, self.reserved_cost = 0, 0.0
        self.exhausted = False

    @property
    def limited(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.prices.cost(prompt_tokens, completion_tokens, batch=self.batch)

    def reserve(self, prompt: Prompt, params: SamplingParams) -> Reservation | None:
        """A reservation for one request of `prompt`, or None (and `exhausted`) when it does not fit."""
        if self.exhausted:
            return None
        reservation = Reservation(estimate_prompt_tokens(prompt), params.max_tokens * params.n)
        tokens = reservation.prompt_tokens + reservation.completion_tokens
        cost = self._cost(reservation.prompt_tokens, reservation.completion_tokens)
        if self.max_tokens is not None and self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens:
            self.exhausted = True
        # A relative tolerance keeps limits that are exact sums of prices from tripping on float rounding.
        if self.max_cost is not None and self.spent_cost + self.reserved_cost + cost > self.max_cost * (1 + 1e-9):
            self.exhausted = True
        if self.exhausted:
            return None
        self.reserved_tokens += tokens
        self.reserved_cost += cost
        return reservation

    def hold(self, prompt: Prompt, params: SamplingParams) -> Reservation:
        """Reserve for a request already submitted (a resumed batch): it counts whatever the limit."""
        reservation = Reservation(estimate_prompt_tokens(prompt), params.max_tokens * params.n)
        self.reserved_tokens += reservation.prompt_tokens + reservation.completion_tokens
        self.reserved_cost += self._cost(reservation.prompt_tokens, reservation.completion_tokens)
        return reservation

    def _unreserve(self, reservation: Reservation) -> None:
        self.reserved_tokens -= reservation.prompt_tokens + reservation.completion_tokens
        self.reserved_cost -= self._cost(reservation.prompt_tokens, reservation.completion_tokens)

    def settle(self, reservation: Reservation | None, prompt_tokens: int | None,
               completion_tokens: int | None) -> None:
        """The answer arrived: spend what it used (the reservation when the server reported nothing)."""
        if reservation is None:
            return
        self._unreserve(reservation)
        if prompt_tokens is None and completion_tokens is None:
            prompt_tokens, completion_tokens = reservation.prompt_tokens, reservation.completion_tokens
        self.spent_tokens += (prompt_tokens or 0) + (completion_tokens or 0)
        self.spent_cost += self._cost(prompt_tokens or 0, completion_tokens or 0)

    def release(self, reservation: Reservation | None) -> None:
        """The request failed: nothing was spent."""
        if reservation is not None:
            self._unreserve(reservation)

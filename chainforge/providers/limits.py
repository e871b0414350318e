"""Throttles: requests/tokens per minute, and the --max-cost budget."""

from __future__ import annotations

import asyncio
import time
from typing import Optional


class RateLimiter:
    """Spaces requests so that at most `rpm` requests and `tpm` tokens start per minute.

    Smooth pacing (no bursts): each request reserves the next free slot on each schedule. The
    token count of a request is an estimate made before sending (prompt chars / 4 + max tokens).
    """

    def __init__(self, rpm: Optional[int] = None, tpm: Optional[int] = None):
        self.rpm, self.tpm = rpm, tpm
        self._next_request = self._next_token = 0.0

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm)

    async def wait(self, tokens: int = 0) -> None:
        now = time.monotonic()
        start = now
        if self.rpm:
            start = max(start, self._next_request)
            self._next_request = start + 60.0 / self.rpm
        if self.tpm and tokens:
            start = max(start, self._next_token)
            self._next_token = start + 60.0 * tokens / self.tpm
        if start > now:
            await asyncio.sleep(start - now)


class CostBudget:
    """Stop sending once spent + the estimate for requests in flight reaches `max_cost` (USD).

    A request's estimate is the mean cost of the rows finished so far (journaled ones included);
    before the first one it is the teacher's bound: prompt chars / 4 input tokens and
    --max-new-tokens (else 4096) output tokens at the teacher's price.
    """

    def __init__(self, max_cost: Optional[float], spent: float = 0.0, rows: int = 0):
        self.max_cost, self.spent, self.rows = max_cost, spent, rows
        self.in_flight = 0.0

    def estimate(self, bound: float) -> float:
        return self.spent / self.rows if self.rows else bound

    def try_reserve(self, estimate: float) -> bool:
        """False once the budget is reached: send nothing more."""
        if self.max_cost is None:
            self.in_flight += estimate
            return True
        # The new request's estimate counts too, so the budget is not overshot by one request.
        if self.spent + self.in_flight + estimate > self.max_cost:
            return False
        self.in_flight += estimate
        return True

    def settle(self, estimate: float, actual: float, row: bool) -> None:
        self.in_flight -= estimate
        self.spent += actual
        self.rows += row

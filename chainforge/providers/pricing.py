"""Prices in USD per 1M tokens and the cost of one request.

The table holds, per model: input (a cache miss), cache-hit input, output. Output tokens include
a reasoner's reasoning tokens and Claude's thinking tokens (both are billed as output). Add or
override entries with `--price MODEL=INPUT,CACHE_HIT,OUTPUT` (repeatable; in --config:
`price: ["m=1,0.1,2"]`); an override is one flat rate, at every hour. A model with no entry costs 0
and the run's first lines say so.

The built-in table is the providers' list prices as their own pages showed them on
`PRICES_AS_OF` (docs/collect-http.md and docs/grounding.md cite the pages; `PRICE_PAGES` is where
to check today's):
- DeepSeek bills by the hour of the request: the off-peak rate is half the peak rate. Peak hours
  are 01:00–04:00 and 06:00–10:00 UTC (09:00–12:00 and 14:00–18:00 Beijing time), Monday to
  Friday; every other hour, weekends included, is off-peak. Chinese public holidays are off-peak
  too, which this table does not know: on those days the cost shown is twice the bill.
- Anthropic: one rate; Message Batches cost half (`chainforge.providers.grounding.discounted`).
  Claude Haiku 5.5's rates are those of prompts up to 100k tokens (a grounding is far shorter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Optional

from chainforge.errors import UsageError

PRICES_AS_OF = "2026-12-06"
PRICE_PAGES = ("https://api-docs.deepseek.com/quick_start/pricing",
               "https://platform.claude.com/docs/en/about-claude/pricing")

# DeepSeek's peak hours, UTC, Monday (0) to Friday (4): [start, end) in hours.
PEAK_HOURS_UTC = ((1, 4), (6, 10))


def is_peak(at: datetime) -> bool:
    """Whether DeepSeek bills `at` (any timezone; naive = UTC) at its peak rate."""
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    return at.weekday() < 5 and any(start <= at.hour < end for start, end in PEAK_HOURS_UTC)


@dataclass(frozen=True)
class Price:
    input: float
    cache_hit: float
    output: float
    off_peak: Optional["Price"] = None  # DeepSeek: the rate outside PEAK_HOURS_UTC

    def at(self, when: Optional[datetime] = None) -> "Price":
        """The rate billed at `when` (default: now): this one, or its off-peak rate."""
        if self.off_peak is None or is_peak(when or datetime.now(timezone.utc)):
            return self
        return self.off_peak

    def cost(self, usage: dict, when: Optional[datetime] = None) -> float:
        """USD for one request's token counts (prompt, cache_hit, completion), at the rate of `when`
        (default: now). `prompt` counts every input token, the cache hits among them."""
        rate = self.at(when)
        prompt, hit = int(usage.get("prompt", 0)), int(usage.get("cache_hit", 0))
        miss = max(prompt - hit, 0)
        return (miss * rate.input + hit * rate.cache_hit + int(usage.get("completion", 0)) * rate.output) / 1e6

    def bound(self, usage: dict) -> float:
        """The cost at the highest rate of the day (budget estimates are never too low)."""
        prompt, hit = int(usage.get("prompt", 0)), int(usage.get("cache_hit", 0))
        return (max(prompt - hit, 0) * self.input + hit * self.cache_hit
                + int(usage.get("completion", 0)) * self.output) / 1e6

    def scaled(self, factor: float) -> "Price":
        off = self.off_peak.scaled(factor) if self.off_peak else None
        return Price(self.input * factor, self.cache_hit * factor, self.output * factor, off)


def _deepseek(peak: tuple[float, float, float]) -> Price:
    return Price(*peak, off_peak=Price(*(p / 2 for p in peak)))


DEFAULT_PRICES = {
    # DeepSeek (api-docs.deepseek.com/quick_start/pricing), peak rate; off-peak is half.
    "deepseek-flash": _deepseek((0.30, 0.006, 1.20)),  # DeepSeek-V4.1-Flash
    "deepseek-v4-flash": _deepseek((0.30, 0.006, 1.20)),  # legacy name, served and billed as deepseek-flash
    "deepseek-v4-pro": _deepseek((1.32, 0.044, 3.96)),
    # Anthropic (platform.claude.com model pages and pricing)
    "claude-sonnet-5-5": Price(2.0, 0.10, 10.0),
    "claude-opus-5-5": Price(4.0, 0.20, 20.0),
    "claude-haiku-5-5": Price(0.10, 0.01, 0.50),
    "claude-haiku-4-5": Price(1.0, 0.10, 5.0),
    "claude-sonnet-5": Price(2.0, 0.20, 10.0),  # legacy
    "claude-opus-5": Price(5.0, 0.50, 25.0),  # legacy
    "claude-sonnet-4-6": Price(3.0, 0.30, 15.0),  # legacy
}

FREE = Price(0.0, 0.0, 0.0)


def parse_price(entry: str) -> tuple[str, Price]:
    """`MODEL=INPUT,CACHE_HIT,OUTPUT` → (model, Price); UsageError naming the bad part."""
    model, sep, numbers = str(entry).partition("=")
    parts = [p.strip() for p in numbers.split(",")]
    if not sep or not model.strip() or len(parts) != 3:
        raise UsageError(f"--price {entry!r}: expected MODEL=INPUT,CACHE_HIT,OUTPUT in USD per 1M tokens, "
                         f"e.g. deepseek-flash=0.30,0.006,1.20")
    values = []
    for name, raw in zip(("INPUT", "CACHE_HIT", "OUTPUT"), parts):
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"--price {entry!r}: {name} must be a non-negative number, got {raw!r}")
        values.append(value)
    return model.strip(), Price(*values)


def price_table(entries: Optional[Iterable[str]]) -> dict[str, Price]:
    table = dict(DEFAULT_PRICES)
    for entry in entries or ():
        model, price = parse_price(entry)
        table[model] = price
    return table


def price_for(table: dict[str, Price], model: Optional[str]) -> Optional[Price]:
    """The entry for `model`, or for a dated name of it (`claude-haiku-4-5-20251001`); another
    suffix is another model (`claude-sonnet-5-6` is not `claude-sonnet-5`) and has no price."""
    if not model:
        return None
    if model in table:
        return table[model]
    base, _, suffix = model.rpartition("-")
    return table.get(base) if suffix.isdigit() and len(suffix) >= 6 else None

"""Prices in USD per 1M tokens and the cost of one request.

The table holds, per model: input (a cache miss), cache-hit input, output. Output tokens include
a reasoner's reasoning tokens (DeepSeek bills them as output). Add or override entries with
`--price MODEL=INPUT,CACHE_HIT,OUTPUT` (repeatable; in --config: `price: ["m=1,0.1,2"]`).
A model with no entry costs 0 and the run's first lines say so.

Defaults: the list prices published by DeepSeek (V3.2 pricing, September 2025: deepseek-chat and
deepseek-reasoner alike) and Anthropic (Claude Sonnet 4.x, Haiku 4.5) at the time of writing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from chainforge.errors import UsageError


@dataclass(frozen=True)
class Price:
    input: float
    cache_hit: float
    output: float

    def cost(self, usage: dict) -> float:
        """USD for one request's token counts (prompt, cache_hit, completion)."""
        prompt, hit = int(usage.get("prompt", 0)), int(usage.get("cache_hit", 0))
        miss = max(prompt - hit, 0)
        return (miss * self.input + hit * self.cache_hit + int(usage.get("completion", 0)) * self.output) / 1e6


DEFAULT_PRICES = {
    "deepseek-reasoner": Price(0.28, 0.028, 0.42),
    "deepseek-chat": Price(0.28, 0.028, 0.42),
    "claude-sonnet-4-6": Price(3.0, 0.30, 15.0),
    "claude-sonnet-4-5": Price(3.0, 0.30, 15.0),
    "claude-haiku-4-5": Price(1.0, 0.10, 5.0),
}

FREE = Price(0.0, 0.0, 0.0)


def parse_price(entry: str) -> tuple[str, Price]:
    """`MODEL=INPUT,CACHE_HIT,OUTPUT` → (model, Price); UsageError naming the bad part."""
    model, sep, numbers = str(entry).partition("=")
    parts = [p.strip() for p in numbers.split(",")]
    if not sep or not model.strip() or len(parts) != 3:
        raise UsageError(f"--price {entry!r}: expected MODEL=INPUT,CACHE_HIT,OUTPUT in USD per 1M tokens, "
                         f"e.g. deepseek-reasoner=0.28,0.028,0.42")
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
    """The entry for `model`, or for the longest known prefix of a dated name (…-20250929)."""
    if not model:
        return None
    if model in table:
        return table[model]
    prefixes = [m for m in table if model.startswith(m + "-")]
    return table[max(prefixes, key=len)] if prefixes else None

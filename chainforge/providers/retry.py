"""What to do with a failed request: retry it, fail that prompt, or stop the whole run.

The rules (the same as the anthropic SDK's, plus DeepSeek's quirks):
- retry: 408, 409, 429, every 5xx (529 is Anthropic's "overloaded"), timeouts, dropped
  connections, and an HTTP 200 whose body is empty or not JSON (DeepSeek under load);
- fail the prompt (a line of `failed.jsonl`, never retried): 400, 403, 404, 422 and other 4xx;
- stop the run (exit 1, resumable): 401 (bad key) and 402 (out of balance) — every other request
  would fail the same way and some would be paid for.

Backoff: exponential from `BACKOFF_BASE_S` with jitter, capped at 30 s; a `Retry-After` header
(seconds or an HTTP date) is honoured up to 60 s.
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import Optional

RETRY_STATUS = frozenset({408, 409, 429})
STOP_STATUS = frozenset({401, 402})
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 60.0


def classify(status: int) -> str:
    """'ok', 'retry', 'stop' or 'fail' for an HTTP status."""
    if 200 <= status < 300:
        return "ok"
    if status in RETRY_STATUS or status >= 500:
        return "retry"
    if status in STOP_STATUS:
        return "stop"
    return "fail"


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """A `Retry-After` value (delta seconds or an HTTP date) in seconds, capped; None if absent/bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return max(0.0, min(seconds, RETRY_AFTER_CAP_S))


def backoff_seconds(attempt: int, retry_after: Optional[str] = None) -> float:
    """How long to wait before retry number `attempt` (0-based)."""
    honoured = retry_after_seconds(retry_after)
    if honoured is not None:
        return honoured
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt)
    return ceiling * random.uniform(0.5, 1.0)

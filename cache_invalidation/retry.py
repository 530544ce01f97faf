"""The one retry policy: how long to wait before attempt ``n + 1``. Pure: settings in, seconds out.

Exponential backoff ``RETRY_BACKOFF * 2**n`` capped at ``RETRY_BACKOFF_MAX``, with full jitter
(a uniform draw between 0 and that) when ``RETRY_JITTER`` is on. The Celery task waits this long
between retries, the outbox relay before a failed row's next delivery, and the dead-letter
queue before a row's next automatic replay. ``floor`` is the least wait a caller accepts: the
dead-letter queue never schedules a replay sooner than a second after a failure, even with
``RETRY_BACKOFF = 0`` (instant task retries, as tests use), so a periodic replay cannot spin.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

#: Backoff doubles at most this many times (2**62 seconds is far past any RETRY_BACKOFF_MAX):
#: an attempt count can come from a message (its retries header).
MAX_EXPONENT = 62


def backoff(attempt: int, config: Mapping[str, Any], *, floor: float = 0.0) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
    attempt = max(0, int(attempt))
    base = max(float(config["RETRY_BACKOFF"]), floor)
    countdown = min(float(config["RETRY_BACKOFF_MAX"]), base * 2 ** min(attempt, MAX_EXPONENT))
    if config["RETRY_JITTER"]:
        countdown = random.uniform(0, countdown)
    return max(floor, countdown)

"""Request budgets: a token bucket per API token or client address, with a bounded number of buckets."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

from partners.errors import RateLimited


class RateLimiter:
    """A token bucket per key (API token id, or client address for requests without a valid token).

    A bucket left alone long enough to refill is the same as no bucket, so it is dropped; at most `max_buckets`
    are kept, the least recently seen going first when there are more (that key starts again with a full burst)."""

    def __init__(self, rate_per_s: float, burst: int, max_buckets: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_buckets, self.clock = rate_per_s, burst, max_buckets, clock
        self.refill_s = burst / rate_per_s  # idle this long, a bucket is full again
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # least recently seen first
        self.lock = threading.Lock()

    def take(self, key: str) -> None:
        now = self.clock()
        with self.lock:
            self._evict(now)
            tokens, last = self.buckets.pop(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            self.buckets[key] = (tokens - 1 if tokens >= 1 else tokens, now)
            if tokens < 1:
                wait = (1 - tokens) / self.rate
                raise RateLimited("rate_limited", f"more than {self.rate:g} requests/s (burst {self.burst}) for this "
                                  f"token: retry in {wait:.1f}s", wait)

    def _evict(self, now: float) -> None:
        """Drop the buckets that have refilled, then the least recently seen beyond the bound (one slot kept free
        for the caller's key)."""
        while self.buckets:
            _, last = next(iter(self.buckets.values()))
            if now - last < self.refill_s and len(self.buckets) < self.max_buckets:
                return
            self.buckets.popitem(last=False)

"""Per-key rate limits: a token bucket per API key, shared by every gunicorn worker.

A key may make ``burst`` requests at once (at most its ``rate``), then ``rate`` a minute. The buckets live in shared memory made by
gunicorn's master before it forks (``share()`` in gunicorn_conf), so two workers cannot each grant the full
rate; a process that was not forked from such a master (tests, ``flask run``) keeps its own buckets.
"""
from __future__ import annotations

import hashlib
import math
import multiprocessing
import time
from dataclasses import dataclass

_SLOTS = 4096  # keys tracked at once; the least recently used slot is reused when all are taken


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after: int  # seconds until one request is allowed again (0 when allowed)


class Buckets:
    def __init__(self, slots: int = _SLOTS, shared: bool = False):
        self.slots = slots
        if shared:  # inherited by forked workers: the same memory in every process
            self._keys = multiprocessing.RawArray("q", slots)
            self._tokens = multiprocessing.RawArray("d", slots)
            self._stamps = multiprocessing.RawArray("d", slots)
            self._lock = multiprocessing.Lock()
        else:
            import threading

            self._keys, self._tokens, self._stamps = [0] * slots, [0.0] * slots, [0.0] * slots
            self._lock = threading.Lock()

    @staticmethod
    def _key(name: str) -> int:
        return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little", signed=True) or 1

    def _slot(self, key: int) -> tuple[int, bool]:
        """The slot holding ``key`` (linear probing), or a free or least recently used one for it."""
        start = key % self.slots
        oldest, oldest_at = start, math.inf
        for step in range(64):
            i = (start + step) % self.slots
            if self._keys[i] == key:
                return i, True
            if self._keys[i] == 0:
                return i, False
            if self._stamps[i] < oldest_at:
                oldest, oldest_at = i, self._stamps[i]
        return oldest, False

    def take(self, name: str, rate_per_min: int, burst: int, now: float | None = None) -> Decision:
        """Spend one token of ``name``'s bucket if it has one. The bucket holds ``burst`` tokens, but never more
        than the rate allows a minute: a key limited to 30 a minute never makes more than 30 at once."""
        per_s, capacity = rate_per_min / 60.0, max(1, min(burst, rate_per_min))
        key = self._key(name)
        with self._lock:
            # The clock is read under the lock: a process that read it earlier but got the lock later would
            # otherwise see time run backwards and lose tokens.
            now = time.monotonic() if now is None else now
            i, known = self._slot(key)
            if known:
                tokens = min(capacity, self._tokens[i] + max(0.0, now - self._stamps[i]) * per_s)
            else:
                self._keys[i], tokens = key, float(capacity)
            self._stamps[i] = now
            if tokens >= 1.0:
                self._tokens[i] = tokens - 1.0
                return Decision(True, int(tokens - 1.0), 0)
            self._tokens[i] = tokens
            return Decision(False, 0, max(1, math.ceil((1.0 - tokens) / per_s)))


_shared: Buckets | None = None


def share() -> None:
    """Called in gunicorn's master before the fork: every worker then uses the same buckets."""
    global _shared
    if _shared is None:
        _shared = Buckets(shared=True)


def buckets() -> Buckets:
    """The master's shared buckets when there are some, else a new set for this process."""
    return _shared if _shared is not None else Buckets()

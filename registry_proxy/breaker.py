"""A circuit breaker per upstream: once a link is known down, stop waiting on it. Pure.

closed ──(threshold consecutive failures)──▶ open ──(open period elapsed)──▶ half-open
half-open ──(probe succeeds)──▶ closed;  half-open ──(probe fails)──▶ open, period doubled

While open, requests do not go upstream at all (tag pulls answer from the cache at
once); the proxy sends one background probe when the breaker turns half-open, so that
no client request ever pays the timeout of a dead link twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 2,
        open_seconds: float = 5.0,
        max_open_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.base_open_seconds = open_seconds
        self.max_open_seconds = max_open_seconds
        self.clock = clock
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._open_seconds = open_seconds

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self.clock() >= self._opened_at + self._open_seconds:
            self._state = State.HALF_OPEN
        return self._state

    @property
    def online(self) -> bool:
        return self.state is State.CLOSED

    def allow_request(self) -> bool:
        """May a client request go upstream now? Only while closed."""
        return self.state is State.CLOSED

    def needs_probe(self) -> bool:
        return self.state is State.HALF_OPEN

    def success(self) -> None:
        self._state = State.CLOSED
        self._failures = 0
        self._open_seconds = self.base_open_seconds

    def failure(self) -> None:
        state = self.state
        self._failures += 1
        if state is State.HALF_OPEN:
            self._open_seconds = min(self._open_seconds * 2, self.max_open_seconds)
            self._trip()
        elif state is State.CLOSED and self._failures >= self.failure_threshold:
            self._trip()

    def _trip(self) -> None:
        self._state = State.OPEN
        self._opened_at = self.clock()

"""Long-poll wake-ups: who waits for which satellite's state, and what wakes them.

A state request with nothing newer to give subscribes *before* it reads the database,
then waits; every change to what the state endpoint answers (a new signed state, a
revocation, a deletion) wakes that satellite's waiters once it has committed: in this
process directly (:class:`groundcontrol.store.Store` calls :meth:`StateWatch.wake`), in
other processes on the same PostgreSQL through ``NOTIFY`` sent inside the committing
transaction and heard by one ``LISTEN`` connection per process. A wake-up is a hint,
never data: the waiter re-reads the database, so a lost, doubled or spurious one costs a
read or a wait until the deadline, never a wrong answer. After the listening connection
comes back from a drop every waiter is woken to re-read, so a publish heard by nobody
during the gap is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator

from groundcontrol.db import Database
from groundcontrol.errors import Unavailable

log = logging.getLogger("groundcontrol.watch")

STATE_CHANNEL = "groundcontrol_state"
# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; names are ASCII
NOTIFY_PAYLOAD_MAX = 7900


def notify_payloads(names: Iterable[str], limit: int = NOTIFY_PAYLOAD_MAX) -> list[str]:
    """Comma-separated satellite names, split so that no payload exceeds ``limit``."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for name in sorted(set(names)):
        if current and size + 1 + len(name) > limit:
            out.append(",".join(current))
            current, size = [], 0
        size += len(name) + (1 if current else 0)
        current.append(name)
    if current:
        out.append(",".join(current))
    return out


class StateWatch:
    """The waiters of one process, bounded in number."""

    def __init__(self, max_waiters: int) -> None:
        self.max_waiters = max_waiters
        self.closed = False
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._count = 0
        self._listener: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return self._count

    def waiting_for(self, name: str) -> int:
        return len(self._waiters.get(name, ()))

    @contextlib.contextmanager
    def subscribe(self, name: str) -> Iterator[asyncio.Event]:
        """An event set by every change to ``name``'s state from now on (and at once
        when the watch is closed); 503 when ``max_waiters`` are already waiting."""
        if self._count >= self.max_waiters:
            raise Unavailable(
                "too many requests are waiting for a state; poll again later",
                code="too_many_waiters",
            )
        event = asyncio.Event()
        if self.closed:
            event.set()
        self._waiters.setdefault(name, set()).add(event)
        self._count += 1
        try:
            yield event
        finally:
            self._count -= 1
            events = self._waiters[name]
            events.discard(event)
            if not events:
                del self._waiters[name]

    def wake(self, names: Iterable[str]) -> None:
        for name in names:
            for event in self._waiters.get(name, ()):
                event.set()

    def wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    def on_notify(self, payload: str) -> None:
        self.wake(n for n in payload.split(",") if n)

    def on_connect(self) -> None:
        """The listening connection is (back) up: what was published meanwhile was heard
        by nobody here, so every waiter re-reads the database."""
        self.wake_all()

    def start_listening(self, db: Database) -> None:
        """Hear the other processes' publishes (PostgreSQL; a no-op task on SQLite)."""
        if self._listener is None:
            self._listener = asyncio.create_task(
                db.listen(STATE_CHANNEL, self.on_notify, self.on_connect),
                name="groundcontrol-state-listener",
            )

    def close(self) -> None:
        """Release every waiter now (server shutdown); later long-polls do not wait."""
        self.closed = True
        self.wake_all()

    async def aclose(self) -> None:
        self.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

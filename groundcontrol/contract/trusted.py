"""TrustedState: a satellite's pinned root chain and the state it has applied.

The object enforces the order python-tuf's ``TrustedMetadataSet`` enforces: roots first,
then states checked against the newest trusted root, every state newer than the last one
accepted. Callers cannot skip a step: there is no way to set a state or a root without
passing it through ``update_root``/``update_state``. It is pure: envelope bytes and the
reference time in, verified documents out; persisting the bytes it accepted is the
caller's job, and the caller must persist them before acting on them.
"""

import hmac
from collections.abc import Iterable, Sequence
from datetime import datetime

from groundcontrol.contract.documents import (
    DEFAULT_ROOT_MAX_BYTES,
    DEFAULT_STATE_MAX_BYTES,
    Root,
    StateDocument,
)
from groundcontrol.contract.errors import ContractError, RollbackError, SignatureError
from groundcontrol.contract.verify import (
    _verify_root_step,
    _verify_state_document,
    state_is_expired,
    verify_root,
    verify_root_chain,
    verify_state,
)


class TrustedState:
    """The pinned root chain and the applied state of one satellite.

    Build it with ``first_use`` at registration (trust on first use, optionally pinned to
    root keyids given out of band) or with ``load`` from what was persisted. ``version``
    is the highest state version ever accepted, which may be above the applied state's
    when the caller persisted it separately (a rollback stays refused across restarts).
    """

    def __init__(
        self,
        satellite: str,
        roots: Sequence[tuple[Root, bytes]],
        state: tuple[StateDocument, bytes] | None,
        version: int,
    ) -> None:
        if not roots:
            raise ValueError("a TrustedState needs at least one root")
        self.satellite = satellite
        self._roots = list(roots)
        self._state = state
        self._version = max(version, state[0].version if state else 0)

    # ------------------------------------------------------------------ construction

    @classmethod
    def first_use(
        cls,
        satellite: str,
        root_bytes: bytes,
        now: datetime,
        required_keyids: Iterable[str] = (),
        max_bytes: int = DEFAULT_ROOT_MAX_BYTES,
    ) -> "TrustedState":
        """Trust a root received at registration (TUF's trust on first use).

        With ``required_keyids`` the root must list each of them among its root keys: the
        operator's fingerprints, given out of band, are what make the root authentic.
        """
        root = verify_root(root_bytes, None, now, max_bytes)
        missing = sorted(set(required_keyids) - set(root.root_keys))
        if missing:
            raise SignatureError(
                f"root: version {root.version} does not list the pinned root key(s)"
                f" {', '.join(k[:16] for k in missing)}"
            )
        return cls(satellite, [(root, root_bytes)], None, 0)

    @classmethod
    def load(
        cls,
        satellite: str,
        root_chain: Sequence[bytes],
        state_bytes: bytes | None,
        version: int,
    ) -> "TrustedState":
        """Rebuild from persisted bytes: the chain as accepted, the applied state, and the
        highest version accepted.

        Signatures are checked again (a data dir edited by hand is refused), expiry is
        not: an expired root or state was trusted when it was accepted, and a satellite
        keeps serving what it has while it reports the expiry.
        """
        if not root_chain:
            raise ContractError("no trusted root stored")
        roots: list[tuple[Root, bytes]] = []
        trusted: Root | None = None
        for envelope in root_chain:
            trusted = _verify_root_step(envelope, trusted, DEFAULT_ROOT_MAX_BYTES)
            roots.append((trusted, envelope))
        state = None
        if state_bytes is not None:
            state = (cls._check_stored_state(satellite, roots, state_bytes), state_bytes)
        return cls(satellite, roots, state, version)

    @staticmethod
    def _check_stored_state(
        satellite: str, roots: Sequence[tuple[Root, bytes]], state_bytes: bytes
    ) -> StateDocument:
        # A state accepted under root N stays valid after root N+1 rotated the state keys:
        # try the newest root first, then older ones.
        error: ContractError | None = None
        for root, _ in reversed(roots):
            try:
                return _verify_state_document(state_bytes, root, satellite, DEFAULT_STATE_MAX_BYTES)
            except SignatureError as exc:
                error = error or exc
        assert error is not None
        raise error

    # ------------------------------------------------------------------------ reading

    @property
    def root(self) -> Root:
        """The newest trusted root."""
        return self._roots[-1][0]

    @property
    def root_chain(self) -> list[bytes]:
        """Every trusted root's envelope bytes, oldest first, as received."""
        return [envelope for _, envelope in self._roots]

    @property
    def state(self) -> StateDocument | None:
        return self._state[0] if self._state else None

    @property
    def state_bytes(self) -> bytes | None:
        return self._state[1] if self._state else None

    @property
    def version(self) -> int:
        """The highest state version ever accepted (0: none)."""
        return self._version

    def state_expired(self, now: datetime) -> bool:
        return self._state is not None and state_is_expired(self._state[0], now)

    def is_current(self, state_bytes: bytes) -> bool:
        """True if ``state_bytes`` is byte for byte the applied state (nothing new)."""
        current = self.state_bytes
        return current is not None and hmac.compare_digest(state_bytes, current)

    # ----------------------------------------------------------------------- updating

    def update_roots(
        self, chain: Sequence[bytes], now: datetime, max_bytes: int = DEFAULT_ROOT_MAX_BYTES
    ) -> Root:
        """Walk the newest root forward through ``chain`` (versions N+1, N+2, … in order).

        All or nothing: if any step fails, the trusted chain is unchanged. As in TUF only
        the final root must be unexpired.
        """
        final = verify_root_chain(chain, self.root, now, max_bytes)
        accepted: list[tuple[Root, bytes]] = []
        current = self.root
        for envelope in chain:
            current = _verify_root_step(envelope, current, max_bytes)
            accepted.append((current, envelope))
        assert not accepted or accepted[-1][0] == final
        self._roots.extend(accepted)
        return final

    def update_state(
        self, state_bytes: bytes, now: datetime, max_bytes: int = DEFAULT_STATE_MAX_BYTES
    ) -> StateDocument:
        """Verify a state against the newest root and make it the applied state.

        Refused (``ContractError`` subclasses, nothing changed): another satellite's
        state, an unknown key or a signature below threshold, a version not above every
        version accepted before (``RollbackError``; also for the applied state's own
        bytes: test ``is_current`` first), an expired or not-yet-valid state.
        """
        doc = verify_state(
            state_bytes,
            self.root,
            self.satellite,
            now,
            self._version or None,
            max_bytes,
        )
        if doc.version <= self._version:  # pragma: no cover - verify_state refuses it
            raise RollbackError(f"state: version {doc.version} is not newer")
        self._state = (doc, state_bytes)
        self._version = doc.version
        return doc

"""Signed state pushed to the central registry as OCI artifacts, with oras-py.

The API (``GET /api/v1/satellites/{name}/state``) stays authoritative. In addition, when
``[state_registry] url`` is set, every published state is pushed as an OCI artifact so
that a satellite can fetch it through the registry path when Ground Control itself is
unreachable:

- ``<registry>/<repository>/<satellite>:v<version>`` and the moving tag ``latest``:
  artifactType :data:`STATE_ARTIFACT_TYPE`; the layers are the state's DSSE envelope
  (``state.json``) and then the root chain (``root-1.json`` … ``root-N.json``), every
  layer of media type :data:`ENVELOPE_MEDIA_TYPE`; the config is the OCI empty
  descriptor; annotations name the satellite, the state version and the root version.
- ``<registry>/<repository>/trust/root:v<N>`` and ``latest``: artifactType
  :data:`ROOT_ARTIFACT_TYPE`, the root chain alone (pushed when the root rotates). A
  satellite name never holds a ``/``, so ``trust/root`` cannot collide with one.

Pushing happens after the publishing transaction has committed, in a background task
(:class:`ArtifactPusher`): a slow or unreachable registry never delays or fails
publishing. What was pushed is recorded in the database (``artifact_pushes``: target →
version), so any Ground Control process sharing the database knows what is missing;
each pass pushes the *latest* state of every satellite whose published version is above
its pushed one. A failure is logged and counted, and the push is retried on the next
publish (and every ``retry_interval`` while anything is pending).

oras-py is synchronous (requests); its calls run in worker threads. Its ``do_request``
retries with sleeps of up to 81 s and has no timeout, so :class:`OrasRegistry` replaces
it with one attempt under a timeout, answering Basic and Bearer challenges.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import oras.provider
import requests

from groundcontrol.config import Config
from groundcontrol.contract.artifact import (
    ANNOTATION_CREATED,
    ANNOTATION_ROOT_VERSION,
    ANNOTATION_SATELLITE,
    ANNOTATION_STATE_VERSION,
    ANNOTATION_TITLE,
    ENVELOPE_MEDIA_TYPE,
    LATEST_TAG,
    ROOT_ARTIFACT_TYPE,
    STATE_ARTIFACT_TYPE,
    STATE_TITLE,
    TRUST_REPOSITORY,
    version_tag,
)
from groundcontrol.registry_credentials import RegistryCredentials
from groundcontrol.sealing import Sealer
from groundcontrol.store import Store
from registry_proxy.digest import Digest
from registry_proxy.upstream import parse_challenges
from registry_proxy.waits import wait_event

log = logging.getLogger("groundcontrol.artifacts")

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
EMPTY_MEDIA_TYPE: Final = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB: Final = b"{}"
PAGE = 200


# --- the artifacts (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return str(Digest.of(self.data))

    def descriptor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Artifact:
    artifact_type: str
    layers: tuple[Blob, ...]
    annotations: dict[str, str]

    @property
    def config(self) -> Blob:
        return Blob(EMPTY_MEDIA_TYPE, EMPTY_BLOB)

    def manifest(self) -> dict[str, Any]:
        return {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": self.artifact_type,
            "config": self.config.descriptor(),
            "layers": [layer.descriptor() for layer in self.layers],
            "annotations": dict(self.annotations),
        }

    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest(), sort_keys=True, separators=(",", ":")).encode()


def _created(now: float) -> str:
    return datetime.fromtimestamp(int(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _root_layers(roots: Sequence[tuple[int, bytes]]) -> tuple[Blob, ...]:
    return tuple(
        Blob(
            ENVELOPE_MEDIA_TYPE,
            envelope,
            {ANNOTATION_TITLE: f"root-{version}.json", ANNOTATION_ROOT_VERSION: str(version)},
        )
        for version, envelope in sorted(roots)
    )


def state_artifact(
    satellite: str,
    version: int,
    envelope: bytes,
    roots: Sequence[tuple[int, bytes]],
    now: float,
) -> Artifact:
    """The state envelope as the first layer, then the root chain, oldest first."""
    state = Blob(
        ENVELOPE_MEDIA_TYPE,
        envelope,
        {
            ANNOTATION_TITLE: STATE_TITLE,
            ANNOTATION_SATELLITE: satellite,
            ANNOTATION_STATE_VERSION: str(version),
        },
    )
    root_version = max((v for v, _ in roots), default=0)
    return Artifact(
        STATE_ARTIFACT_TYPE,
        (state, *_root_layers(roots)),
        {
            ANNOTATION_SATELLITE: satellite,
            ANNOTATION_STATE_VERSION: str(version),
            ANNOTATION_ROOT_VERSION: str(root_version),
            ANNOTATION_CREATED: _created(now),
        },
    )


def root_artifact(roots: Sequence[tuple[int, bytes]], now: float) -> Artifact:
    root_version = max((v for v, _ in roots), default=0)
    return Artifact(
        ROOT_ARTIFACT_TYPE,
        _root_layers(roots),
        {ANNOTATION_ROOT_VERSION: str(root_version), ANNOTATION_CREATED: _created(now)},
    )


@dataclass(frozen=True)
class Target:
    """Where artifacts go: ``host[:port]``, plain HTTP or not, and the repository prefix."""

    host: str
    insecure: bool
    prefix: str

    @classmethod
    def from_config(cls, config: Config) -> Target | None:
        if not config.state_registry_url:
            return None
        parts = urlsplit(config.state_registry_url)
        return cls(parts.netloc, parts.scheme == "http", config.state_registry_repository)

    def repository(self, satellite: str | None) -> str:
        """A satellite's repository; ``None`` is the root chain's."""
        return f"{self.prefix}/{satellite if satellite is not None else TRUST_REPOSITORY}"

    def key(self, satellite: str | None) -> str:
        """What ``artifact_pushes`` records: the registry host and the repository."""
        return f"{self.host}/{self.repository(satellite)}"

    @property
    def key_prefix(self) -> str:
        """:meth:`key` of a satellite without its name (for a join in SQL)."""
        return f"{self.host}/{self.prefix}/"


# --- oras-py, one attempt per request -----------------------------------------------------


class PushError(Exception):
    """The registry refused a push or could not be reached."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class OrasRegistry(oras.provider.Registry):  # type: ignore[misc]
    """oras-py's registry client with a timeout, no sleeping retries, Basic challenges."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool,
        username: str = "",
        password: str = "",
        timeout: float = 10.0,
    ) -> None:
        super().__init__(hostname=host, insecure=insecure)
        self.timeout = timeout
        self._basic: str | None = None
        self._use_basic = False
        if username:
            self._basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.auth.set_basic_auth(username, password)

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        base: dict[str, str] = dict(headers or {})

        def send() -> requests.Response:
            h = dict(base)
            if self._use_basic and self._basic:
                h["Authorization"] = f"Basic {self._basic}"
            elif self.auth.token is not None:
                h.update(self.auth.get_auth_header())
            try:
                response: requests.Response = self.session.request(
                    method,
                    url,
                    data=data,
                    json=json,
                    headers=h,
                    stream=stream,
                    timeout=self.timeout,
                    verify=self._tls_verify,
                )
            except requests.RequestException as exc:
                raise PushError(
                    f"{self.hostname} unreachable: {type(exc).__name__}", unreachable=True
                ) from None
            return response

        response = send()
        if response.status_code != 401:
            return response
        # the project's one challenge parser (several challenges, quoted commas): Basic
        # here, Bearer left to oras-py's token flow
        schemes = {
            c.scheme for c in parse_challenges([response.headers.get("www-authenticate", "")])
        }
        if "bearer" not in schemes and "basic" in schemes:
            if self._basic is None or self._use_basic:
                return response
            self._use_basic = True
            return send()
        base, changed = self.auth.authenticate_request(response, base)
        return send() if changed else response

    def push_artifact(self, repository: str, artifact: Artifact, tags: Sequence[str]) -> str:
        """Upload the blobs (skipping those present), then the manifest under each tag."""
        with tempfile.TemporaryDirectory(prefix="gc-artifact-") as tmp:
            container = self.get_container(f"{self.hostname}/{repository}:{tags[0]}")
            for index, blob in enumerate((artifact.config, *artifact.layers)):
                path = Path(tmp) / str(index)
                path.write_bytes(blob.data)
                response = self.upload_blob(str(path), container, blob.descriptor())
                self._ok(response, f"blob {blob.digest}")
        body = artifact.manifest_bytes()
        for tag in tags:
            container = self.get_container(f"{self.hostname}/{repository}:{tag}")
            response = self.do_request(
                f"{self.prefix}://{container.manifest_url()}",
                "PUT",
                data=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            self._ok(response, f"manifest {repository}:{tag}")
        return str(Digest.of(body))

    @staticmethod
    def _ok(response: requests.Response, what: str) -> None:
        if response.status_code not in (200, 201, 202):
            detail = response.text[:200].strip()
            raise PushError(f"{what}: registry answered {response.status_code} {detail}")


# --- the background pusher ----------------------------------------------------------------


@dataclass
class PushStats:
    pushed: int = 0
    failures: int = 0
    pending: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_push_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pushed": self.pushed,
            "failures": self.failures,
            "pending": self.pending,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_push_at": self.last_push_at,
        }


ClientFactory = Callable[[str, str], OrasRegistry]


class ArtifactPusher:
    """Pushes what is missing from the registry after each publish; never raises to it."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        concurrency: int = 4,
    ) -> None:
        self.store = store
        self.credentials = RegistryCredentials(store, sealer, config)
        self.config = config
        self.target = Target.from_config(config)
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.stats = PushStats()
        self._wake = asyncio.Event()
        self._requested = 0
        self._done = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._local = threading.local()
        self._credentials: tuple[str, str] | None = None

    @property
    def enabled(self) -> bool:
        return self.target is not None

    # -- scheduling

    def notify(self) -> None:
        """Ask for a push pass soon (after a publish, or at start); returns at once."""
        if self.target is None:
            return
        self._requested += 1
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            interval = self.config.state_registry_retry_interval
            retry = interval if self.stats.pending and interval > 0 else None
            await wait_event(self._wake, retry)
            self._wake.clear()
            generation = self._requested
            try:
                await self.sync()
            except Exception:  # a bug must not kill the worker; the API path is unaffected
                log.exception("state artifact push pass failed")
            async with self._changed:
                self._done = max(self._done, generation)
                self._changed.notify_all()

    async def flush(self) -> None:
        """Wait until every pass asked for so far has run (tests, shutdown); callers bound
        the wait with ``asyncio.timeout``."""
        if self._task is None:
            return
        wanted = self._requested
        async with self._changed:
            await self._changed.wait_for(lambda: self._done >= wanted)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- one pass

    async def sync(self, *, states: bool = True) -> PushStats:
        """Push the root chain if it grew, then every satellite's missing latest state."""
        target = self.target
        if target is None:
            return self.stats
        self._credentials = await self.credentials.for_host(target.host)
        pending = 0
        try:
            await self._sync_root(target)
            cursor = ""
            semaphore = asyncio.Semaphore(self.concurrency)

            unreachable: list[PushError] = []

            async def one(name: str) -> bool:
                async with semaphore:
                    if unreachable:  # the registry is down: leave the rest for next time
                        return False
                    try:
                        return await self._push_state(target, name)
                    except PushError as exc:
                        unreachable.append(exc)
                        return False

            while states:
                page = await self._pending_page(target, cursor)
                if not page:
                    break
                cursor = page[-1]
                results = await asyncio.gather(*(one(n) for n in page))
                pending += results.count(False)
                if unreachable:
                    raise unreachable[0]
        except PushError as exc:
            # unreachable: stop this pass; what is left is retried on the next one
            pending = max(pending, 1)
            self._failed(str(exc))
        self.stats.pending = pending
        return self.stats

    def _failed(self, message: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = message
        self.stats.last_error_at = self.clock()
        log.warning("state artifact push failed (retried on the next publish): %s", message)

    def _client(self, target: Target) -> OrasRegistry:
        creds = self._credentials or ("", "")
        client: OrasRegistry | None = getattr(self._local, "client", None)
        if client is None or getattr(self._local, "creds", None) != creds:
            client = OrasRegistry(
                target.host,
                insecure=target.insecure,
                username=creds[0],
                password=creds[1],
                timeout=self.config.registry_timeout,
            )
            self._local.client, self._local.creds = client, creds
        return client

    async def _push(
        self, target: Target, repository: str, artifact: Artifact, tags: list[str]
    ) -> str:
        def run() -> str:
            return self._client(target).push_artifact(repository, artifact, tags)

        return await asyncio.to_thread(run)

    async def _pending_page(self, target: Target, after: str) -> list[str]:
        async with self.store.transaction() as q:
            rows = await q.tx.fetchall(
                "SELECT s.name FROM satellites s "
                "LEFT JOIN artifact_pushes p ON p.target = ? || s.name "
                "WHERE s.revoked_at IS NULL AND s.published_version > 0 AND s.name > ? "
                "AND (p.version IS NULL OR p.version < s.published_version) "
                "ORDER BY s.name LIMIT ?",
                target.key_prefix,
                after,
                PAGE,
            )
        return [str(r["name"]) for r in rows]

    async def _roots(self) -> list[tuple[int, bytes]]:
        async with self.store.transaction() as q:
            rows = await q.tx.fetchall("SELECT version, envelope FROM roots ORDER BY version")
        return [(int(r["version"]), str(r["envelope"]).encode()) for r in rows]

    async def _record(self, key: str, version: int, digest: str) -> None:
        now = int(self.clock())
        async with self.store.transaction() as q:
            await q.tx.execute(
                "INSERT INTO artifact_pushes (target, version, digest, pushed_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (target) DO UPDATE SET "
                "version = excluded.version, digest = excluded.digest, "
                "pushed_at = excluded.pushed_at WHERE artifact_pushes.version < excluded.version",
                key,
                version,
                digest,
                now,
            )
        self.stats.pushed += 1
        self.stats.last_push_at = now

    async def _pushed_version(self, key: str) -> int:
        async with self.store.transaction() as q:
            row = await q.tx.fetchone("SELECT version FROM artifact_pushes WHERE target = ?", key)
        return int(row["version"]) if row else 0

    async def _sync_root(self, target: Target) -> None:
        roots = await self._roots()
        if not roots:
            return
        latest = roots[-1][0]
        key = target.key(None)
        if await self._pushed_version(key) >= latest:
            return
        artifact = root_artifact(roots, self.clock())
        repository = target.repository(None)
        digest = await self._push(target, repository, artifact, [version_tag(latest), LATEST_TAG])
        await self._record(key, latest, digest)
        log.info("pushed root chain v%d to %s/%s", latest, target.host, repository)

    async def _push_state(self, target: Target, name: str) -> bool:
        """True when pushed (or nothing to push); False on a refusal (counted, logged).
        An unreachable registry raises :class:`PushError` to end the pass."""
        async with self.store.transaction() as q:
            latest = await q.latest_state(name)
            chain = await q.tx.fetchall("SELECT version, envelope FROM roots ORDER BY version")
        if latest is None:
            return True
        version = int(latest["version"])
        roots = [(int(r["version"]), str(r["envelope"]).encode()) for r in chain]
        artifact = state_artifact(name, version, latest["envelope"].encode(), roots, self.clock())
        repository = target.repository(name)
        try:
            digest = await self._push(
                target, repository, artifact, [version_tag(version), LATEST_TAG]
            )
        except PushError as exc:
            if exc.unreachable:
                raise
            self._failed(f"{repository}: {exc}")
            return False
        except Exception as exc:  # oras-py raises ValueError and friends on bad answers
            self._failed(f"{repository}: {type(exc).__name__}: {exc}")
            return False
        await self._record(target.key(name), version, digest)
        log.debug("pushed %s:v%d", repository, version)
        return True

"""USB bundles for air-gapped satellites, and the reports they send back.

``export_bundle`` writes one satellite's current signed state, its root chain, the
signed ack list of the check-ins already ingested and every blob and manifest the state names into
a standard OCI image layout (see ``registry_proxy.ocilayout`` and
``groundcontrol.contract.bundle``). Blobs stream from the central registry through the
one registry client, are hashed as they are written and become visible under their
digest only when the digest matched; an export cut short and run again copies only what
is missing. The satellite files are written last, so a bundle without them is visibly
incomplete.

``import_reports`` ingests the check-ins a stick carried back through the same
idempotent ingest as the online endpoint, and keeps the satellite's inventory for the
next delta export.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import secrets
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from groundcontrol import checkins
from groundcontrol.config import Config
from groundcontrol.contract import ContractError, TrustedState, sign_acks
from groundcontrol.contract.bundle import (
    ACKS_FILE,
    CHECKINS_FILE,
    INVENTORY_FILE,
    ROOTS_DIR,
    STATE_FILE,
    Acks,
    Inventory,
)
from groundcontrol.errors import BadRequest, NotFound, UpstreamError
from groundcontrol.services import Services
from registry_proxy.digest import Digest
from registry_proxy.durable import atomic_write, fsync_dir, publish
from registry_proxy.errors import RegistryError
from registry_proxy.manifest import Manifest, parse_manifest
from registry_proxy.ocilayout import (
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    Node,
    blob_path,
    index_document,
    ref_name,
    walk,
)
from registry_proxy.platforms import PlatformMissing
from registry_proxy.progress import Progress
from registry_proxy.referrers import registry_referrers
from registry_proxy.upstream import UpstreamClient
from registry_proxy.upstream import UpstreamError as RegistryClientError

log = logging.getLogger("groundcontrol.bundle")


MAX_REPORTS_BYTES = 256 * 1024 * 1024


@dataclass
class ExportResult:
    satellite: str
    state_version: int
    images: int = 0
    referrers: int = 0  # manifests that refer to an image (signatures, SBOMs, …)
    blobs_written: int = 0
    blobs_present: int = 0
    blobs_skipped: int = 0  # held by the satellite (delta)
    bytes_written: int = 0

    def to_dict(self) -> dict[str, int | str]:
        return dict(self.__dict__)


def inventory_path(config: Config, satellite: str) -> Path:
    """Where the last inventory a satellite carried back is kept (``--since-checkins``)."""
    return (
        config.data_dir / "inventories" / f"{hashlib.sha256(satellite.encode()).hexdigest()}.json"
    )


async def export_bundle(
    services: Services,
    satellite: str,
    output: Path,
    *,
    held: frozenset[str] = frozenset(),
    tar: int | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """``tar``: write one tar at ``output`` (0) or parts of at most that many bytes."""
    async with services.store.transaction() as q:
        row = await q.latest_state(satellite)
        if row is None:
            raise NotFound(f"no state published for satellite {satellite}", code="state_not_found")
        envelope = str(row["envelope"]).encode()
        roots = [(v, await q.root(v)) for v in await q.root_versions()]
        floor, seqs = await q.checkin_seqs(satellite)
        _root, state_keys = await services.signer.state_keys(q)
    chain = [(v, text.encode()) for v, text in roots if text is not None]
    try:
        # the same checks a satellite makes (bar expiry and version): never ship a state
        # that the chain does not sign
        trust = TrustedState.load(satellite, [e for _, e in chain], envelope, 0)
    except ContractError as exc:
        raise BadRequest(
            f"state of {satellite} does not verify: {exc}", code="state_invalid"
        ) from None
    doc = trust.state
    assert doc is not None
    result = ExportResult(satellite, doc.version)
    signed = [(f"{ROOTS_DIR}/{version}.json", data) for version, data in chain]
    # signed, bound to this satellite and to the bundle's state: a forged list would make
    # the satellite forget check-ins never received
    acks = Acks(satellite, floor, frozenset(seqs), doc.version)
    signed.append((ACKS_FILE, sign_acks(acks, state_keys).to_json()))
    signed.append((STATE_FILE, envelope))  # last: its presence marks a whole bundle
    sink: _Sink
    if tar is None:
        await asyncio.to_thread(output.mkdir, parents=True, exist_ok=True)
        sink = _DirSink(output)
    else:
        sink = _TarSink(PartsWriter(output, tar), signed)
    config = services.config
    client = UpstreamClient(
        "central",
        config.registry_url,
        username=config.registry_username or None,
        password=config.registry_password or None,
    )
    written: set[Digest] = set()

    async def fetch(repository: str, digest: Digest) -> bytes:
        body = sink.manifest(digest)
        if body is None:
            body = (await client.get_manifest(repository, str(digest))).body  # verified there
            sink.put_manifest(digest, body)
        return body

    async def read_manifest(repository: str, digest: Digest) -> Manifest:
        return parse_manifest(await fetch(repository, digest), None)

    entries: dict[str, tuple[str, str, str, int]] = {}
    to_copy: list[Node] = []  # walked first: the progress line knows the total

    async def carry(
        repository: str, digest: Digest, media_type: str, size: int, platforms: tuple[str, ...]
    ) -> list[Digest]:
        """Walks one image (or referrer) into the bundle; returns its manifests."""
        manifests = []
        async for node in walk(repository, digest, media_type, size, fetch, platforms):
            if node.is_manifest:  # written by fetch
                manifests.append(node.digest)
                continue
            if node.digest in written:
                continue
            written.add(node.digest)
            if str(node.digest) in held:
                result.blobs_skipped += 1
            elif sink.has(node.digest, node.size):
                result.blobs_present += 1
            else:
                to_copy.append(node)
        return manifests

    def entry(name: str, digest: Digest, media_type: str, size: int) -> None:
        entries.setdefault(name, (name, str(digest), media_type, size))

    try:
        for image in doc.images:
            digest = Digest.parse(image.digest)
            subjects = await carry(
                image.repository, digest, image.media_type, image.size, image.platforms
            )
            name = ref_name(image.repository, image.tag, image.digest)
            entry(name, digest, image.media_type, image.size)
            result.images += 1
            # what refers to the image or a kept child (signatures, SBOMs, attestations),
            # with the tags that name it, so that a check of them works offline
            for subject in subjects:
                reader = functools.partial(read_manifest, image.repository)
                found = await registry_referrers(client, image.repository, subject, reader)
                for referrer in found:
                    body = await fetch(image.repository, referrer.digest)
                    kind = parse_manifest(body, None).media_type
                    await carry(image.repository, referrer.digest, kind, len(body), ())
                    name = ref_name(image.repository, referrer.tag, str(referrer.digest))
                    result.referrers += name not in entries
                    entry(name, referrer.digest, kind, len(body))
        if progress is not None:
            progress.expect(sum(node.size for node in to_copy))
        for node in to_copy:
            async with client.open_blob(node.repository, node.digest) as blob:
                result.bytes_written += await sink.put_blob(
                    node.digest, node.size, blob.chunks(), progress
                )
            result.blobs_written += 1
        sink.finish(index_document(list(entries.values())), signed)
        if progress is not None:
            progress.complete()
    except RegistryClientError as exc:
        sink.abort()
        raise UpstreamError(f"central registry: {exc}") from None
    except RegistryError as exc:
        sink.abort()
        raise UpstreamError(f"central registry: {exc.message}", code="digest_mismatch") from None
    except PlatformMissing as exc:
        sink.abort()
        raise BadRequest(f"state of {satellite}: {exc}", code="state_invalid") from None
    except BaseException:
        sink.abort()
        raise
    finally:
        await client.aclose()
    return result


def _mismatch(digest: Digest, actual: Digest, done: int) -> UpstreamError:
    return UpstreamError(
        f"blob {digest} arrived as {actual} ({done} bytes)", code="digest_mismatch"
    )


class _Sink:
    """Where an export writes: a bundle directory, or a tar stream (split or not)."""

    def manifest(self, digest: Digest) -> bytes | None:
        return None

    def put_manifest(self, digest: Digest, body: bytes) -> None:
        raise NotImplementedError

    def has(self, digest: Digest, size: int) -> bool:
        return False

    async def put_blob(
        self,
        digest: Digest,
        size: int,
        chunks: AsyncIterator[bytes],
        progress: Progress | None,
    ) -> int:
        raise NotImplementedError

    def finish(self, index: bytes, signed: list[tuple[str, bytes]]) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        pass


class _DirSink(_Sink):
    """A directory: each blob hashed as written and published under its digest only on
    a match, so an export run again on the same directory copies only what is missing."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def manifest(self, digest: Digest) -> bytes | None:
        path = blob_path(self.root, digest)
        if path.exists():
            body = path.read_bytes()
            if Digest.of(body, digest.algorithm) == digest:
                return body
            path.unlink()
        return None

    def put_manifest(self, digest: Digest, body: bytes) -> None:
        _publish_bytes(blob_path(self.root, digest), body)

    def has(self, digest: Digest, size: int) -> bool:
        path = blob_path(self.root, digest)
        return path.exists() and path.stat().st_size == size

    async def put_blob(
        self,
        digest: Digest,
        size: int,
        chunks: AsyncIterator[bytes],
        progress: Progress | None,
    ) -> int:
        path = blob_path(self.root, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        hasher = digest.hasher()
        done = 0
        try:
            with await asyncio.to_thread(open, tmp, "wb") as f:
                async for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress.advance(len(chunk), str(digest))
                f.flush()
                os.fsync(f.fileno())
            actual = Digest(digest.algorithm, hasher.hexdigest())
            if actual != digest or done != size:
                raise _mismatch(digest, actual, done)
            publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return done

    def finish(self, index: bytes, signed: list[tuple[str, bytes]]) -> None:
        atomic_write(self.root / LAYOUT_FILE, LAYOUT_VERSION + b"\n")
        atomic_write(self.root / INDEX_FILE, index)
        for name, data in signed:
            atomic_write(self.root / name, data)


PARTIAL = ".partial"


class PartsWriter:
    """One output file, or with ``part_size`` the parts PATH.000, PATH.001, … of at most
    that many bytes each (FAT32 holds files below 4 GiB). Each is written as
    ``<name>.partial`` and takes its name only when the whole tar is written, so an export
    cut short (kill -9, a full stick) never leaves what looks like a bundle; parts of an
    earlier export beyond the new last one are removed then."""

    def __init__(self, path: Path, part_size: int) -> None:
        self.path = path
        self.part_size = part_size
        self.parts: list[Path] = []
        self._file: BinaryIO | None = None
        self._left = 0
        path.parent.mkdir(parents=True, exist_ok=True)

    def _next(self) -> BinaryIO:
        if self._file is not None:
            self._close_part()
        name = self.path if self.part_size == 0 else Path(f"{self.path}.{len(self.parts):03d}")
        self.parts.append(name)
        self._file = open(_partial(name), "wb")  # noqa: SIM115 (closed by _close_part)
        self._left = self.part_size or -1
        return self._file

    def _close_part(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            out = self._file if self._file is not None and self._left != 0 else self._next()
            n = len(view) if self._left < 0 else min(len(view), self._left)
            out.write(view[:n])
            view = view[n:]
            if self._left > 0:
                self._left -= n

    def close(self) -> None:
        if self._file is not None:
            self._close_part()
        for part in self.parts:
            os.replace(_partial(part), part)
        if self.part_size:
            number = len(self.parts)
            while (stale := Path(f"{self.path}.{number:03d}")).exists():
                stale.unlink()
                number += 1
        fsync_dir(self.path.parent)

    def remove(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for part in self.parts:
            _partial(part).unlink(missing_ok=True)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL)


class _TarSink(_Sink):
    """One tar streamed as it is made (no temporary copy): the signed files first, so an
    import verifies the state before it reads a blob, then every manifest and blob, the
    index last. A blob that does not hash to its digest aborts the whole tar."""

    def __init__(self, out: PartsWriter, signed: list[tuple[str, bytes]]) -> None:
        self.out = out
        self._manifests: dict[Digest, bytes] = {}
        self._file(LAYOUT_FILE, LAYOUT_VERSION + b"\n")
        for name, data in signed:
            self._file(name, data)

    def _header(self, name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        self.out.write(info.tobuf(format=tarfile.PAX_FORMAT))

    def _pad(self, size: int) -> None:
        self.out.write(b"\0" * (-size % tarfile.BLOCKSIZE))

    def _file(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        self.out.write(data)
        self._pad(len(data))

    def manifest(self, digest: Digest) -> bytes | None:
        return self._manifests.get(digest)

    def put_manifest(self, digest: Digest, body: bytes) -> None:
        self._manifests[digest] = body
        self._file(f"blobs/{digest.algorithm}/{digest.encoded}", body)

    async def put_blob(
        self,
        digest: Digest,
        size: int,
        chunks: AsyncIterator[bytes],
        progress: Progress | None,
    ) -> int:
        self._header(f"blobs/{digest.algorithm}/{digest.encoded}", size)
        hasher = digest.hasher()
        done = 0
        async for chunk in chunks:
            if done + len(chunk) > size:
                raise _mismatch(digest, Digest(digest.algorithm, "?"), done + len(chunk))
            hasher.update(chunk)
            self.out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress.advance(len(chunk), str(digest))
        actual = Digest(digest.algorithm, hasher.hexdigest())
        if actual != digest or done != size:
            raise _mismatch(digest, actual, done)
        self._pad(size)
        return done

    def finish(self, index: bytes, signed: list[tuple[str, bytes]]) -> None:
        self._file(INDEX_FILE, index)
        self.out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self.out.close()

    def abort(self) -> None:
        self.out.remove()


def _publish_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    publish(tmp, path)


# --- reports carried back -------------------------------------------------------------


@dataclass
class ReportsResult:
    satellites: dict[str, dict[str, object]] = field(default_factory=dict)


async def import_reports(services: Services, directory: Path, now: float) -> ReportsResult:
    """Ingest every ``<satellite>/checkins.json`` under ``directory`` (online rules,
    idempotent), and keep each ``<satellite>/inventory.json`` for delta exports."""
    result = ReportsResult()
    config = services.config
    found = await asyncio.to_thread(_report_dirs, directory)
    for sub, has_checkins, has_inventory in found:
        name = sub.name
        checkin_file = sub / CHECKINS_FILE
        inventory_file = sub / INVENTORY_FILE
        entry: dict[str, object] = {}
        if has_checkins:
            body = _read_capped(checkin_file)
            envelopes = checkins.split_batch(body)
            ingested = await checkins.ingest(
                services.store,
                name,
                envelopes,
                now,
                config.checkins_kept,
                offline_after=config.offline_after,
                late_after=config.stale_after,
            )
            entry.update(ingested.to_dict())
        if has_inventory:
            data = _read_capped(inventory_file)
            inventory = read_inventory(data, name, str(inventory_file), "reports_invalid")
            async with services.store.transaction() as q:
                await q.satellite(name)  # refuses an unknown satellite
            atomic_write(inventory_path(config, name), data)
            entry["inventory_blobs"] = len(inventory.blobs)
        result.satellites[name] = entry
    if not found:
        raise NotFound(f"{directory}: no reports found", code="reports_not_found")
    return result


def _report_dirs(directory: Path) -> list[tuple[Path, bool, bool]]:
    """Each satellite's directory with reports in it: (path, check-ins?, inventory?)."""
    if not directory.is_dir():
        raise NotFound(f"{directory}: no such directory", code="reports_not_found")
    found = []
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        has = ((sub / CHECKINS_FILE).is_file(), (sub / INVENTORY_FILE).is_file())
        if any(has):
            found.append((sub, *has))
    return found


def _read_capped(path: Path) -> bytes:
    if path.stat().st_size > MAX_REPORTS_BYTES:
        raise BadRequest(f"{path}: larger than {MAX_REPORTS_BYTES} bytes", code="reports_invalid")
    return path.read_bytes()


def read_inventory(data: bytes, satellite: str, where: str, code: str) -> Inventory:
    """``satellite``'s inventory from a file's bytes; ``code`` names a refusal."""
    try:
        inventory = Inventory.from_bytes(data)
    except ContractError as exc:
        raise BadRequest(f"{where}: {exc}", code=code) from None
    if inventory.satellite != satellite:
        raise BadRequest(
            f"{where}: the inventory of {inventory.satellite}, not {satellite}", code=code
        )
    return inventory


def held_blobs(data: bytes, satellite: str, where: str) -> frozenset[str]:
    """The digests an inventory file says ``satellite`` holds."""
    return read_inventory(data, satellite, where, "inventory_invalid").blobs

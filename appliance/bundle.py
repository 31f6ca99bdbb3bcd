"""Importing a USB bundle, and exporting the reports a stick carries back.

The guarantee: a bundle's state is applied only when it passed the same checks as a
state from Ground Control (root chain, signatures and thresholds, this satellite's
name, a version above every accepted one, expiry) *and* every blob and manifest it
names is in the store, verified. The state is checked first, on a copy of the trusted
state, before anything is written: a foreign, replayed, older or unsigned bundle
changes nothing. Then every blob streams into the store hashed on the way (a file is
published under its digest only on a match, by the store's own commit), and blobs the
store already holds are not copied again, which is what makes an import cut by kill -9
or a pulled stick resumable. Each image goes under the repository the state's routing
gives it (its signed upstreams), where serving and replication look for it. A bundle
is a directory, or a tar (split or not) read once in order: its signed files come first,
so the state is checked before a blob is read. Manifests and tags go in only when every
blob is present,
and last the state goes to its owner: the running daemon's ``FleetAgent`` (the same
verify → persist → act path as a downloaded state, source "bundle"), or, on a stopped
data dir, the fleet database, where the daemon finds it at start.

The ack list in the bundle removes from the outbox the check-ins Ground Control has
ingested from an earlier stick, once it verifies: signed by the state keys of the root the
state was checked against, for this satellite and the bundle's state version. One that
does not verify clears nothing (a warning; the state may still apply): a forged list
would make the satellite forget check-ins Ground Control never got.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import secrets
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.fleetdb import FleetDB
from appliance.identity import IdentityError, load_identity
from groundcontrol.contract import (
    ContractError,
    ImageDescriptor,
    Root,
    StateDocument,
    TrustedState,
    verify_acks,
)
from groundcontrol.contract.bundle import (
    ACKS_FILE,
    CHECKINS_FILE,
    INVENTORY_FILE,
    ROOTS_DIR,
    STATE_FILE,
    Acks,
    Inventory,
    checkins_body,
)
from registry_proxy.digest import Digest
from registry_proxy.durable import atomic_write
from registry_proxy.errors import RegistryError
from registry_proxy.manifest import MAX_MANIFEST_BYTES, Descriptor, parse_manifest
from registry_proxy.ocilayout import INDEX_FILE, Node, blob_path, read_index, ref_name, walk
from registry_proxy.platforms import PlatformMissing
from registry_proxy.progress import Progress
from registry_proxy.referrers import is_referrer_tag
from registry_proxy.routing import Router
from registry_proxy.store import ContentStore

if TYPE_CHECKING:
    from appliance.fleet import FleetAgent

log = logging.getLogger("satellite.bundle")

READ_CHUNK = 4 * 1024 * 1024
MAX_ROOTS = 1000

# (roots newer than the trusted chain, the state envelope) -> outcome, message
HandOver = Callable[[list[bytes], bytes], Awaitable[tuple[str, str]]]
RouterFor = Callable[[StateDocument], Router]


BUNDLE_PIN = "bundle"  # pins of the blobs an incomplete import brought, until applied
# what refers to the state's images, as the last complete bundle brought it: replication
# pins what it finds online, and cannot ask an upstream an air-gapped site never reaches
REFERRERS_PIN = "referrers"


class BundleError(Exception):
    """The bundle is refused; the message is the one reason, for the operator."""


@dataclass
class ImportResult:
    outcome: str  # "applied", "current", "incomplete"
    state_version: int
    blobs_imported: int = 0
    blobs_present: int = 0
    bytes_imported: int = 0
    manifests: int = 0
    referrers: int = 0
    missing: list[str] = field(default_factory=list)
    acked: int = 0
    message: str = ""
    warning: str = ""  # e.g. an ack list that does not verify (the state may still apply)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- reading and checking a bundle (no writes) ------------------------------------------


def read_signed(root: Path) -> tuple[list[tuple[int, bytes]], bytes]:
    """The root chain (oldest first) and the state envelope a bundle carries."""
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory")
    state_path = root / STATE_FILE
    if not state_path.is_file():
        raise BundleError(f"{root}: not a complete bundle ({STATE_FILE} is missing)")
    envelope = _read_small(state_path, 8 * 1024 * 1024)
    roots: list[tuple[int, bytes]] = []
    roots_dir = root / ROOTS_DIR
    names = sorted(roots_dir.iterdir()) if roots_dir.is_dir() else []
    for path in names[:MAX_ROOTS]:
        stem = path.name.removesuffix(".json")
        if not stem.isdigit() or path.name == stem:
            raise BundleError(f"{path}: not a root file (expected <version>.json)")
        roots.append((int(stem), _read_small(path, 512 * 1024)))
    roots.sort()
    return roots, envelope


def _read_small(path: Path, cap: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise BundleError(f"{path}: larger than {cap} bytes")
    return data


@dataclass(frozen=True)
class Checked:
    """A bundle's state, verified: the document, the roots newer than the trusted chain,
    whether it is the state already applied, and the root it was checked against."""

    doc: StateDocument
    newer: list[bytes]
    current: bool
    root: Root


def check_state(
    trust: TrustedState, roots: list[tuple[int, bytes]], envelope: bytes, now: datetime
) -> Checked:
    """Pure: the state the bundle carries, verified as a state from Ground Control would
    be, on a copy of ``trust`` (which is left unchanged)."""
    copy = TrustedState.load(trust.satellite, trust.root_chain, trust.state_bytes, trust.version)
    newer = [data for version, data in roots if version > copy.root.version]
    try:
        if copy.is_current(envelope):
            assert copy.state is not None
            return Checked(copy.state, newer, True, copy.root)
        if newer:
            copy.update_roots(newer, now)
        return Checked(copy.update_state(envelope, now), newer, False, copy.root)
    except ContractError as exc:
        raise BundleError(f"state refused: {type(exc).__name__}: {exc}") from None


def check_acks(data: bytes | None, checked: Checked, satellite: str) -> Acks | None:
    """Pure: the bundle's ack list, verified against the root the state was checked
    against, for this satellite and the bundle's state version; None when there is none.
    ``BundleError`` (the reason) for one that does not verify: it clears nothing, and the
    state may still apply."""
    if data is None:
        return None
    try:
        acks = verify_acks(data, checked.root, satellite)
    except ContractError as exc:
        raise BundleError(f"{ACKS_FILE} refused: {type(exc).__name__}: {exc}") from None
    if acks.state_version != checked.doc.version:
        raise BundleError(
            f"{ACKS_FILE} refused: it was sent with state version {acks.state_version},"
            f" this bundle carries version {checked.doc.version}"
        )
    return acks


# --- copying content into the store ------------------------------------------------------


def _copy_verified(src: Path, dst: Path, digest: Digest, size: int) -> tuple[Digest, int]:
    """Copy ``src`` to ``dst`` hashing the bytes as they pass; fsynced."""
    hasher = digest.hasher()
    done = 0
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while chunk := fin.read(READ_CHUNK):
            hasher.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[fout.write(view) or 0 :]
            done += len(chunk)
            if done > size:
                break
        os.fsync(fout.fileno())
    return Digest(digest.algorithm, hasher.hexdigest()), done


@dataclass
class _Importer:
    root: Path
    store: ContentStore
    progress: Progress | None
    result: ImportResult
    manifests: dict[Digest, tuple[str, bytes, str]] = field(default_factory=dict)
    done: set[Digest] = field(default_factory=set)
    referred: set[Digest] = field(default_factory=set)  # the referrers' manifests and blobs

    async def fetch(self, repository: str, digest: Digest) -> bytes:
        """A manifest from the bundle, verified; else the store's copy."""
        path = blob_path(self.root, digest)
        if path.is_file():
            body = _read_small(path, MAX_MANIFEST_BYTES)
            actual = Digest.of(body, digest.algorithm)
            if actual != digest:
                raise BundleError(
                    f"manifest {digest} in the bundle is damaged (it hashes to {actual})"
                )
            return body
        body_or_none = await asyncio.to_thread(self.store.blobs.read_bytes, digest)
        if body_or_none is None or Digest.of(body_or_none, digest.algorithm) != digest:
            raise _Missing(digest)
        return body_or_none

    async def image(self, repository: str, image: ImageDescriptor) -> bool:
        """Every blob of one image (of the platforms it keeps) into the store; True when
        nothing is missing."""
        digest = Digest.parse(image.digest)
        return await self.content(repository, digest, image.media_type, image.size, image.platforms)

    async def referrer(
        self, repository: str, entry: Descriptor, tag: str | None, subjects: frozenset[Digest]
    ) -> bool:
        """A manifest the bundle's index names beside the images, taken when it refers to
        one of ``subjects`` (this repository's imported manifests): by its tag (the
        referrers tag schema's, cosign's) or by its ``subject``. False: not taken."""
        if tag is not None:
            if not is_referrer_tag(tag, subjects):
                return False
        else:
            try:
                manifest = parse_manifest(await self.fetch(repository, entry.digest), None)
            except (_Missing, RegistryError):
                return False
            if manifest.subject is None or manifest.subject.digest not in subjects:
                return False
        return await self.content(
            repository, entry.digest, entry.media_type, entry.size, (), self.referred
        )

    async def content(
        self,
        repository: str,
        digest: Digest,
        media_type: str,
        size: int,
        platforms: tuple[str, ...],
        into: set[Digest] | None = None,
    ) -> bool:
        """Every blob of one manifest or index into the store (of ``platforms``); True when
        nothing is missing. ``into`` collects the digests walked."""
        complete = True
        try:
            async for node in walk(repository, digest, media_type, size, self.fetch, platforms):
                if into is not None:
                    into.add(node.digest)
                if node.is_manifest:
                    body = await self.fetch(repository, node.digest)
                    self.manifests[node.digest] = (repository, body, node.media_type)
                    if self.progress is not None:
                        self.progress.advance(len(body))
                elif not await self.blob(node):
                    complete = False
        except _Missing as exc:
            self.result.missing.append(f"{repository}@{exc.digest} (manifest)")
            return False
        except RegistryError as exc:
            raise BundleError(f"{repository}@{digest}: {exc.message}") from None
        except PlatformMissing as exc:
            raise BundleError(f"{repository}@{digest}: {exc}") from None
        return complete

    async def blob(self, node: Node) -> bool:
        store, digest = self.store, node.digest
        if digest in self.done:
            await store.meta.link_blob(node.repository, digest, node.size)
            return True
        if store.blobs.size(digest) == node.size:  # verified when it was committed
            await store.meta.link_blob(node.repository, digest, node.size)
            self.result.blobs_present += 1
            self.done.add(digest)
            if self.progress is not None:
                self.progress.advance(node.size, str(digest))
            return True
        src = blob_path(self.root, digest)
        if not src.exists():  # a file, or anything that reads like one (a pipe)
            self.result.missing.append(f"{node.repository}@{digest}")
            return False
        store.layout.uploads.mkdir(parents=True, exist_ok=True)
        tmp = store.layout.uploads / f"commit-{secrets.token_hex(8)}"
        try:
            computed = await asyncio.to_thread(_copy_verified, src, tmp, digest, node.size)
            if computed != (digest, node.size):
                raise BundleError(
                    f"blob {digest} in the bundle is damaged: {computed[1]} bytes hashing to"
                    f" {computed[0]}, expected {node.size} bytes"
                )
            await store.adopt_blob([node.repository], tmp, digest, computed)
        finally:
            tmp.unlink(missing_ok=True)
        self.result.blobs_imported += 1
        self.result.bytes_imported += node.size
        self.done.add(digest)
        if self.progress is not None:
            self.progress.advance(node.size, str(digest))
        # with a progress line on the terminal, one log line a blob would break it up
        level = logging.DEBUG if self.progress is not None else logging.INFO
        log.log(level, "imported %s (%d bytes) into %s", digest, node.size, node.repository)
        return True


class _Missing(Exception):
    def __init__(self, digest: Digest) -> None:
        self.digest = digest


async def import_bundle(
    root: Path,
    store: ContentStore,
    trust: TrustedState,
    db: FleetDB,
    hand_over: HandOver,
    router_for: RouterFor,
    *,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Verify, copy, then hand the state over; see the module docstring. ``root`` is a
    bundle directory, a tar, or the first of its split parts. ``BundleError`` for a
    refused bundle (nothing applied)."""
    moment = now or datetime.now(UTC)
    counts = ImportResult("applied", 0)
    directory = await asyncio.to_thread(_read_directory, root)
    if progress is not None:  # the bytes to read: the blob files, or the tar's parts
        sizes = _blob_files_bytes if directory is not None else _parts_bytes
        progress.expect(await asyncio.to_thread(sizes, root))
    if directory is not None:
        roots, envelope, acks, index = directory
        checked = check_state(trust, roots, envelope, moment)
        blobs_root = root
    else:
        checked, envelope, acks, index = await _stream_tar(
            root, store, trust, moment, counts, progress
        )
        blobs_root = root.with_name(f".{root.name}.no-such-dir")  # all is in the store now
    doc, newer, current = checked.doc, checked.newer, checked.current
    result = ImportResult("current" if current else "applied", doc.version)
    try:
        ack_list = check_acks(acks, checked, trust.satellite)
    except BundleError as exc:
        ack_list, result.warning = None, f"{exc}; no check-in cleared"
        log.warning("bundle %s: %s", root, result.warning)
    result.blobs_imported, result.bytes_imported = counts.blobs_imported, counts.bytes_imported
    # a tar's bytes were counted as they streamed; a directory's are counted by the walk
    importer = _Importer(blobs_root, store, progress if directory is not None else None, result)
    router = router_for(doc)
    complete = []
    for image in doc.images:
        repo = router.route(image.repository).repo  # where serving looks for it
        if await importer.image(repo, image):
            complete.append((repo, image))
    # what refers to those images (signatures, SBOMs, attestations), named beside them in
    # the bundle's index, with the tags that name it
    subjects: dict[str, set[Digest]] = {}
    for digest, (repo, _, _) in importer.manifests.items():
        subjects.setdefault(repo, set()).add(digest)
    tags: list[tuple[str, str, Digest]] = []
    for repository, entry, tag in referrer_entries(index, doc.images):
        repo = router.route(repository).repo
        if await importer.referrer(repo, entry, tag, frozenset(subjects.get(repo, ()))):
            result.referrers += 1
            if tag is not None:
                tags.append((repo, tag, entry.digest))
    if counts.blobs_imported:  # counted once: found in the store by the walk
        result.blobs_present -= counts.blobs_imported
    if result.missing:
        result.outcome = "incomplete"
        result.message = (
            f"state version {doc.version} not applied: {len(result.missing)} blob(s) missing"
        )
        # what this stick brought waits for the next one: the cache budget keeps it
        await store.pin(importer.done, BUNDLE_PIN)
    else:
        # the state's own pins (replication's) take over once it is applied
        await store.unpin(await store.meta.pinned(BUNDLE_PIN), BUNDLE_PIN)
        held = set(await store.meta.pinned(REFERRERS_PIN))
        await store.pin(importer.referred - held, REFERRERS_PIN)
        await store.unpin(held - importer.referred, REFERRERS_PIN)
        # children were walked before their parents, so each manifest's content is here
        for digest, (repository, body, media_type) in importer.manifests.items():
            await store.put_manifest(repository, digest, body, media_type, cached=True)
            result.manifests += 1
        for repo, image in complete:
            if image.tag:
                await store.set_tag(repo, image.tag, Digest.parse(image.digest))
        for repo, tag, digest in tags:
            await store.set_tag(repo, tag, digest)
        if not current:
            outcome, message = await hand_over(newer, envelope)
            if outcome not in ("accepted", "current"):
                raise BundleError(f"state version {doc.version} {outcome}: {message}")
    result.acked = await apply_acks(ack_list, db)
    if progress is not None and not result.missing:
        progress.complete()
    return result


MAX_ACKS = 16 * 1024 * 1024


def _read_directory(
    root: Path,
) -> tuple[list[tuple[int, bytes]], bytes, bytes | None, bytes | None] | None:
    """A bundle directory's signed files, ack list and index; None when ``root`` is a
    file."""
    if not root.is_dir():
        return None
    roots, envelope = read_signed(root)
    acks, index = root / ACKS_FILE, root / INDEX_FILE
    return (
        roots,
        envelope,
        _read_small(acks, MAX_ACKS) if acks.is_file() else None,
        _read_small(index, MAX_MANIFEST_BYTES) if index.is_file() else None,
    )


def referrer_entries(
    index: bytes | None, images: tuple[ImageDescriptor, ...]
) -> list[tuple[str, Descriptor, str | None]]:
    """Pure: the entries of a bundle's ``index.json`` beside the state's images, as
    (the state's repository, descriptor, tag or None): ``repository:tag`` or
    ``repository@digest`` of a repository the state names. Whether each refers to an
    image is for the import to check; a damaged index carries none (the images do not
    depend on it)."""
    if index is None:
        return []
    try:
        named = read_index(index)
    except RegistryError:
        log.warning("the bundle's %s is damaged: no referrers imported", INDEX_FILE)
        return []
    own = {ref_name(i.repository, i.tag, i.digest) for i in images}
    repositories = sorted({i.repository for i in images}, key=len, reverse=True)
    out: list[tuple[str, Descriptor, str | None]] = []
    for name, entry in named:
        if name in own:
            continue
        for repository in repositories:
            rest = name[len(repository) :] if name.startswith(repository) else ""
            if rest.startswith(":") and len(rest) > 1:
                out.append((repository, entry, rest[1:]))
                break
            if rest == f"@{entry.digest}":
                out.append((repository, entry, None))
                break
    return out


_SIGNED_CAPS = {STATE_FILE: 8 * 1024 * 1024, ACKS_FILE: MAX_ACKS}


def _blob_files_bytes(root: Path) -> int:
    """The bytes of a bundle directory's blob files (manifests included)."""
    total = 0
    for path in (root / "blobs").glob("*/*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _parts_bytes(path: Path) -> int:
    return sum(part.stat().st_size for part in part_files(path))


def part_files(path: Path) -> list[Path]:
    """A tar, or the parts PATH.000, PATH.001 … when ``path`` is the first of them; a
    missing part is named (the tar would otherwise read as merely truncated)."""
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        if partial.exists():
            raise BundleError(
                f"{path}: the export that wrote it was cut short (only {partial.name} is"
                " there): run the export again"
            )
        raise BundleError(f"{path}: no such file or directory")
    if not path.name.endswith(".000"):
        return [path]
    base = path.name[: -len(".000")]
    numbers = sorted(
        int(p.name[len(base) + 1 :])
        for p in path.parent.iterdir()
        if p.name.startswith(base + ".") and p.name[len(base) + 1 :].isdigit()
    )
    for expected, number in enumerate(numbers):
        if number != expected:
            raise BundleError(f"part {base}.{expected:03d} of the bundle is missing")
    return [path.parent / f"{base}.{n:03d}" for n in numbers]


class _Parts(io.RawIOBase):
    """The parts read one after the other as one stream."""

    def __init__(self, parts: list[Path]) -> None:
        self._parts = list(parts)
        self._file: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._file is None:
                if not self._parts:
                    return 0
                self._file = open(self._parts.pop(0), "rb", buffering=0)  # noqa: SIM115
            n = int(self._file.readinto(buffer))
            if n:
                return n
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _blob_member(name: str) -> Digest | None:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return None
    try:
        return Digest.parse(f"{parts[1]}:{parts[2]}")
    except RegistryError:
        return None


async def _stream_tar(
    path: Path,
    store: ContentStore,
    trust: TrustedState,
    now: datetime,
    counts: ImportResult,
    progress: Progress | None,
) -> tuple[Checked, bytes, bytes | None, bytes | None]:
    """Read a tar bundle once, in order: the signed files (which come first) are checked
    before any blob is read, then each blob streams into the store, verified."""
    stream = tarfile.open(fileobj=_Parts(part_files(path)), mode="r|")  # noqa: SIM115
    signed: dict[str, bytes] = {}
    index: bytes | None = None
    checked: Checked | None = None

    def check() -> Checked:
        if STATE_FILE not in signed:
            raise BundleError(f"{path}: not a complete bundle ({STATE_FILE} is missing)")
        roots = sorted(
            (int(name.rsplit("/", 1)[1].removesuffix(".json")), data)
            for name, data in signed.items()
            if name.startswith(ROOTS_DIR + "/") and name.rsplit("/", 1)[1][:-5].isdigit()
        )
        return check_state(trust, roots, signed[STATE_FILE], now)

    try:
        with stream:
            for member in stream:
                if not member.isfile():
                    continue
                if member.name.startswith("satellite/"):
                    if checked is not None or member.size > _SIGNED_CAPS.get(
                        member.name, 512 * 1024
                    ):
                        raise BundleError(f"{path}: unexpected {member.name}")
                    reader = stream.extractfile(member)
                    assert reader is not None
                    signed[member.name] = await asyncio.to_thread(reader.read)
                    continue
                if member.name == INDEX_FILE and member.size <= MAX_MANIFEST_BYTES:
                    reader = stream.extractfile(member)
                    assert reader is not None
                    index = await asyncio.to_thread(reader.read)
                    continue
                digest = _blob_member(member.name)
                if digest is None:
                    continue
                if checked is None:
                    checked = check()
                if store.blobs.size(digest) != member.size:
                    await _tar_blob(
                        stream, member, digest, store, counts, quiet=progress is not None
                    )
                if progress is not None:
                    progress.advance(member.size, str(digest))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{path}: truncated or damaged tar ({exc})") from None
    if checked is None:
        checked = check()
    return checked, signed[STATE_FILE], signed.get(ACKS_FILE), index


async def _tar_blob(
    stream: tarfile.TarFile,
    member: tarfile.TarInfo,
    digest: Digest,
    store: ContentStore,
    counts: ImportResult,
    *,
    quiet: bool,
) -> None:
    reader = stream.extractfile(member)
    assert reader is not None
    store.layout.uploads.mkdir(parents=True, exist_ok=True)
    tmp = store.layout.uploads / f"commit-{secrets.token_hex(8)}"
    try:
        computed = await asyncio.to_thread(_copy_stream, reader, tmp, digest)
        if computed != (digest, member.size):
            raise BundleError(
                f"blob {digest} in the bundle is damaged: {computed[1]} bytes hashing to"
                f" {computed[0]}"
            )
        # published without a repository: the walk links it where the state names it
        await store.adopt_blob([], tmp, digest, computed)
    finally:
        tmp.unlink(missing_ok=True)
    counts.blobs_imported += 1
    counts.bytes_imported += member.size
    log.log(logging.DEBUG if quiet else logging.INFO, "imported %s (%d bytes)", digest, member.size)


def _copy_stream(reader: Any, dst: Path, digest: Digest) -> tuple[Digest, int]:
    hasher = digest.hasher()
    done = 0
    with open(dst, "wb", buffering=0) as out:
        while chunk := reader.read(READ_CHUNK):
            hasher.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[out.write(view) or 0 :]
            done += len(chunk)
        os.fsync(out.fileno())
    return Digest(digest.algorithm, hasher.hexdigest()), done


async def apply_acks(acks: Acks | None, db: FleetDB) -> int:
    """Remove from the outbox the check-ins Ground Control says it holds (``acks``
    verified by ``check_acks``)."""
    if acks is None:
        return 0
    queued = await db.pending(1_000_000)
    covered = [seq for seq, _ in queued if acks.covers(seq)]
    if not covered:
        return 0
    return await db.ack(0, covered)


def stored_hand_over(trust: TrustedState, db: FleetDB, now: datetime) -> HandOver:
    """For a stopped data dir: verify and persist, as the agent would before acting;
    the daemon applies the stored state when it starts."""

    async def hand_over(newer: list[bytes], envelope: bytes) -> tuple[str, str]:
        before = trust.root.version
        if newer:
            trust.update_roots(newer, now)
        doc = trust.update_state(envelope, now)
        accepted = trust.root_chain[len(trust.root_chain) - len(newer) :] if newer else []
        versions = range(before + 1, before + 1 + len(accepted))
        await db.save_trust(
            list(zip(versions, accepted, strict=True)),
            (doc.version, envelope),
            now.timestamp(),
            unreported=True,  # the daemon queues the state_accepted event when it starts
        )
        return "accepted", ""

    return hand_over


async def import_for_agent(
    path: Path,
    store: ContentStore,
    agent: FleetAgent,
    router_for: RouterFor,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The running daemon's import: the state goes through the agent, source "bundle";
    ``progress`` counts for the CLI that asked for it (over the admin socket)."""

    async def hand_over(newer: list[bytes], envelope: bytes) -> tuple[str, str]:
        verdict = await agent.consider_with_roots(newer, envelope, "bundle")
        return verdict.outcome, verdict.message

    try:
        result = await import_bundle(
            path, store, agent.trust, agent.db, hand_over, router_for, progress=progress
        )
    except BundleError as exc:
        log.error("bundle %s refused: %s", path, exc)
        return {"outcome": "refused", "message": str(exc)}
    return result.to_dict()


async def import_offline(
    data_dir: Path, path: Path, router_for: RouterFor, progress: Progress | None = None
) -> dict[str, Any]:
    """A stopped data dir's import: the state is verified and persisted; the daemon
    applies it when it starts."""
    try:
        identity = load_identity(data_dir)
    except IdentityError as exc:
        return {"outcome": "refused", "message": str(exc)}
    if identity is None:
        return {"outcome": "refused", "message": f"{data_dir}: not registered"}
    store = ContentStore(data_dir)
    await store.open()
    try:
        async with FleetDB(identity.db_path) as db:
            stored = await db.load_trust()
            trust = TrustedState.load(
                identity.satellite,
                stored.root_chain,
                stored.state_envelope,
                stored.highest_version,
            )
            now = datetime.now(UTC)
            try:
                result = await import_bundle(
                    path,
                    store,
                    trust,
                    db,
                    stored_hand_over(trust, db, now),
                    router_for,
                    now=now,
                    progress=progress,
                )
            except BundleError as exc:
                return {"outcome": "refused", "message": str(exc)}
    finally:
        await store.close()
    return result.to_dict()


async def reports_offline(data_dir: Path, directory: Path) -> dict[str, Any]:
    identity = load_identity(data_dir)
    if identity is None:
        raise IdentityError(f"{data_dir}: not registered")
    store = ContentStore(data_dir)
    await store.open()
    try:
        async with FleetDB(identity.db_path) as db:
            count, blobs = await export_reports(directory, identity.satellite, db, store)
    finally:
        await store.close()
    return {"satellite": identity.satellite, "checkins": count, "blobs": blobs}


# --- reports to carry back --------------------------------------------------------------


async def export_reports(
    directory: Path, satellite: str, db: FleetDB, store: ContentStore
) -> tuple[int, int]:
    """Write the queued check-ins (their signed bytes as queued) and the store's
    inventory under ``directory/<satellite>/``. They stay queued until acknowledged.
    Returns (check-ins, blobs)."""
    target = directory / satellite
    target.mkdir(parents=True, exist_ok=True)
    queued = await db.pending(1_000_000)
    if queued:
        atomic_write(target / CHECKINS_FILE, checkins_body([envelope for _, envelope in queued]))
    else:
        (target / CHECKINS_FILE).unlink(missing_ok=True)
    blobs = frozenset(str(d) for d in await store.meta.blob_digests())
    atomic_write(target / INVENTORY_FILE, Inventory(satellite, blobs).to_bytes())
    return len(queued), len(blobs)

"""USB bundles for air-gapped satellites, and the reports they send back.

``export_bundle`` writes one satellite's current signed state, its root chain, the ack
list of the check-ins already ingested and every blob and manifest the state names into
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
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from groundcontrol import checkins
from groundcontrol.config import Config
from groundcontrol.contract import ContractError, TrustedState
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
from registry_proxy.ocilayout import (
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    blob_path,
    index_document,
    ref_name,
    walk,
)
from registry_proxy.upstream import UpstreamClient
from registry_proxy.upstream import UpstreamError as RegistryClientError

log = logging.getLogger("groundcontrol.bundle")

Progress = Callable[[str, int, int], None]  # (what, bytes done, bytes in all)

MAX_REPORTS_BYTES = 256 * 1024 * 1024


@dataclass
class ExportResult:
    satellite: str
    state_version: int
    images: int = 0
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
    progress: Progress | None = None,
) -> ExportResult:
    async with services.store.transaction() as q:
        row = await q.latest_state(satellite)
        if row is None:
            raise NotFound(f"no state published for satellite {satellite}", code="state_not_found")
        envelope = str(row["envelope"]).encode()
        roots = [(v, await q.root(v)) for v in await q.root_versions()]
        floor, seqs = await q.checkin_seqs(satellite)
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
    await asyncio.to_thread(output.mkdir, parents=True, exist_ok=True)
    config = services.config
    client = UpstreamClient(
        "central",
        config.registry_url,
        username=config.registry_username or None,
        password=config.registry_password or None,
    )
    written: set[Digest] = set()

    async def fetch(repository: str, digest: Digest) -> bytes:
        path = blob_path(output, digest)
        if path.exists():
            body = path.read_bytes()
            if Digest.of(body, digest.algorithm) == digest:
                return body
            path.unlink()
        manifest = await client.get_manifest(repository, str(digest))  # verified there
        _publish_bytes(path, manifest.body)
        return manifest.body

    try:
        entries = []
        for image in doc.images:
            digest = Digest.parse(image.digest)
            async for node in walk(image.repository, digest, image.media_type, image.size, fetch):
                if node.digest in written:
                    continue
                written.add(node.digest)
                if node.is_manifest:
                    continue  # written by fetch
                if str(node.digest) in held:
                    result.blobs_skipped += 1
                    continue
                path = blob_path(output, node.digest)
                if path.exists() and path.stat().st_size == node.size:
                    result.blobs_present += 1
                    continue
                result.bytes_written += await _copy_blob(
                    client, node.repository, node.digest, node.size, path, progress
                )
                result.blobs_written += 1
            entries.append(
                (
                    ref_name(image.repository, image.tag, image.digest),
                    image.digest,
                    image.media_type,
                    image.size,
                )
            )
            result.images += 1
    except RegistryClientError as exc:
        raise UpstreamError(f"central registry: {exc}") from None
    except RegistryError as exc:
        raise UpstreamError(f"central registry: {exc.message}", code="digest_mismatch") from None
    finally:
        await client.aclose()
    atomic_write(output / LAYOUT_FILE, LAYOUT_VERSION + b"\n")
    atomic_write(output / INDEX_FILE, index_document(entries))
    for version, data in chain:
        atomic_write(output / ROOTS_DIR / f"{version}.json", data)
    atomic_write(output / ACKS_FILE, Acks(satellite, floor, frozenset(seqs)).to_bytes())
    atomic_write(output / STATE_FILE, envelope)  # last: its presence marks a whole bundle
    return result


def _publish_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    publish(tmp, path)


async def _copy_blob(
    client: UpstreamClient,
    repository: str,
    digest: Digest,
    size: int,
    path: Path,
    progress: Progress | None,
) -> int:
    """Stream one blob into ``path``: hashed while written, published only on a match."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    hasher = digest.hasher()
    done = 0
    try:
        with await asyncio.to_thread(open, tmp, "wb") as f:
            async with client.open_blob(repository, digest) as blob:
                async for chunk in blob.chunks():
                    hasher.update(chunk)
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(str(digest), done, size)
            f.flush()
            os.fsync(f.fileno())
        actual = Digest(digest.algorithm, hasher.hexdigest())
        if actual != digest or done != size:
            raise UpstreamError(
                f"{repository}: blob {digest} arrived as {actual} ({done} bytes)",
                code="digest_mismatch",
            )
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return done


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
            try:
                inventory = Inventory.from_bytes(data)
            except ContractError as exc:
                raise BadRequest(f"{inventory_file}: {exc}", code="reports_invalid") from None
            if inventory.satellite != name:
                raise BadRequest(
                    f"{inventory_file}: the inventory of {inventory.satellite}, not {name}",
                    code="reports_invalid",
                )
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


def held_blobs(data: bytes, satellite: str, where: str) -> frozenset[str]:
    """The digests an inventory file says ``satellite`` holds."""
    try:
        inventory = Inventory.from_bytes(data)
    except ContractError as exc:
        raise BadRequest(f"{where}: {exc}", code="inventory_invalid") from None
    if inventory.satellite != satellite:
        raise BadRequest(
            f"{where}: the inventory of {inventory.satellite}, not {satellite}",
            code="inventory_invalid",
        )
    return inventory.blobs

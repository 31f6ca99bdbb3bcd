"""The content store: verified blobs on disk plus their metadata, behind one async API.

Handlers (and, later, the pull-through proxy) speak only to ContentStore; the blob
files, the SQLite schema and upload staging are details behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from registry_proxy import filelock
from registry_proxy.blobs import BlobStore
from registry_proxy.digest import Digest, mismatch
from registry_proxy.durable import write_all
from registry_proxy.errors import RegistryError
from registry_proxy.generation import SharedCounter
from registry_proxy.layout import Layout
from registry_proxy.manifest import Descriptor, Manifest, parse_manifest
from registry_proxy.metadata import ManifestRow, Metadata
from registry_proxy.routing import Target

log = logging.getLogger("satellite.registry")

WRITE_BUFFER = 1024 * 1024
UPLOAD_MAX_AGE = 24 * 3600.0
MANIFEST_CACHE_ENTRIES = 1024


@dataclass
class _Upload:
    """Running state of an upload in this process (lost on restart: then we rehash)."""

    repo: str
    offset: int
    sha256: hashlib._Hash | None = field(default_factory=hashlib.sha256)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class OpenBlob:
    """An open blob; `close` releases the fd and the blob's protection from eviction."""

    fd: int
    size: int
    digest: Digest
    store: ContentStore

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.store._release(self.digest)


async def _finished_in_thread(flush: Callable[[bytes], None], data: bytes) -> None:
    """`flush(data)` in a worker thread. A cancelled caller still waits for the thread:
    it writes to a descriptor the caller closes next, and a number closed under a
    running write can be reused by another file, which would then get the bytes."""
    work = asyncio.ensure_future(asyncio.to_thread(flush, data))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


def _dir_bytes(directory: Path) -> int:
    """The bytes of the files directly in ``directory`` (files may vanish meanwhile)."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def disk_error(exc: OSError) -> RegistryError:
    """A failure of the satellite's own storage, as the client is told it."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RegistryError("UNAVAILABLE", "no space left on the satellite's storage", status=507)
    return RegistryError("UNAVAILABLE", f"storage error: {exc.strerror}")


class ContentStore:
    def __init__(self, root: Path, max_bytes: int | None = None, *, shared: bool = False) -> None:
        self.max_bytes = max_bytes
        # one of several serving processes: their supervisor swept the store before they
        # started, and `sweep` must not remove what the others have under way
        self.shared = shared
        self._in_use: Counter[Digest] = Counter()
        self._evicting = asyncio.Lock()
        self.layout = Layout(root)
        self.blobs = BlobStore(self.layout)
        self.meta = Metadata(self.layout.database)
        self._uploads: dict[str, _Upload] = {}
        self._generation = 0
        # a shared store's tag cache also goes when another process changed the store
        self._others: SharedCounter | None = None
        self._others_seen = 0
        self._tag_cache: dict[tuple[str, str], ManifestRow] = {}
        self._manifest_bytes: OrderedDict[Digest, bytes] = OrderedDict()
        self._digest_locks: dict[Digest, tuple[asyncio.Lock, list[int]]] = {}

    async def open(self) -> None:
        """Opens the store. A server calls `sweep` next; a second process on the same
        data dir (`satellite verify`) must not, or it removes the files of uploads and
        fills that the server has under way."""
        self.layout.create()
        await self.meta.open()
        if self.shared:
            self._others = SharedCounter(self.layout.generation)
            self._others_seen = self._others.value

    async def close(self) -> None:
        await self.meta.close()
        if self._others is not None:
            self._others.close()
            self._others = None

    # -- uploads -------------------------------------------------------------------

    async def sweep(self, max_age: float = UPLOAD_MAX_AGE) -> list[Digest]:
        """Removes what a crash left behind: staging files, uploads abandoned for
        `max_age`, and blob files that no metadata row accounts for (a file is
        published before its row is written). Returns the orphaned digests removed.
        A ``shared`` store only counts the uploads under way."""
        if self.shared:
            await self._count_uploads()
            return []
        for upload_id in await self.meta.stale_uploads(time.time() - max_age):
            await self.cancel_upload(upload_id)
        for entry in list(self.layout.uploads.iterdir()):
            if entry.is_dir():
                if await self.meta.upload_repo(entry.name) is None:
                    shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        # fills cut by a crash resume from these; one untouched for max_age is abandoned
        cutoff = time.time() - max_age
        for entry in list(self.layout.partial.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
        await self._count_uploads()
        known = await self.meta.blob_digests()
        orphans = [
            (digest, path)
            for digest, path in await asyncio.to_thread(self.layout.iter_blobs)
            if digest not in known
        ]
        for _, path in orphans:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        if orphans:
            log.info("removed %d blob file(s) that no metadata row accounted for", len(orphans))
        return [digest for digest, _ in orphans]

    async def _count_uploads(self) -> None:
        for upload_id, repo in await self.meta.uploads():
            # counted in the budget from the start, not only once a client resumes them
            size = await asyncio.to_thread(_file_size, self.layout.upload_data(upload_id))
            if size is not None:
                self._uploads.setdefault(upload_id, _Upload(repo, size, None))

    async def start_upload(self, repo: str, *, resumable: bool = True) -> str:
        """A new upload's id. Only a resumable upload is recorded in the metadata: the
        client of a monolithic one never learns its id, so after a crash nothing could
        resume it, and the next start's `sweep` removes its data at once."""
        upload_id = str(uuid.uuid4())
        path = self.layout.upload_data(upload_id)
        path.parent.mkdir(parents=True)
        path.touch()
        if resumable:
            await self.meta.create_upload(upload_id, repo)
        self._uploads[upload_id] = _Upload(repo, 0)
        return upload_id

    async def _upload(self, repo: str, upload_id: str) -> _Upload:
        unknown = RegistryError("BLOB_UPLOAD_UNKNOWN", f"no upload {upload_id[:64]} in {repo}")
        state = self._uploads.get(upload_id)  # keys are canonical UUIDs
        if state is not None:  # this process holds it: no database read per chunk
            if state.repo != repo:
                raise unknown
            return state
        try:
            canonical = str(uuid.UUID(upload_id))
        except ValueError:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "unknown upload") from None
        if canonical != upload_id or await self.meta.upload_repo(upload_id) != repo:
            raise unknown
        # started before a restart: the bytes on disk are the truth, the hash is gone
        try:
            size = self.layout.upload_data(upload_id).stat().st_size
        except FileNotFoundError:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "upload data is gone") from None
        state = self._uploads.setdefault(upload_id, _Upload(repo, size, None))
        return state

    async def upload_offset(self, repo: str, upload_id: str) -> int:
        state = await self._upload(repo, upload_id)
        if not self.shared:
            return state.offset
        async with state.lock:
            await self._resync(upload_id, state)
            return state.offset

    async def _resync(self, upload_id: str, state: _Upload) -> None:
        """A ``shared`` store's upload may have grown in another serving process (a
        client's next chunk on another connection): the bytes on disk are the truth,
        and the running hash no longer covers them (the upload's lock is held)."""
        if not self.shared:
            return
        size = await asyncio.to_thread(_file_size, self.layout.upload_data(upload_id))
        if size is None:  # finished or cancelled there
            self._uploads.pop(upload_id, None)
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "upload data is gone")
        if size != state.offset:
            state.offset, state.sha256 = size, None

    async def append_upload(
        self,
        repo: str,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        start: int | None = None,
        length: int | None = None,
    ) -> int:
        """Appends a chunk. `start` (from Content-Range) must equal the current offset."""
        state = await self._upload(repo, upload_id)
        async with state.lock:
            await self._resync(upload_id, state)
            await self._append(repo, upload_id, state, chunks, start, length)
            return state.offset

    async def _append(
        self,
        repo: str,
        upload_id: str,
        state: _Upload,
        chunks: AsyncIterable[bytes],
        start: int | None,
        length: int | None,
    ) -> None:
        """append_upload's work, with the upload's lock held."""
        if start is not None and start != state.offset:
            raise RegistryError(  # the app adds Location and Range for `offset`
                "RANGE_INVALID",
                f"chunk starts at {start}, upload is at {state.offset}",
                {"offset": state.offset},
            )
        written = await self._write(upload_id, state, chunks)
        if length is not None and written != length:
            raise RegistryError(
                "SIZE_INVALID", f"Content-Length {length} but received {written} bytes"
            )

    async def _write(self, upload_id: str, state: _Upload, chunks: AsyncIterable[bytes]) -> int:
        path = self.layout.upload_data(upload_id)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "upload data is gone") from None
        written = 0
        buffer = bytearray()

        def flush(data: bytes) -> None:
            write_all(fd, data)
            if state.sha256 is not None:
                state.sha256.update(data)

        try:
            async for chunk in chunks:
                buffer += chunk
                if len(buffer) >= WRITE_BUFFER:
                    data, buffer = bytes(buffer), bytearray()
                    await _finished_in_thread(flush, data)
                    state.offset += len(data)
                    written += len(data)
            if buffer:
                await _finished_in_thread(flush, bytes(buffer))
                state.offset += len(buffer)
                written += len(buffer)
        except OSError as exc:
            # what reached the disk stays; the hash may not match it any more
            state.sha256 = None
            state.offset = os.fstat(fd).st_size
            raise disk_error(exc) from exc
        except BaseException:
            # client went away (or the server is stopping) mid-chunk: what was written
            # stays and the hash covers exactly that (every flush ran to its end)
            state.offset = os.fstat(fd).st_size
            raise
        finally:
            os.close(fd)
        return written

    async def finish_upload(
        self,
        repo: str,
        upload_id: str,
        digest: Digest,
        chunks: AsyncIterable[bytes] | None = None,
        start: int | None = None,
        length: int | None = None,
    ) -> int:
        """Appends the final chunk, verifies, publishes and links the blob (holding the
        upload's lock throughout, so no other chunk can land in between)."""
        state = await self._upload(repo, upload_id)
        async with state.lock:
            await self._resync(upload_id, state)
            if chunks is not None:
                await self._append(repo, upload_id, state, chunks, start, length)
            computed = None
            if state.sha256 is not None and digest.algorithm == "sha256":
                computed = (Digest("sha256", state.sha256.hexdigest()), state.offset)
            try:
                return await self._publish(
                    [repo], self.layout.upload_data(upload_id), digest, computed
                )
            finally:
                await self._drop_upload(upload_id)

    async def cancel_upload(self, upload_id: str) -> None:
        await self._drop_upload(upload_id)

    async def _drop_upload(self, upload_id: str) -> None:
        # bytes first: on a full disk, freeing them is what lets the database write
        self._uploads.pop(upload_id, None)
        await asyncio.to_thread(self.layout.remove_upload, upload_id)
        await self.meta.delete_upload(upload_id)

    async def mount_blob(self, repo: str, digest: Digest, from_repo: str | None) -> bool:
        """Links an existing blob into `repo`. Without `from_repo`, any repository's copy
        will do (content addressing makes that safe)."""
        if self.blobs.size(digest) is None:
            return False  # no file, nothing to link (and no database round trip)
        async with self._digest_lock(digest):  # not evicted between the check and the link
            size = (
                await self.meta.blob_size(from_repo, digest)
                if from_repo is not None
                else await self.meta.any_blob_size(digest)
            )
            if size is None or self.blobs.size(digest) != size:
                return False
            await self.meta.link_blob(repo, digest, size)
        return True

    # -- blobs ---------------------------------------------------------------------

    async def blob_size(self, repo: str, digest: Digest) -> int:
        size = await self.meta.blob_size(repo, digest)
        if size is None:
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in {repo}")
        return size

    async def blob_answer(self, target: Target, digest: Digest) -> tuple[OpenBlob, None]:
        """``Content.blob_answer`` for a local repository."""
        return await self.open_blob(target.repo, digest), None

    async def open_blob(self, repo: str, digest: Digest) -> OpenBlob:
        # the file first: a blob that is not here at all (a pull-through miss) costs no
        # database round trip
        fd = self.blobs.open(digest)
        if fd is None:
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in {repo}")
        try:
            size = await self.blob_size(repo, digest)
        except BaseException:
            os.close(fd)
            raise
        self.meta.touch(digest)
        self._in_use[digest] += 1
        return OpenBlob(fd, size, digest, self)

    def _release(self, digest: Digest) -> None:
        self._in_use[digest] -= 1
        if self._in_use[digest] <= 0:
            del self._in_use[digest]

    async def adopt_blob(
        self, repos: list[str], src: Path, digest: Digest, computed: tuple[Digest, int]
    ) -> int:
        """Publishes a file written and hashed elsewhere (a cache fill) into `repos`."""
        return await self._publish(repos, src, digest, computed)

    async def _publish(
        self, repos: list[str], src: Path, digest: Digest, computed: tuple[Digest, int] | None
    ) -> int:
        """Verifies and publishes `src`, then links it into `repos`; if the links cannot
        be written, the published file goes again (unless something else holds it)."""
        async with self._digest_lock(digest):
            try:
                size = await asyncio.to_thread(self.blobs.commit, src, digest, computed)
            except OSError as exc:
                raise disk_error(exc) from exc
            try:
                for repo in repos:
                    await self.meta.link_blob(repo, digest, size)
            except BaseException:
                await self._discard(digest)
                raise
        return size

    # -- cache budget --------------------------------------------------------------

    async def pin(self, digests: Iterable[Digest], owner: str) -> None:
        """Keeps these blobs from eviction for ``owner`` (one transaction for all)."""
        await self.meta.pin(digests, owner)

    async def unpin(self, digests: Iterable[Digest], owner: str) -> None:
        await self.meta.unpin(digests, owner)

    async def used_bytes(self) -> int:
        """Bytes held on disk: verified blobs (manifests included), upload data and the
        staging files of fills from upstream (received, not yet verified)."""
        staged = sum(upload.offset for upload in self._uploads.values())
        staged += await asyncio.to_thread(_dir_bytes, self.layout.partial)
        return await self.meta.used_bytes() + staged

    async def enforce_budget(self) -> list[Digest]:
        """Evicts unpinned blobs, least recently used first, until the store is back
        under 90% of `max_bytes`. Blobs being read right now are skipped."""
        if self.max_bytes is None:
            return []
        async with self._evicting, filelock.held(self.layout.budget_lock):
            used = await self.used_bytes()
            if used <= self.max_bytes:
                return []
            await self.meta.flush_access()
            candidates = await self.meta.lru_candidates(100_000)
            evicted = await self._evict(candidates, used - int(self.max_bytes * 0.9))
            return [digest for digest, _ in evicted]

    async def evict_unpinned(self, *, dry_run: bool = False) -> list[tuple[Digest, int]]:
        """Evicts every unpinned blob now (``satellite gc``), but not one being read;
        returns what was freed, or with ``dry_run`` what would be."""
        async with self._evicting, filelock.held(self.layout.budget_lock):
            await self.meta.flush_access()
            candidates = await self.meta.lru_candidates(10_000_000)
            if dry_run:
                return [(d, size) for d, size in candidates if not self._in_use.get(d)]
            return await self._evict(candidates, None)

    async def _evict(
        self, candidates: list[tuple[Digest, int]], to_free: int | None
    ) -> list[tuple[Digest, int]]:
        """Evicts candidates in order until ``to_free`` bytes are freed (None: all);
        skips a blob being read, published or pinned in the meantime."""
        freed = 0
        evicted: list[tuple[Digest, int]] = []
        for digest, size in candidates:
            if to_free is not None and freed >= to_free:
                break
            # not while it is being published; and a blob another process is committing
            # or removing right now is in use there: this pass leaves it
            async with self._digest_lock(digest, wait=False) as held:
                if not held or self._in_use.get(digest) or not await self.meta.evict(digest):
                    continue
                self._manifest_bytes.pop(digest, None)
                await asyncio.to_thread(self.blobs.delete, digest)
            freed += size
            evicted.append((digest, size))
        if evicted:
            self._changed()
        return evicted

    async def delete_blob(self, repo: str, digest: Digest) -> None:
        if not await self.meta.unlink_blob(repo, digest):
            raise RegistryError("BLOB_UNKNOWN", f"blob {digest} is not in {repo}")
        await self._collect(digest)

    async def _discard(self, digest: Digest) -> None:
        """Removes the file of content that could not be recorded, unless something
        else holds it; what cannot be removed now, the next start's `sweep` removes.
        The caller holds the digest's lock."""
        try:
            await self._forget(digest)
        except Exception:
            log.warning("could not remove unrecorded %s; the next start removes it", digest)

    async def _collect(self, digest: Digest) -> None:
        async with self._digest_lock(digest):  # not while it is being published
            await self._forget(digest)

    async def _forget(self, digest: Digest) -> None:
        """Removes the blob's row and file if nothing references it (lock held)."""
        if await self.meta.forget_blob(digest):
            self._manifest_bytes.pop(digest, None)
            await asyncio.to_thread(self.blobs.delete, digest)

    # -- manifests -----------------------------------------------------------------

    def _changed(self) -> None:
        self._generation += 1
        self._tag_cache.clear()
        if self._others is not None:  # after the write: who sees the bump reads it
            self._others_seen = self._others.bump()

    def _others_changed(self) -> None:
        """Drops the tag cache when another serving process changed the store."""
        if self._others is not None and self._others.value != self._others_seen:
            self._others_seen = self._others.value
            self._generation += 1
            self._tag_cache.clear()

    async def put_manifest(
        self,
        repo: str,
        reference: str | Digest,
        body: bytes,
        content_type: str | None,
        *,
        cached: bool = False,
    ) -> tuple[Digest, Manifest]:
        """Stores a pushed manifest, or with `cached` one fetched from upstream (whose
        blobs need not be here yet).

        A refused manifest leaves no bytes behind: its references are checked before
        the file is written, and a failure to record it removes the file again unless
        something else holds the same content.
        """
        manifest = parse_manifest(body, content_type)
        if isinstance(reference, Digest):
            digest = Digest.of(body, reference.algorithm)
            if digest != reference:
                raise mismatch(reference, digest, "manifest")
            tag = None
        else:
            digest, tag = Digest.of(body), reference
        if not cached:
            await self.meta.check_references(repo, manifest)
        async with self._digest_lock(digest):  # no other put of it between write and undo
            try:
                await asyncio.to_thread(self.blobs.write_bytes, body, digest)
            except OSError as exc:
                raise disk_error(exc) from exc
            try:
                await self.meta.put_manifest(
                    repo, digest, len(body), manifest, tag, check_references=not cached
                )
            except BaseException:
                await self._discard(digest)
                raise
            finally:
                self._changed()
        return digest, manifest

    @contextlib.asynccontextmanager
    async def _digest_lock(self, digest: Digest, *, wait: bool = True) -> AsyncIterator[bool]:
        """Excludes every other publish or removal of ``digest``: in this process (a lock
        per digest) and in the others serving the store (an flock on the digest's lock
        file, e.g. a budget pass in one against a fill's commit in another). Yields True
        once held; without ``wait``, False at once when another process holds it."""
        entry = self._digest_locks.setdefault(digest, (asyncio.Lock(), [0]))
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                across = filelock.FileLock(self.layout.digest_lock(digest))
                try:
                    if wait:
                        await across.acquire()
                    yield across.try_acquire()  # held already after acquire()
                finally:
                    across.release(remove=True)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._digest_locks[digest]

    async def set_tag(self, repo: str, tag: str, digest: Digest) -> None:
        try:
            await self.meta.set_tag(repo, tag, digest)
        finally:
            self._changed()

    async def resolve(self, repo: str, reference: str | Digest) -> ManifestRow:
        if isinstance(reference, Digest):
            row = await self.meta.manifest_by_digest(repo, reference)
        else:
            key = (repo, reference)
            self._others_changed()
            row = self._tag_cache.get(key)
            if row is None:
                generation = self._generation
                row = await self.meta.manifest_by_tag(repo, reference)
                self._others_changed()
                if row is not None and generation == self._generation:
                    self._tag_cache[key] = row
        if row is None:
            raise RegistryError("MANIFEST_UNKNOWN", f"manifest {reference} is not in {repo}")
        return row

    async def manifest_answer(
        self, target: Target, reference: str | Digest
    ) -> tuple[ManifestRow, None]:
        """``Content.manifest_answer`` for a local repository."""
        return await self.resolve(target.repo, reference), None

    def remember_manifest_bytes(self, digest: Digest, body: bytes) -> None:
        """Keeps a verified manifest's bytes at hand (it may not be stored yet)."""
        self._manifest_bytes[digest] = body
        self._manifest_bytes.move_to_end(digest)
        if len(self._manifest_bytes) > MANIFEST_CACHE_ENTRIES:
            self._manifest_bytes.popitem(last=False)

    async def manifest_bytes(self, row: ManifestRow) -> bytes:
        data = self._manifest_bytes.get(row.digest)
        if data is None:
            data = await asyncio.to_thread(self.blobs.read_bytes, row.digest)
            if data is None:
                raise RegistryError("MANIFEST_UNKNOWN", f"manifest {row.digest} bytes are gone")
        self.remember_manifest_bytes(row.digest, data)
        self.meta.touch(row.digest)
        return data

    async def delete_manifest(self, repo: str, reference: str | Digest) -> None:
        try:
            if isinstance(reference, Digest):
                if not await self.meta.delete_manifest(repo, reference):
                    raise RegistryError("MANIFEST_UNKNOWN", f"manifest {reference} not in {repo}")
                await self._collect(reference)
            elif not await self.meta.delete_tag(repo, reference):
                raise RegistryError("MANIFEST_UNKNOWN", f"tag {reference} not in {repo}")
        finally:
            self._changed()

    async def tags(self, repo: str, n: int | None, last: str | None) -> list[str]:
        if not await self.meta.repo_exists(repo):
            raise RegistryError("NAME_UNKNOWN", f"repository {repo} is not known")
        return await self.meta.tags(repo, n, last)

    async def tag_list(self, target: Target, n: int | None, last: str | None) -> list[str]:
        return await self.tags(target.repo, n, last)

    async def catalog(self, n: int | None, last: str | None) -> list[str]:
        return await self.meta.catalog(n, last)

    async def referrers(
        self, repo: str, subject: Digest, artifact_type: str | None
    ) -> list[Descriptor]:
        return await self.meta.referrers(repo, subject, artifact_type)

    async def referrer_list(
        self, target: Target, subject: Digest, artifact_type: str | None
    ) -> list[Descriptor]:
        return await self.meta.referrers(target.repo, subject, artifact_type)

    # -- maintenance ---------------------------------------------------------------

    async def verify(self) -> list[Digest]:
        """Rehashes every blob on disk; returns the digests whose bytes do not match."""
        return await asyncio.to_thread(self.blobs.verify_all)

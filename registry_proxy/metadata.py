"""Registry metadata in SQLite (WAL) through aiosqlite.

One writer connection, serialized by a lock so that each transaction's statements run
back to back, and one reader connection that sees only committed data. Foreign keys
make "a tag pointing at a missing manifest" unrepresentable: tags reference manifests,
manifests reference their blob row, and deleting a manifest cascades to its tags.
Blob files are published before their rows are inserted and unlinked after their rows
are deleted, so a row never names a file that is not (yet) there.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.manifest import Descriptor, Manifest
from registry_proxy.transactions import immediate

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories(
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs(
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_access REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_last_access ON blobs(last_access);
CREATE TABLE IF NOT EXISTS repo_blobs(
    repo TEXT NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES blobs(digest),
    PRIMARY KEY(repo, digest)
);
CREATE INDEX IF NOT EXISTS repo_blobs_digest ON repo_blobs(digest);
CREATE TABLE IF NOT EXISTS manifests(
    repo TEXT NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES blobs(digest),
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY(repo, digest)
);
CREATE INDEX IF NOT EXISTS manifests_subject ON manifests(repo, subject)
    WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS manifests_digest ON manifests(digest);
CREATE TABLE IF NOT EXISTS manifest_refs(
    repo TEXT NOT NULL,
    parent TEXT NOT NULL,
    child TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
    PRIMARY KEY(repo, parent, child),
    FOREIGN KEY(repo, parent) REFERENCES manifests(repo, digest) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS manifest_refs_child ON manifest_refs(child);
CREATE TABLE IF NOT EXISTS tags(
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY(repo, tag),
    FOREIGN KEY(repo, digest) REFERENCES manifests(repo, digest) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS uploads(
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pins(
    digest TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY(digest, owner)
);
"""


SET_TAG = (
    "INSERT INTO tags(repo, tag, digest, updated_at) VALUES (?,?,?,?)"
    " ON CONFLICT(repo, tag) DO UPDATE SET digest = excluded.digest,"
    " updated_at = excluded.updated_at"
)


@dataclass(frozen=True)
class ManifestRow:
    digest: Digest
    media_type: str
    size: int


class Metadata:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._access: dict[str, float] = {}

    async def open(self) -> None:
        self._writer = await self._connect()
        await self._writer.executescript(SCHEMA)
        async with self._writer.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        if row is not None and row[0] > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {row[0]}, newer than this satellite knows"
            )
        await self._writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._reader = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def close(self) -> None:
        if self._writer is not None:
            await self.flush_access()
            await self._writer.close()
            self._writer = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "metadata not opened"
        return self._reader

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        assert self._writer is not None, "metadata not opened"
        try:
            async with immediate(self._writer, self._lock) as conn:
                yield conn
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise RegistryError(
                    "UNAVAILABLE", "no space left on the satellite's storage", status=507
                ) from exc
            raise

    async def _one(self, sql: str, params: Iterable[object]) -> aiosqlite.Row | None:
        async with self.reader.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Iterable[object]) -> list[aiosqlite.Row]:
        async with self.reader.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    # -- reads ---------------------------------------------------------------------

    async def repo_exists(self, repo: str) -> bool:
        return await self._one("SELECT 1 FROM repositories WHERE name = ?", (repo,)) is not None

    async def blob_size(self, repo: str, digest: Digest) -> int | None:
        """Size of a blob linked to `repo` (a blob another repo holds is not visible here)."""
        row = await self._one(
            "SELECT b.size FROM repo_blobs r JOIN blobs b ON b.digest = r.digest"
            " WHERE r.repo = ? AND r.digest = ?",
            (repo, str(digest)),
        )
        return None if row is None else int(row[0])

    async def any_blob_size(self, digest: Digest) -> int | None:
        row = await self._one("SELECT size FROM blobs WHERE digest = ?", (str(digest),))
        return None if row is None else int(row[0])

    async def manifest_by_digest(self, repo: str, digest: Digest) -> ManifestRow | None:
        row = await self._one(
            "SELECT media_type, size FROM manifests WHERE repo = ? AND digest = ?",
            (repo, str(digest)),
        )
        return None if row is None else ManifestRow(digest, row[0], int(row[1]))

    async def manifest_by_tag(self, repo: str, tag: str) -> ManifestRow | None:
        row = await self._one(
            "SELECT m.digest, m.media_type, m.size FROM tags t"
            " JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest"
            " WHERE t.repo = ? AND t.tag = ?",
            (repo, tag),
        )
        return None if row is None else ManifestRow(Digest.parse(row[0]), row[1], int(row[2]))

    async def tags(self, repo: str, n: int | None, last: str | None) -> list[str]:
        sql = "SELECT tag FROM tags WHERE repo = ?"
        params: list[object] = [repo]
        if last:
            sql += " AND tag > ?"
            params.append(last)
        sql += " ORDER BY tag"
        if n is not None:
            sql += " LIMIT ?"
            params.append(n)
        return [r[0] for r in await self._all(sql, params)]

    async def catalog(self, n: int | None, last: str | None) -> list[str]:
        sql = "SELECT name FROM repositories"
        params: list[object] = []
        if last:
            sql += " WHERE name > ?"
            params.append(last)
        sql += " ORDER BY name"
        if n is not None:
            sql += " LIMIT ?"
            params.append(n)
        return [r[0] for r in await self._all(sql, params)]

    async def referrers(
        self, repo: str, subject: Digest, artifact_type: str | None
    ) -> list[Descriptor]:
        sql = (
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests"
            " WHERE repo = ? AND subject = ?"
        )
        params: list[object] = [repo, str(subject)]
        if artifact_type is not None:
            sql += " AND artifact_type = ?"
            params.append(artifact_type)
        sql += " ORDER BY created_at, digest"
        return [
            Descriptor(
                r[1],
                Digest.parse(r[0]),
                int(r[2]),
                artifact_type=r[3],
                annotations=json.loads(r[4]) if r[4] else None,
            )
            for r in await self._all(sql, params)
        ]

    async def upload_repo(self, upload_id: str) -> str | None:
        row = await self._one("SELECT repo FROM uploads WHERE id = ?", (upload_id,))
        return None if row is None else str(row[0])

    async def uploads(self) -> list[tuple[str, str]]:
        """(id, repository) of every upload under way."""
        return [(r[0], r[1]) for r in await self._all("SELECT id, repo FROM uploads", ())]

    async def stale_uploads(self, older_than: float) -> list[str]:
        rows = await self._all("SELECT id FROM uploads WHERE started_at < ?", (older_than,))
        return [r[0] for r in rows]

    async def blob_digests(self) -> set[Digest]:
        return {Digest.parse(r[0]) for r in await self._all("SELECT digest FROM blobs", ())}

    async def used_bytes(self) -> int:
        row = await self._one("SELECT COALESCE(SUM(size), 0) FROM blobs", ())
        return 0 if row is None else int(row[0])

    # -- writes --------------------------------------------------------------------

    @staticmethod
    async def _ensure_repo(db: aiosqlite.Connection, repo: str, now: float) -> None:
        await db.execute(
            "INSERT OR IGNORE INTO repositories(name, created_at) VALUES (?, ?)", (repo, now)
        )

    @staticmethod
    async def _ensure_blob(db: aiosqlite.Connection, digest: str, size: int, now: float) -> None:
        await db.execute(
            "INSERT OR IGNORE INTO blobs(digest, size, created_at, last_access) VALUES (?,?,?,?)",
            (digest, size, now, now),
        )

    async def link_blob(self, repo: str, digest: Digest, size: int) -> None:
        now = time.time()
        async with self.transaction() as db:
            await self._ensure_repo(db, repo, now)
            await self._ensure_blob(db, str(digest), size, now)
            await db.execute(
                "INSERT OR IGNORE INTO repo_blobs(repo, digest) VALUES (?, ?)", (repo, str(digest))
            )

    async def unlink_blob(self, repo: str, digest: Digest) -> bool:
        async with self.transaction() as db:
            cur = await db.execute(
                "DELETE FROM repo_blobs WHERE repo = ? AND digest = ?", (repo, str(digest))
            )
            return cur.rowcount > 0

    @staticmethod
    async def _check_references(db: aiosqlite.Connection, repo: str, manifest: Manifest) -> None:
        """MANIFEST_BLOB_UNKNOWN if a referenced blob or child manifest is not in `repo`;
        MANIFEST_INVALID if its descriptor's size is not the size stored for it (a
        client that trusts the descriptor would read past the content or stop short)."""
        missing: list[str] = []
        wrong_size: list[dict[str, object]] = []
        checks = [
            (
                ref,
                "SELECT b.size FROM repo_blobs r JOIN blobs b ON b.digest = r.digest"
                " WHERE r.repo = ? AND r.digest = ?",
            )
            for ref in manifest.blob_references()
        ]
        checks += [
            (child, "SELECT size FROM manifests WHERE repo = ? AND digest = ?")
            for child in manifest.manifests
        ]
        for ref, sql in checks:
            async with db.execute(sql, (repo, str(ref.digest))) as cur:
                row = await cur.fetchone()
            if row is None:
                missing.append(str(ref.digest))
            elif int(row[0]) != ref.size:
                wrong_size.append(
                    {"digest": str(ref.digest), "size": ref.size, "stored": int(row[0])}
                )
        if missing:
            raise RegistryError(
                "MANIFEST_BLOB_UNKNOWN",
                f"{len(missing)} referenced blob(s) or manifest(s) not in {repo}",
                {"missing": missing},
            )
        if wrong_size:
            first = wrong_size[0]
            raise RegistryError(
                "MANIFEST_INVALID",
                f"descriptor of {first['digest']} says {first['size']} bytes,"
                f" the stored content is {first['stored']}",
                {"sizes": wrong_size},
            )

    async def check_references(self, repo: str, manifest: Manifest) -> None:
        """The check that `put_manifest` makes, on committed data: lets a refused
        manifest be refused before its bytes are written."""
        await self._check_references(self.reader, repo, manifest)

    async def put_manifest(
        self,
        repo: str,
        digest: Digest,
        size: int,
        manifest: Manifest,
        tag: str | None,
        check_references: bool = True,
    ) -> None:
        """Records a manifest (whose bytes are already published) and optionally tags it.

        Fails as `check_references` says, and records nothing, if a referenced blob or
        child manifest is not in the repository or has another size. A manifest cached
        from upstream is recorded without that check: its blobs arrive later, on demand.
        """
        now = time.time()
        d = str(digest)
        async with self.transaction() as db:
            if check_references:
                await self._check_references(db, repo, manifest)
            await self._ensure_repo(db, repo, now)
            await self._ensure_blob(db, d, size, now)
            await db.execute(
                "INSERT OR IGNORE INTO manifests(repo, digest, media_type, size, artifact_type,"
                " subject, annotations, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    repo,
                    d,
                    manifest.media_type,
                    size,
                    manifest.artifact_type,
                    str(manifest.subject.digest) if manifest.subject else None,
                    json.dumps(manifest.annotations) if manifest.annotations else None,
                    now,
                ),
            )
            refs: list[tuple[Descriptor, str]] = [(r, "blob") for r in manifest.blob_references()]
            refs += [(m, "manifest") for m in manifest.manifests]
            await db.executemany(
                "INSERT OR IGNORE INTO manifest_refs(repo, parent, child, kind) VALUES (?,?,?,?)",
                [(repo, d, str(r.digest), kind) for r, kind in refs],
            )
            if tag is not None:
                await db.execute(SET_TAG, (repo, tag, d, now))

    async def set_tag(self, repo: str, tag: str, digest: Digest) -> None:
        async with self.transaction() as db:
            await db.execute(SET_TAG, (repo, tag, str(digest), time.time()))

    async def delete_manifest(self, repo: str, digest: Digest) -> bool:
        async with self.transaction() as db:
            cur = await db.execute(
                "DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, str(digest))
            )
            return cur.rowcount > 0

    async def delete_tag(self, repo: str, tag: str) -> bool:
        async with self.transaction() as db:
            cur = await db.execute("DELETE FROM tags WHERE repo = ? AND tag = ?", (repo, tag))
            return cur.rowcount > 0

    async def forget_blob(self, digest: Digest) -> bool:
        """Drops the blob row if nothing references it; True when the file may go."""
        d = str(digest)
        async with self.transaction() as db:
            for sql in (
                "SELECT 1 FROM repo_blobs WHERE digest = ? LIMIT 1",
                "SELECT 1 FROM manifests WHERE digest = ? LIMIT 1",
                "SELECT 1 FROM manifest_refs WHERE child = ? LIMIT 1",
                "SELECT 1 FROM pins WHERE digest = ? LIMIT 1",
            ):
                async with db.execute(sql, (d,)) as cur:
                    if await cur.fetchone() is not None:
                        return False
            await db.execute("DELETE FROM blobs WHERE digest = ?", (d,))
            return True

    async def lru_candidates(self, limit: int) -> list[tuple[Digest, int]]:
        """Unpinned blobs, least recently used first."""
        rows = await self._all(
            "SELECT digest, size FROM blobs WHERE digest NOT IN (SELECT digest FROM pins)"
            " ORDER BY last_access, digest LIMIT ?",
            (limit,),
        )
        return [(Digest.parse(r[0]), int(r[1])) for r in rows]

    async def evict(self, digest: Digest) -> bool:
        """Forgets a cached blob everywhere (manifests stored as it go, with their tags).
        Refuses, returning False, if the blob was pinned in the meantime."""
        d = str(digest)
        async with self.transaction() as db:
            async with db.execute("SELECT 1 FROM pins WHERE digest = ?", (d,)) as cur:
                if await cur.fetchone() is not None:
                    return False
            await db.execute("DELETE FROM manifests WHERE digest = ?", (d,))
            await db.execute("DELETE FROM repo_blobs WHERE digest = ?", (d,))
            await db.execute("DELETE FROM blobs WHERE digest = ?", (d,))
            return True

    async def create_upload(self, upload_id: str, repo: str) -> None:
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO uploads(id, repo, started_at) VALUES (?,?,?)",
                (upload_id, repo, time.time()),
            )

    async def delete_upload(self, upload_id: str) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    async def pin(self, digests: Iterable[Digest], owner: str) -> None:
        """Pins every digest for ``owner``, in one transaction."""
        rows = [(str(d), owner) for d in digests]
        if rows:
            async with self.transaction() as db:
                await db.executemany(
                    "INSERT OR IGNORE INTO pins(digest, owner) VALUES (?, ?)", rows
                )

    async def pinned(self, owner: str) -> list[Digest]:
        rows = await self._all("SELECT digest FROM pins WHERE owner = ?", (owner,))
        return [Digest.parse(r[0]) for r in rows]

    async def unpin(self, digests: Iterable[Digest], owner: str) -> None:
        """Drops ``owner``'s pins of every digest, in one transaction."""
        rows = [(str(d), owner) for d in digests]
        if rows:
            async with self.transaction() as db:
                await db.executemany("DELETE FROM pins WHERE digest = ? AND owner = ?", rows)

    # -- last access, batched: a read must not cost a write transaction ---------------

    def touch(self, digest: Digest) -> None:
        self._access[str(digest)] = time.time()

    async def flush_access(self) -> None:
        if not self._access:
            return
        pending, self._access = self._access, {}
        async with self.transaction() as db:
            await db.executemany(
                "UPDATE blobs SET last_access = MAX(last_access, ?) WHERE digest = ?",
                [(ts, d) for d, ts in pending.items()],
            )

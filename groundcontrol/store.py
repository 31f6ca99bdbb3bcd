"""Fleet storage, written once against :mod:`groundcontrol.db` for both backends.

``Store.transaction()`` yields :class:`Queries`, the thin SQL for each operation; callers
compose several of them into one transaction (a group change and the states it
publishes commit together or not at all). Every read-modify-write that two Ground Control
processes might race on is a single atomic statement (``UPDATE ... RETURNING``,
``INSERT ... ON CONFLICT``).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from groundcontrol.db import Database, IntegrityError, Row, Transaction
from groundcontrol.errors import Conflict, NotFound
from groundcontrol.models import Group, ImageRef, Satellite, describe_change, parse_image
from groundcontrol.status import Run, failing_count
from groundcontrol.watch import STATE_CHANNEL, notify_payloads


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _group(row: Row) -> Group:
    images = tuple(parse_image(i) for i in json.loads(row["images"]))
    return Group(row["name"], row["description"], images, row["created_at"], row["updated_at"])


def _satellite(row: Row, groups: tuple[str, ...]) -> Satellite:
    return Satellite(
        name=row["name"],
        groups=groups,
        labels=json.loads(row["labels"]),
        config=json.loads(row["config"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        public_key=row["public_key"],
        keyid=row["keyid"],
        registered_at=row["registered_at"],
        revoked_at=row["revoked_at"],
        published_version=row["published_version"],
        applied_version=row["applied_version"],
        last_seen=row["last_seen"],
        last_seq=row["last_seq"],
        last_report=json.loads(row["last_report"]) if row["last_report"] else None,
    )


class Store:
    """``on_state_change`` is called after a commit with the satellites whose state
    answer changed (:class:`groundcontrol.watch.StateWatch` wakes their long-polls); the
    other processes on the database are told by a notification sent in the transaction."""

    def __init__(
        self, db: Database, on_state_change: Callable[[set[str]], None] | None = None
    ) -> None:
        self.db = db
        self.on_state_change = on_state_change

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queries]:
        async with self.db.transaction() as tx:
            q = Queries(tx)
            yield q
            await q.settle_group_history()
            for payload in notify_payloads(q.state_changed):
                await tx.notify(STATE_CHANNEL, payload)
        if q.state_changed and self.on_state_change is not None:
            self.on_state_change(q.state_changed)


class Queries:
    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        # satellites whose state endpoint answers differently once this commits
        self.state_changed: set[str] = set()
        # states signed in this transaction, and group changes that caused them
        self.published: dict[str, int] = {}
        self._group_changes: list[tuple[str, str]] = []

    # --- operator API tokens ----------------------------------------------------------

    async def insert_api_token(self, token_id: str, name: str, token_hash: str, now: int) -> None:
        await self.tx.execute(
            "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
            token_id,
            name,
            token_hash,
            now,
        )

    async def api_token_by_hash(self, token_hash: str) -> Row | None:
        return await self.tx.fetchone(
            "SELECT id, name FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
            token_hash,
        )

    async def touch_api_token(self, token_id: str, now: int) -> None:
        await self.tx.execute(
            "UPDATE api_tokens SET last_used_at = ? WHERE id = ? "
            "AND (last_used_at IS NULL OR last_used_at < ?)",
            now,
            token_id,
            now - 60,
        )

    async def list_api_tokens(self) -> list[Row]:
        return await self.tx.fetchall(
            "SELECT id, name, created_at, revoked_at, last_used_at FROM api_tokens "
            "ORDER BY created_at, id"
        )

    async def revoke_api_token(self, token_id: str, now: int) -> None:
        n = await self.tx.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            now,
            token_id,
        )
        if n == 0:
            row = await self.tx.fetchone("SELECT id FROM api_tokens WHERE id = ?", token_id)
            if row is None:
                raise NotFound(f"no API token {token_id}", code="token_not_found")
        await self.tx.execute("DELETE FROM dashboard_sessions WHERE token_id = ?", token_id)

    # --- dashboard sessions -------------------------------------------------------------

    async def insert_dashboard_session(
        self, id_hash: str, token_id: str, csrf: str, now: int, expires_at: int
    ) -> None:
        await self.tx.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?", now)
        await self.tx.execute(
            "INSERT INTO dashboard_sessions (id_hash, token_id, csrf, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            id_hash,
            token_id,
            csrf,
            now,
            expires_at,
        )

    async def dashboard_session(self, id_hash: str, now: int) -> Row | None:
        """A live session whose operator token is not revoked, else None."""
        return await self.tx.fetchone(
            "SELECT s.token_id, s.csrf, t.name FROM dashboard_sessions s "
            "JOIN api_tokens t ON t.id = s.token_id "
            "WHERE s.id_hash = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
            id_hash,
            now,
        )

    async def delete_dashboard_session(self, id_hash: str) -> None:
        await self.tx.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", id_hash)

    # --- groups -----------------------------------------------------------------------

    async def insert_group(
        self, name: str, description: str, images: tuple[ImageRef, ...], now: int
    ) -> None:
        try:
            await self.tx.execute(
                "INSERT INTO groups (name, description, images, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                name,
                description,
                _json([i.to_dict() for i in images]),
                now,
                now,
            )
        except IntegrityError:
            raise Conflict(f"group {name} exists", code="group_exists") from None
        await self.record_group_change(name, f"created with {len(images)} image(s)", images, now)

    async def group(self, name: str) -> Group:
        row = await self.tx.fetchone("SELECT * FROM groups WHERE name = ?", name)
        if row is None:
            raise NotFound(f"no group {name}", code="group_not_found")
        return _group(row)

    async def groups(self, names: tuple[str, ...] | None = None) -> list[Group]:
        where, args = _name_filter("name", names)
        rows = await self.tx.fetchall(f"SELECT * FROM groups{where} ORDER BY name", *args)
        groups = [_group(r) for r in rows]
        if names is not None:
            groups = [g for g in groups if g.name in names]
        return groups

    async def update_group(
        self, name: str, description: str, images: tuple[ImageRef, ...], now: int
    ) -> None:
        before = await self.group(name)
        n = await self.tx.execute(
            "UPDATE groups SET description = ?, images = ?, updated_at = ? WHERE name = ?",
            description,
            _json([i.to_dict() for i in images]),
            now,
            name,
        )
        if n == 0:
            raise NotFound(f"no group {name}", code="group_not_found")
        await self.record_group_change(
            name, describe_change(before, description, images), images, now
        )

    async def record_group_change(
        self, name: str, change: str, images: tuple[ImageRef, ...], now: int
    ) -> None:
        """A line of the group's history; the states this transaction signs for its
        members are counted into it at commit (:meth:`settle_group_history`)."""
        change_id = _sortable_id()
        await self.tx.execute(
            "INSERT INTO group_history (id, group_name, at, change, images) VALUES (?, ?, ?, ?, ?)",
            change_id,
            name,
            now,
            change[:1000],
            _json([i.to_dict() for i in images]),
        )
        self._group_changes.append((change_id, name))

    async def settle_group_history(self) -> None:
        for change_id, name in self._group_changes:
            versions = [
                self.published[m] for m in await self.group_members(name) if m in self.published
            ]
            if versions:
                await self.tx.execute(
                    "UPDATE group_history SET published = ?, min_version = ?, max_version = ? "
                    "WHERE id = ?",
                    len(versions),
                    min(versions),
                    max(versions),
                    change_id,
                )
        self._group_changes.clear()

    async def group_history(self, name: str, limit: int) -> list[Row]:
        return await self.tx.fetchall(
            "SELECT at, change, images, published, min_version, max_version "
            "FROM group_history WHERE group_name = ? ORDER BY at DESC, id DESC LIMIT ?",
            name,
            limit,
        )

    async def delete_group(self, name: str) -> None:
        members = await self.group_members(name)
        if members:
            raise Conflict(
                f"group {name} still has {len(members)} member(s); remove them first",
                code="group_in_use",
            )
        n = await self.tx.execute("DELETE FROM groups WHERE name = ?", name)
        if n == 0:
            raise NotFound(f"no group {name}", code="group_not_found")

    async def group_members(self, name: str) -> list[str]:
        rows = await self.tx.fetchall(
            "SELECT satellite FROM satellite_groups WHERE group_name = ? ORDER BY satellite",
            name,
        )
        return [r["satellite"] for r in rows]

    async def check_groups_exist(self, names: tuple[str, ...]) -> None:
        existing = {g.name for g in await self.groups(names)}
        missing = sorted(set(names) - existing)
        if missing:
            raise NotFound(f"no such group(s): {', '.join(missing)}", code="group_not_found")

    # --- satellites -------------------------------------------------------------------

    async def insert_satellite(
        self,
        name: str,
        groups: tuple[str, ...],
        labels: dict[str, str],
        config: dict[str, Any],
        now: int,
    ) -> None:
        await self.check_groups_exist(groups)
        try:
            await self.tx.execute(
                "INSERT INTO satellites (name, labels, config, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                name,
                _json(labels),
                _json(config),
                now,
                now,
            )
        except IntegrityError:
            raise Conflict(f"satellite {name} exists", code="satellite_exists") from None
        await self._set_groups(name, groups)

    async def _set_groups(self, name: str, groups: tuple[str, ...]) -> None:
        await self.tx.execute("DELETE FROM satellite_groups WHERE satellite = ?", name)
        for g in groups:
            await self.tx.execute(
                "INSERT INTO satellite_groups (satellite, group_name) VALUES (?, ?)", name, g
            )

    async def satellite(self, name: str) -> Satellite:
        row = await self.tx.fetchone("SELECT * FROM satellites WHERE name = ?", name)
        if row is None:
            raise NotFound(f"no satellite {name}", code="satellite_not_found")
        rows = await self.tx.fetchall(
            "SELECT group_name FROM satellite_groups WHERE satellite = ? ORDER BY group_name",
            name,
        )
        return _satellite(row, tuple(r["group_name"] for r in rows))

    async def satellites(self, names: list[str] | None = None) -> list[Satellite]:
        where, args = _name_filter("name", names)
        rows = await self.tx.fetchall(f"SELECT * FROM satellites{where} ORDER BY name", *args)
        where, args = _name_filter("satellite", names)
        memberships = await self.tx.fetchall(
            f"SELECT satellite, group_name FROM satellite_groups{where} ORDER BY group_name",
            *args,
        )
        by_sat: dict[str, list[str]] = {}
        for m in memberships:
            by_sat.setdefault(m["satellite"], []).append(m["group_name"])
        wanted = None if names is None else set(names)
        return [
            _satellite(r, tuple(by_sat.get(r["name"], ())))
            for r in rows
            if wanted is None or r["name"] in wanted
        ]

    async def update_satellite(
        self,
        name: str,
        now: int,
        *,
        groups: tuple[str, ...] | None = None,
        labels: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        current = await self.satellite(name)
        if groups is not None:
            await self.check_groups_exist(groups)
            await self._set_groups(name, groups)
        await self.tx.execute(
            "UPDATE satellites SET labels = ?, config = ?, updated_at = ? WHERE name = ?",
            _json(current.labels if labels is None else labels),
            _json(current.config if config is None else config),
            now,
            name,
        )

    async def delete_satellite(self, name: str) -> None:
        self.state_changed.add(name)
        n = await self.tx.execute("DELETE FROM satellites WHERE name = ?", name)
        if n == 0:
            raise NotFound(f"no satellite {name}", code="satellite_not_found")

    async def revoke_satellite(self, name: str, now: int) -> None:
        await self.satellite(name)
        self.state_changed.add(name)  # its long-polls end
        await self.tx.execute(
            "UPDATE satellites SET revoked_at = ?, credential_hash = NULL, updated_at = ? "
            "WHERE name = ? AND revoked_at IS NULL",
            now,
            now,
            name,
        )
        # outstanding join tokens die with it
        await self.tx.execute(
            "UPDATE join_tokens SET used_at = ? WHERE satellite = ? AND used_at IS NULL",
            now,
            name,
        )

    async def register_satellite(
        self, name: str, public_key: str, keyid: str, credential_hash: str, now: int
    ) -> None:
        await self.tx.execute(
            "UPDATE satellites SET public_key = ?, keyid = ?, credential_hash = ?, "
            "registered_at = ?, updated_at = ?, last_seq = 0, seq_floor = 0 "
            "WHERE name = ? AND revoked_at IS NULL",
            public_key,
            keyid,
            credential_hash,
            now,
            now,
            name,
        )
        # a new device key starts a new sequence of reports
        await self.tx.execute("DELETE FROM checkins WHERE satellite = ?", name)

    async def satellite_by_credential(self, credential_hash: str) -> str | None:
        """The name of the unrevoked satellite holding this credential."""
        row = await self.tx.fetchone(
            "SELECT name FROM satellites WHERE credential_hash = ? AND revoked_at IS NULL",
            credential_hash,
        )
        return None if row is None else str(row["name"])

    # --- join tokens ------------------------------------------------------------------

    async def insert_join_token(
        self, token_id: str, satellite: str, token_hash: str, now: int, expires_at: int
    ) -> None:
        await self.tx.execute(
            "INSERT INTO join_tokens (id, satellite, token_hash, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            token_id,
            satellite,
            token_hash,
            now,
            expires_at,
        )

    async def join_token(self, token_id: str) -> Row | None:
        return await self.tx.fetchone("SELECT * FROM join_tokens WHERE id = ?", token_id)

    async def count_join_token_failure(self, token_id: str) -> None:
        await self.tx.execute(
            "UPDATE join_tokens SET failed_attempts = failed_attempts + 1 WHERE id = ?", token_id
        )

    async def use_join_token(self, token_id: str, now: int, max_failures: int) -> bool:
        """Mark the token used, atomically; False when it was used, expired or locked."""
        n = await self.tx.execute(
            "UPDATE join_tokens SET used_at = ? WHERE id = ? AND used_at IS NULL "
            "AND expires_at > ? AND failed_attempts < ?",
            now,
            token_id,
            now,
            max_failures,
        )
        return n == 1

    async def count_register_attempt(self, source: str, window_start: int) -> int:
        row = await self.tx.fetchone(
            "INSERT INTO register_attempts (source, window_start, attempts) VALUES (?, ?, 1) "
            "ON CONFLICT (source, window_start) "
            "DO UPDATE SET attempts = register_attempts.attempts + 1 RETURNING attempts",
            source,
            window_start,
        )
        await self.tx.execute(
            "DELETE FROM register_attempts WHERE window_start < ?", window_start - 3600
        )
        return int(row["attempts"]) if row else 1

    # --- trust roots ------------------------------------------------------------------

    async def insert_root(self, version: int, envelope: str, now: int) -> None:
        try:
            await self.tx.execute(
                "INSERT INTO roots (version, envelope, created_at) VALUES (?, ?, ?)",
                version,
                envelope,
                now,
            )
        except IntegrityError:
            raise Conflict(f"root version {version} exists", code="root_exists") from None

    async def root(self, version: int | None = None) -> str | None:
        if version is None:
            row = await self.tx.fetchone("SELECT envelope FROM roots ORDER BY version DESC LIMIT 1")
        else:
            row = await self.tx.fetchone("SELECT envelope FROM roots WHERE version = ?", version)
        return None if row is None else str(row["envelope"])

    async def root_versions(self) -> list[int]:
        rows = await self.tx.fetchall("SELECT version FROM roots ORDER BY version")
        return [int(r["version"]) for r in rows]

    # --- signed states ----------------------------------------------------------------

    async def next_state_version(self, satellite: str) -> int:
        row = await self.tx.fetchone(
            "UPDATE satellites SET published_version = published_version + 1 "
            "WHERE name = ? RETURNING published_version",
            satellite,
        )
        if row is None:
            raise NotFound(f"no satellite {satellite}", code="satellite_not_found")
        return int(row["published_version"])

    async def insert_state(
        self,
        satellite: str,
        version: int,
        envelope: str,
        content_hash: str,
        issued_at: int,
        expires_at: int,
        keep: int,
    ) -> None:
        self.state_changed.add(satellite)
        self.published[satellite] = version
        await self.tx.execute(
            "INSERT INTO states (satellite, version, envelope, content_hash, issued_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            satellite,
            version,
            envelope,
            content_hash,
            issued_at,
            expires_at,
        )
        await self.tx.execute(
            "DELETE FROM states WHERE satellite = ? AND version <= ?", satellite, version - keep
        )

    async def latest_state(self, satellite: str) -> Row | None:
        return await self.tx.fetchone(
            "SELECT * FROM states WHERE satellite = ? ORDER BY version DESC LIMIT 1", satellite
        )

    # --- check-ins --------------------------------------------------------------------

    async def insert_checkin(
        self,
        satellite: str,
        seq: int,
        state_version: int,
        report: dict[str, Any],
        envelope: str,
        now: int,
    ) -> bool:
        """Store one report; False when (satellite, seq) was already ingested."""
        return seq in await self.insert_checkins(
            satellite, [(seq, state_version, report, envelope)], now
        )

    async def insert_checkins(
        self,
        satellite: str,
        reports: Sequence[tuple[int, int, dict[str, Any], str]],
        now: int,
    ) -> set[int]:
        """Store (seq, state_version, report, envelope) rows with one statement per
        chunk; return the seqs that were new (the others were already ingested)."""
        inserted: set[int] = set()
        for start in range(0, len(reports), CHECKIN_ROWS_PER_STATEMENT):
            chunk = reports[start : start + CHECKIN_ROWS_PER_STATEMENT]
            args: list[Any] = []
            for seq, state_version, report, envelope in chunk:
                args += [satellite, seq, now, state_version, _json(report), envelope]
            rows = await self.tx.fetchall(
                "INSERT INTO checkins (satellite, seq, received_at, state_version, report, "
                "envelope) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
                + " ON CONFLICT (satellite, seq) DO NOTHING RETURNING seq",
                *args,
            )
            inserted.update(int(r["seq"]) for r in rows)
        return inserted

    async def checkin_target(self, satellite: str) -> Row:
        """What ingest needs of a satellite, in one read: its device key, whether it is
        revoked, and its sequence bounds."""
        row = await self.tx.fetchone(
            "SELECT public_key, revoked_at, last_seq, seq_floor FROM satellites WHERE name = ?",
            satellite,
        )
        if row is None:
            raise NotFound(f"no satellite {satellite}", code="satellite_not_found")
        return row

    async def checkin_seqs(self, satellite: str) -> tuple[int, list[int]]:
        """The check-ins held from a satellite: its retention floor (everything up to it
        was ingested and pruned) and the seqs kept above it."""
        _last, floor = await self.checkin_bounds(satellite)
        rows = await self.tx.fetchall(
            "SELECT seq FROM checkins WHERE satellite = ? ORDER BY seq", satellite
        )
        return floor, [int(r["seq"]) for r in rows]

    async def checkin_bounds(self, satellite: str) -> tuple[int, int]:
        row = await self.tx.fetchone(
            "SELECT last_seq, seq_floor FROM satellites WHERE name = ?", satellite
        )
        return (int(row["last_seq"]), int(row["seq_floor"])) if row else (0, 0)

    async def record_checkin_summary(
        self,
        satellite: str,
        now: int,
        *,
        last_seq: int | None,
        applied_version: int | None,
        last_report: dict[str, Any] | None,
    ) -> None:
        """Advance last_seen, and, when a newer report arrived, what it says (one
        statement: every right-hand side sees the row as it was)."""
        if last_seq is None:
            await self.tx.execute(
                "UPDATE satellites SET last_seen = ? WHERE name = ?", now, satellite
            )
            return
        await self.tx.execute(
            "UPDATE satellites SET last_seen = ?, "
            "applied_version = CASE WHEN last_seq < ? THEN ? ELSE applied_version END, "
            "last_report = CASE WHEN last_seq < ? THEN ? ELSE last_report END, "
            "failing_images = CASE WHEN last_seq < ? THEN ? ELSE failing_images END, "
            "last_seq = CASE WHEN last_seq < ? THEN ? ELSE last_seq END "
            "WHERE name = ?",
            now,
            last_seq,
            applied_version,
            last_seq,
            _json(last_report),
            last_seq,
            failing_count(last_report),
            last_seq,
            last_seq,
            satellite,
        )

    async def prune_checkins(self, satellite: str, keep: int) -> None:
        row = await self.tx.fetchone(
            "SELECT seq FROM checkins WHERE satellite = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            satellite,
            keep,
        )
        if row is None:
            return
        floor = int(row["seq"])
        await self.tx.execute(
            "DELETE FROM checkins WHERE satellite = ? AND seq <= ?", satellite, floor
        )
        await self.tx.execute(
            "UPDATE satellites SET seq_floor = ? WHERE name = ? AND seq_floor < ?",
            floor,
            satellite,
            floor,
        )

    async def checkins(self, satellite: str, limit: int, before: int | None = None) -> list[Row]:
        if before is None:
            return await self.tx.fetchall(
                "SELECT seq, received_at, state_version, report FROM checkins "
                "WHERE satellite = ? ORDER BY seq DESC LIMIT ?",
                satellite,
                limit,
            )
        return await self.tx.fetchall(
            "SELECT seq, received_at, state_version, report FROM checkins "
            "WHERE satellite = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            satellite,
            before,
            limit,
        )

    async def checkins_since(self, satellite: str, since: int) -> list[Row]:
        """Reports received since ``since``, oldest first, plus the last one before it
        (the strip needs to know whether the window opened online)."""
        return await self.tx.fetchall(
            "SELECT seq, received_at, state_version, report FROM checkins "
            "WHERE satellite = ? AND seq >= COALESCE((SELECT MAX(seq) FROM checkins "
            "WHERE satellite = ? AND received_at < ?), 0) ORDER BY seq",
            satellite,
            satellite,
            since,
        )

    async def record_contacts(
        self, satellite: str, runs: Sequence[Run], within: int, forget_before: int
    ) -> None:
        """Merge runs of check-ins into the satellite's contact history: each run absorbs
        the runs of its kind it overlaps or nears (within ``within`` seconds), so the
        history stays a few rows per outage; rows older than ``forget_before`` go."""
        for start, end, kind in runs:
            near = (satellite, kind, end + within, start - within)
            where = "satellite = ? AND kind = ? AND start_at <= ? AND end_at >= ?"
            rows = await self.tx.fetchall(
                f"SELECT start_at, end_at FROM contacts WHERE {where}", *near
            )
            first = min([start, *(int(r["start_at"]) for r in rows)])
            last = max([end, *(int(r["end_at"]) for r in rows)])
            if rows:
                await self.tx.execute(f"DELETE FROM contacts WHERE {where}", *near)
            await self.tx.execute(
                "INSERT INTO contacts (satellite, kind, start_at, end_at) VALUES (?, ?, ?, ?)",
                satellite,
                kind,
                first,
                last,
            )
        await self.tx.execute(
            "DELETE FROM contacts WHERE satellite = ? AND end_at < ?", satellite, forget_before
        )

    async def contacts_since(self, satellite: str, since: int) -> tuple[list[Row], int | None]:
        """The contact runs that end after ``since``, oldest first, and when the first
        contact on record began (None: never)."""
        rows = await self.tx.fetchall(
            "SELECT kind, start_at, end_at FROM contacts WHERE satellite = ? AND end_at >= ? "
            "ORDER BY start_at",
            satellite,
            since,
        )
        first = await self.tx.fetchone(
            "SELECT MIN(start_at) AS first FROM contacts WHERE satellite = ?", satellite
        )
        return rows, (None if first is None or first["first"] is None else int(first["first"]))

    async def states_published(self, satellite: str) -> list[Row]:
        """The kept states of a satellite, newest first (without their envelopes)."""
        return await self.tx.fetchall(
            "SELECT version, issued_at, expires_at FROM states WHERE satellite = ? "
            "ORDER BY version DESC",
            satellite,
        )

    # --- the fleet at a glance (dashboard) ----------------------------------------------

    async def fleet_counts(self, clock: StatusClock) -> dict[str, int]:
        """How many satellites there are of each status (one pass, no rows returned)."""
        expr, args = status_sql(clock)
        rows = await self.tx.fetchall(
            f"SELECT {expr} AS status, COUNT(*) AS n FROM satellites s GROUP BY 1", *args
        )
        return {str(r["status"]): int(r["n"]) for r in rows}

    async def fleet_page(self, query: FleetQuery, clock: StatusClock) -> tuple[int, list[Row]]:
        """(how many match, the rows of the asked page); paging, sorting and filtering in
        SQL so that a page costs the same at ten thousand satellites as at ten."""
        expr, expr_args = status_sql(clock)
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if query.search:
            key, eq, value = query.search.partition("=")
            if eq and key:
                # key=value: that label exactly, as the labels' JSON spells it
                where.append("s.labels LIKE ? ESCAPE '!'")
                args.append(f"%{_like(_json(key.strip()) + ':' + _json(value.strip()))}%")
            else:
                pattern = f"%{_like(query.search.lower())}%"
                where.append(
                    "(LOWER(s.name) LIKE ? ESCAPE '!' OR LOWER(s.labels) LIKE ? ESCAPE '!')"
                )
                args += [pattern, pattern]
        if query.group:
            where.append("s.name IN (SELECT satellite FROM satellite_groups WHERE group_name = ?)")
            args.append(query.group)
        if query.status:
            where.append(f"{expr} = ?")
            args += [*expr_args, query.status]
        condition = " AND ".join(where)
        row = await self.tx.fetchone(
            f"SELECT COUNT(*) AS n FROM satellites s WHERE {condition}", *args
        )
        total = int(row["n"]) if row else 0
        order = {
            "name": "s.name",
            "last_seen": "COALESCE(s.last_seen, -1)",
            "applied": "COALESCE(s.applied_version, -1)",
            "status": expr,
        }[query.sort]
        order_args = list(expr_args) if query.sort == "status" else []
        direction = "DESC" if query.descending else "ASC"
        rows = await self.tx.fetchall(
            f"SELECT s.name, s.labels, s.registered_at, s.revoked_at, s.published_version, "
            f"s.applied_version, s.last_seen, s.failing_images, {expr} AS status "
            f"FROM satellites s WHERE {condition} "
            f"ORDER BY {order} {direction}, s.name {direction} LIMIT ? OFFSET ?",
            *expr_args,
            *args,
            *order_args,
            query.limit,
            query.offset,
        )
        where_in, in_args = _name_filter("satellite", [r["name"] for r in rows])
        memberships = await self.tx.fetchall(
            f"SELECT satellite, group_name FROM satellite_groups{where_in} ORDER BY group_name",
            *in_args,
        )
        by_sat: dict[str, list[str]] = {}
        for m in memberships:
            by_sat.setdefault(m["satellite"], []).append(m["group_name"])
        for r in rows:
            r["labels"] = json.loads(r["labels"])
            r["groups"] = by_sat.get(r["name"], [])
        return total, rows

    async def group_rollouts(self, clock: StatusClock, group: str | None = None) -> list[Row]:
        """Per group: how many members are on their published version, behind, failing,
        offline (or not joined, or revoked); rows of (group_name, progress, n)."""
        where, args = "", []
        if group is not None:
            where, args = " WHERE g.group_name = ?", [group]
        return await self.tx.fetchall(
            "SELECT g.group_name AS group_name, CASE "
            "WHEN s.revoked_at IS NOT NULL THEN 'revoked' "
            "WHEN s.registered_at IS NULL THEN 'pending' "
            "WHEN s.last_seen IS NULL OR s.last_seen < ? THEN 'offline' "
            "WHEN s.failing_images > 0 THEN 'failing' "
            "WHEN COALESCE(s.applied_version, 0) >= s.published_version THEN 'current' "
            "ELSE 'behind' END AS progress, COUNT(*) AS n "
            f"FROM satellite_groups g JOIN satellites s ON s.name = g.satellite{where} "
            "GROUP BY 1, 2",
            clock.offline_before,
            *args,
        )

    async def group_names(self) -> list[str]:
        return [
            str(r["name"]) for r in await self.tx.fetchall("SELECT name FROM groups ORDER BY name")
        ]

    async def group_last_changes(self) -> dict[str, int]:
        rows = await self.tx.fetchall(
            "SELECT group_name, MAX(at) AS at FROM group_history GROUP BY group_name"
        )
        return {str(r["group_name"]): int(r["at"]) for r in rows}

    async def group_member_rows(
        self, name: str, clock: StatusClock, limit: int, offset: int
    ) -> list[Row]:
        expr, args = status_sql(clock)
        return await self.tx.fetchall(
            f"SELECT s.name, s.published_version, s.applied_version, s.last_seen, "
            f"{expr} AS status FROM satellite_groups g JOIN satellites s "
            "ON s.name = g.satellite WHERE g.group_name = ? ORDER BY s.name LIMIT ? OFFSET ?",
            *args,
            name,
            limit,
            offset,
        )

    # --- audit log ----------------------------------------------------------------------

    async def insert_audit(
        self, actor: str, action: str, target: str, detail: str, now: int
    ) -> None:
        await self.tx.execute(
            "INSERT INTO audit_log (id, at, actor, action, target, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            _sortable_id(),
            now,
            actor,
            action,
            target,
            detail[:1000],
        )

    async def audit_entries(self, limit: int, offset: int = 0) -> tuple[int, list[Row]]:
        row = await self.tx.fetchone("SELECT COUNT(*) AS n FROM audit_log")
        rows = await self.tx.fetchall(
            "SELECT at, actor, action, target, detail FROM audit_log "
            "ORDER BY at DESC, id DESC LIMIT ? OFFSET ?",
            limit,
            offset,
        )
        return (int(row["n"]) if row else 0), rows

    # --- upstream credentials ---------------------------------------------------------

    async def put_upstream_credential(
        self, registry: str, kind: str, username: str, secret: str, groups: list[str], now: int
    ) -> None:
        await self.tx.execute(
            "INSERT INTO upstream_credentials (registry, kind, username, secret, groups, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (registry) DO UPDATE SET "
            "kind = excluded.kind, username = excluded.username, secret = excluded.secret, "
            "groups = excluded.groups, updated_at = excluded.updated_at",
            registry,
            kind,
            username,
            secret,
            _json(sorted(groups)),
            now,
        )

    async def upstream_credentials(self) -> list[Row]:
        rows = await self.tx.fetchall("SELECT * FROM upstream_credentials ORDER BY registry")
        for r in rows:
            r["groups"] = json.loads(r["groups"])
        return rows

    async def delete_upstream_credential(self, registry: str) -> None:
        n = await self.tx.execute("DELETE FROM upstream_credentials WHERE registry = ?", registry)
        if n == 0:
            raise NotFound(f"no credential for {registry}", code="credential_not_found")

    # --- Harbor robot accounts --------------------------------------------------------

    async def robot_account(self, satellite: str, registry: str) -> Row | None:
        return await self.tx.fetchone(
            "SELECT * FROM robot_accounts WHERE satellite = ? AND registry = ?",
            satellite,
            registry,
        )

    async def put_robot_account(
        self,
        satellite: str,
        registry: str,
        robot_id: int,
        username: str,
        secret: str,
        projects: list[str],
        expires_at: int,
        now: int,
    ) -> None:
        await self.tx.execute(
            "INSERT INTO robot_accounts (satellite, registry, robot_id, username, secret, "
            "projects, expires_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (satellite, registry) DO UPDATE SET robot_id = excluded.robot_id, "
            "username = excluded.username, secret = excluded.secret, "
            "projects = excluded.projects, expires_at = excluded.expires_at, "
            "updated_at = excluded.updated_at",
            satellite,
            registry,
            robot_id,
            username,
            secret,
            _json(sorted(projects)),
            expires_at,
            now,
        )

    async def delete_robot_account(self, satellite: str, registry: str) -> None:
        await self.tx.execute(
            "DELETE FROM robot_accounts WHERE satellite = ? AND registry = ?", satellite, registry
        )


@dataclass(frozen=True)
class StatusClock:
    """The two instants that split online, stale and offline (see
    :func:`groundcontrol.status.derive_status`, which the SQL below mirrors)."""

    stale_before: int
    offline_before: int

    @classmethod
    def at(cls, now: float, stale_after: int, offline_after: int) -> StatusClock:
        # an integer last_seen L: now - L > x  <=>  L < ceil(now - x)
        return cls(math.ceil(now - stale_after), math.ceil(now - offline_after))


def status_sql(clock: StatusClock) -> tuple[str, tuple[int, int]]:
    """``derive_status(...).summary`` as a SQL expression over ``satellites s``."""
    return (
        "(CASE WHEN s.revoked_at IS NOT NULL THEN 'revoked' "
        "WHEN s.registered_at IS NULL THEN 'pending' "
        "WHEN s.last_seen IS NULL OR s.last_seen < ? THEN 'offline' "
        "WHEN s.failing_images > 0 THEN 'failing' "
        "WHEN s.last_seen < ? THEN 'stale' "
        "WHEN COALESCE(s.applied_version, 0) < s.published_version THEN 'behind' "
        "ELSE 'online' END)",
        (clock.offline_before, clock.stale_before),
    )


FLEET_SORTS = ("name", "last_seen", "applied", "status")


@dataclass(frozen=True)
class FleetQuery:
    """``search``: a substring of the name or of a label (key or value), or
    ``key=value`` for one label exactly."""

    search: str = ""
    status: str | None = None
    group: str | None = None
    sort: str = "name"
    descending: bool = False
    offset: int = 0
    limit: int = 50


def _sortable_id() -> str:
    """Random, but in the order of creation within one process (rows of the same second
    of ``at`` list newest first by it)."""
    return f"{time.time_ns():020d}{secrets.token_hex(4)}"


def _like(text: str) -> str:
    """``text`` matched literally by ``LIKE ... ESCAPE '!'``."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


# 6 parameters a row: well under SQLite's 32,766 and PostgreSQL's 32,767 per statement
CHECKIN_ROWS_PER_STATEMENT = 500
NAME_FILTER_MAX = 500  # names in one IN (...); more than that and the whole table is read


def _name_filter(column: str, names: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    """A ``WHERE column IN (...)`` for a publish of a few satellites among thousands; the
    callers still filter the rows, so a long list may fall back to no WHERE at all."""
    if names is None or len(names) > NAME_FILTER_MAX:
        return "", ()
    if not names:
        return " WHERE 1 = 0", ()
    return f" WHERE {column} IN ({', '.join('?' * len(names))})", tuple(names)

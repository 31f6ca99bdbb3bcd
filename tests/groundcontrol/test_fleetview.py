"""The dashboard's data against both backends, in process with injected time: the SQL
status agrees with the Python one, search/filter/sort/paging, the connectivity strip,
group history, and the page actions with their audit entries and forgery checks."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from groundcontrol import fleetview
from groundcontrol.config import Config
from groundcontrol.contract import ImageStatus
from groundcontrol.db import Database
from groundcontrol.db.migrations import MIGRATIONS, migrate
from groundcontrol.fleetview import Contact, Segment, connectivity, expiry_warning
from groundcontrol.services import Services
from groundcontrol.status import contact_kind, contact_runs, derive_status
from groundcontrol.store import FleetQuery, StatusClock, Store
from tests.groundcontrol.conftest import CentralRegistry, FakeClock
from tests.groundcontrol.fleet import SimSatellite
from tests.groundcontrol.test_auth_matrix import FORM, ORIGIN, login

BAD = ImageStatus("library/app", "sha256:" + "c" * 64, "failed", "<disk full>")
GOOD = ImageStatus("library/app", "sha256:" + "d" * 64, "present")


# --- pure ----------------------------------------------------------------------------------


def test_contact_runs_group_check_ins_of_one_kind_close_together() -> None:
    points = [(100, "online"), (40, "online"), (160, "online"), (400, "online"), (420, "late")]
    assert contact_runs(points, 60) == [
        (40, 160, "online"),
        (400, 400, "online"),
        (420, 420, "late"),
    ]
    assert contact_kind(1000, 1001, 600) == "online"
    assert contact_kind(1000, 1601, 600) == "late"


def test_connectivity_shows_offline_gaps_late_reports_and_unknown_before() -> None:
    hour = 3600.0
    contacts = [
        Contact(10 * hour, 11 * hour, "online"),  # silent from 11 h: online until 12 h
        Contact(20 * hour, 20 * hour, "online"),
        Contact(21 * hour, 22 * hour, "late"),  # signed then, carried in later
    ]
    segments = connectivity(contacts, 0, 24 * hour, offline_after=hour, known_from=10 * hour)
    assert segments == [
        Segment(0, 10 * hour, "unknown"),
        Segment(10 * hour, 12 * hour, "online"),
        Segment(12 * hour, 20 * hour, "offline"),
        Segment(20 * hour, 21 * hour, "online"),
        Segment(21 * hour, 23 * hour, "late"),
        Segment(23 * hour, 24 * hour, "offline"),
    ]
    # never heard from: offline since registration, unknown before; never registered
    assert connectivity([], 0, 10, offline_after=1, known_from=4) == [
        Segment(0, 4, "unknown"),
        Segment(4, 10, "offline"),
    ]
    assert connectivity([], 0, 10, offline_after=1, known_from=None) == [Segment(0, 10, "unknown")]
    # a run from before the window opens it online
    assert connectivity(
        [Contact(-50, -5, "online"), Contact(30, 30, "online")],
        0,
        40,
        offline_after=100,
        known_from=-50,
    ) == [Segment(0, 40, "online")]


def test_expiry_warning() -> None:
    assert expiry_warning(None, False, 100, 10) == "unknown"
    assert expiry_warning(200, False, 100, 10) == "ok"
    assert expiry_warning(105, False, 100, 10) == "soon"
    assert expiry_warning(100, False, 100, 10) == "expired"
    assert expiry_warning(900, True, 100, 10) == "expired"  # the satellite says so


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"status": "sleepy"}, "invalid_status"),
        ({"sort": "colour"}, "invalid_sort"),
        ({"page": "0"}, "invalid_page"),
        ({"page": "²"}, "invalid_page"),
        ({"q": "x" * 101}, "invalid_q"),
    ],
)
def test_fleet_query_refuses_what_it_cannot_honour(params: dict[str, str], code: str) -> None:
    with pytest.raises(Exception) as raised:
        fleetview.fleet_query(params)
    assert getattr(raised.value, "code", None) == code


# --- against both databases ------------------------------------------------------------


async def _make(client: httpx.AsyncClient, op: dict[str, str], name: str, **body: object) -> str:
    r = await client.post("/api/v1/satellites", json={"name": name, **body}, headers=op)
    assert r.status_code == 201, r.text
    return str(r.json()["join_token"]["token"])


async def test_sql_status_matches_derive_status_and_pages_filter_and_sort(
    client: httpx.AsyncClient, op: dict[str, str], services: Services, clock: FakeClock
) -> None:
    await client.post("/api/v1/groups", json={"name": "shops"}, headers=op)
    sats: dict[str, SimSatellite] = {}
    for i in range(7):
        name = f"shop-{i}"
        labels = {"region": "north" if i % 2 else "south", "tier": "gold_%" if i == 3 else "x"}
        token = await _make(client, op, name, groups=["shops"] if i < 5 else [], labels=labels)
        if i == 6:
            continue  # pending: never registers
        sat = SimSatellite(client, name)
        await sat.register(token, clock.now)
        sats[name] = sat
    await sats["shop-3"].post([sats["shop-3"].checkin(clock.now, 1)])  # offline, later
    clock.advance(3000)
    await sats["shop-0"].post([sats["shop-0"].checkin(clock.now, 1)])  # online
    await sats["shop-1"].post([sats["shop-1"].checkin(clock.now, 1, (BAD,))])  # failing
    await sats["shop-2"].post([sats["shop-2"].checkin(clock.now, 0)])  # behind
    await sats["shop-5"].post([sats["shop-5"].checkin(clock.now, 1)])  # stale, later
    await client.post("/api/v1/satellites/shop-4/revoke", headers=op)
    clock.advance(900)
    await sats["shop-0"].post([sats["shop-0"].checkin(clock.now, 1)])
    await sats["shop-2"].post([sats["shop-2"].checkin(clock.now, 0)])

    config = services.config
    status_clock = StatusClock.at(clock.now, config.stale_after, config.offline_after)
    async with services.store.transaction() as q:
        satellites = await q.satellites()
        total, rows = await q.fleet_page(FleetQuery(limit=100), status_clock)
        counts = await q.fleet_counts(status_clock)
    by_python = {
        s.name: derive_status(s, clock.now, config.stale_after, config.offline_after).summary
        for s in satellites
    }
    assert {r["name"]: r["status"] for r in rows} == by_python
    assert total == 7
    assert set(by_python.values()) == {
        "online",
        "failing",
        "behind",
        "offline",
        "revoked",
        "pending",
        "stale",
    }
    assert sum(counts.values()) == 7 and counts["offline"] == 1

    async def names(**params: str) -> list[str]:
        r = await client.get("/api/v1/dashboard", params=params, headers=op)
        assert r.status_code == 200, r.text
        return [s["name"] for s in r.json()["satellites"]]

    assert await names(q="SHOP-1") == ["shop-1"]
    assert await names(q="north") == ["shop-1", "shop-3", "shop-5"]
    assert await names(q="region=south") == ["shop-0", "shop-2", "shop-4", "shop-6"]
    assert await names(q="gold_%") == ["shop-3"]  # LIKE's wildcards match literally
    assert await names(q="x_") == []  # as a wildcard, "x_" would match "x\""
    assert await names(status="failing") == ["shop-1"]
    assert await names(group="shops", status="offline") == ["shop-3"]
    assert await names(group="shops", sort="-name") == [f"shop-{i}" for i in (4, 3, 2, 1, 0)]
    assert (await names(sort="-last_seen"))[:2] == ["shop-2", "shop-0"]
    assert (await names(sort="last_seen"))[:2] == ["shop-4", "shop-6"]  # never seen first
    r = await client.get("/api/v1/dashboard", params={"status": "x"}, headers=op)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_status"

    view = (await client.get("/api/v1/dashboard", headers=op)).json()
    assert view["counts"] == {s: counts.get(s, 0) for s in view["counts"]}
    (shops,) = view["groups"]
    # the same numbers for Prometheus
    r = await client.get("/api/v1/dashboard/metrics", headers=op)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }
    for status, n in view["counts"].items():
        assert samples[("groundcontrol_satellites", (("status", status),))] == n
    for progress in fleetview.PROGRESS:
        key = ("groundcontrol_group_members", (("group", "shops"), ("progress", progress)))
        assert samples[key] == shops["rollout"][progress]
    assert shops["rollout"] == {
        "current": 1,
        "behind": 1,
        "failing": 1,
        "offline": 1,
        "pending": 0,
        "revoked": 1,
        "members": 5,
    }


async def test_paging_past_the_first_page(
    client: httpx.AsyncClient, op: dict[str, str], services: Services
) -> None:
    async with services.store.transaction() as q:
        await q.insert_group("big", "", (), 1)
    for i in range(fleetview.PAGE_SIZE + 3):
        async with services.store.transaction() as q:
            await q.insert_satellite(f"s-{i:03d}", ("big",), {}, {}, 1)
    r = await client.get("/api/v1/dashboard/groups/big", params={"page": "2"}, headers=op)
    group = r.json()
    assert group["rollout"]["pending"] == fleetview.PAGE_SIZE + 3 and group["pages"] == 2
    assert [m["name"] for m in group["members"]] == ["s-050", "s-051", "s-052"]
    r = await client.get("/api/v1/dashboard", params={"page": "2"}, headers=op)
    view = r.json()
    assert view["matched"] == fleetview.PAGE_SIZE + 3 and view["pages"] == 2
    assert [s["name"] for s in view["satellites"]] == [
        f"s-{i:03d}" for i in range(fleetview.PAGE_SIZE, fleetview.PAGE_SIZE + 3)
    ]
    page = await client.get("/dashboard", params={"page": "2", "refresh": "30"}, headers=op)
    assert 'id="prev" href="/dashboard?sort=name&amp;refresh=30&amp;page=1"' in page.text
    assert 'id="next"' not in page.text
    assert '<meta http-equiv="refresh" content="30">' in page.text
    page = await client.get("/dashboard", params={"refresh": "1"}, headers=op)
    assert "http-equiv" not in page.text  # only the offered periods


async def test_satellite_view_strip_versions_cache_outbox(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock, services: Services
) -> None:
    issued = clock.now
    token = await _make(client, op, "train-7")
    sat = SimSatellite(client, "train-7")
    await sat.register(token, clock.now)
    await sat.post([sat.checkin(clock.now, 1, (GOOD,))])
    clock.advance(3 * 3600)  # dark for three hours
    await sat.post([sat.checkin(clock.now, 1, (GOOD,))])
    # reports signed an hour apart, carried in together later (an outbox drained late)
    late = [sat.checkin(clock.now + 600, 1), sat.checkin(clock.now + 1200, 1)]
    clock.advance(2 * 3600)
    await sat.post(late)
    view = (await client.get("/api/v1/dashboard/satellites/train-7", headers=op)).json()
    kinds = [s["kind"] for s in view["strip"]["segments"]]
    # only when a report was signed counts: a late batch may have come on a USB stick
    assert kinds == ["unknown", "online", "offline", "online", "late", "offline"]
    (offline_first, _second) = view["strip"]["offline"]
    assert offline_first["seconds"] == 3 * 3600 - services.config.offline_after
    assert view["strip"]["late_reports"] == 2
    assert view["versions"][0]["version"] == 1 and view["versions"][0]["applied_at"] is not None
    assert view["cache"] == {"used": 1000, "max": 10_000, "share": 0.1, "warning": False}
    assert view["outbox"] == {"depth": 0, "dropped": 0}
    assert view["state"]["warning"] == "ok"
    # the page draws the same numbers
    page = await client.get("/dashboard/satellites/train-7", headers=op)
    assert page.status_code == 200
    assert page.text.count('data-kind="offline" data-start=') == 2
    assert 'id="late">2 report(s)' in page.text
    # the last hour: the tail of the late reports' cover, then offline
    r = await client.get(
        "/api/v1/dashboard/satellites/train-7", params={"window": "1h"}, headers=op
    )
    assert [s["kind"] for s in r.json()["strip"]["segments"]] == ["late", "offline"]
    r = await client.get(
        "/api/v1/dashboard/satellites/train-7", params={"window": "24h"}, headers=op
    )
    assert len(r.json()["strip"]["offline"]) == 2
    r = await client.get("/dashboard/satellites/train-7", params={"window": "2d"}, headers=op)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_window"
    clock.now = issued + services.config.state_expires - 3600  # the applied state, nearly
    view = (await client.get("/api/v1/dashboard/satellites/train-7", headers=op)).json()
    assert view["state"]["warning"] == "soon"
    clock.now = issued + services.config.state_expires
    view = (await client.get("/api/v1/dashboard/satellites/train-7", headers=op)).json()
    assert view["state"]["warning"] == "expired"
    page = await client.get("/dashboard/satellites/train-7", headers=op)
    assert 'class="expiry-expired"' in page.text


async def test_migration_backfills_failing_images_and_contacts(db: Database) -> None:
    """A database at schema 3 with a failing report gets the count on upgrade."""
    async with db.transaction() as tx:
        await tx.execute("DELETE FROM schema_migrations WHERE version = 4")
        await tx.execute("DROP TABLE group_history")
        await tx.execute("DROP TABLE contacts")
        await tx.execute("DROP TABLE audit_log")
        await tx.execute("DROP INDEX satellites_last_seen")
        await tx.execute("ALTER TABLE satellites DROP COLUMN failing_images")
        report = {"images": [BAD.to_dict(), BAD.to_dict(), GOOD.to_dict()]}
        await tx.execute(
            "INSERT INTO satellites (name, labels, config, created_at, updated_at, last_report) "
            "VALUES ('s', '{}', '{}', 1, 1, ?)",
            json.dumps(report),
        )
        # check-ins: two in contact, one carried in late
        for seq, sent, received in ((1, 1000, 1001), (2, 1060, 1061), (3, 2000, 9000)):
            stamp = datetime.fromtimestamp(sent, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            await tx.execute(
                "INSERT INTO checkins (satellite, seq, received_at, state_version, report, "
                "envelope) VALUES ('s', ?, ?, 0, ?, '{}')",
                seq,
                received,
                json.dumps({"sent_at": stamp}),
            )
    assert await migrate(db) == [MIGRATIONS[-1].version]
    async with db.transaction() as tx:
        row = await tx.fetchone("SELECT failing_images FROM satellites WHERE name = 's'")
        contacts = await tx.fetchall(
            "SELECT kind, start_at, end_at FROM contacts WHERE satellite = 's' ORDER BY start_at"
        )
    assert row == {"failing_images": 2}
    assert contacts == [
        {"kind": "online", "start_at": 1000, "end_at": 1060},
        {"kind": "late", "start_at": 2000, "end_at": 2000},
    ]


# --- actions from the page ------------------------------------------------------------


@pytest.fixture
def gc_config(gc_config: Config, central_registry: CentralRegistry) -> Config:
    return dataclasses.replace(gc_config, registry_url=central_registry.url)


async def _post(client: httpx.AsyncClient, path: str, csrf: str, **fields: str) -> httpx.Response:
    body = httpx.QueryParams({"csrf": csrf, **fields})
    return await client.post(path, content=str(body).encode(), headers={**ORIGIN, **FORM})


async def test_actions_leave_audit_entries_and_group_history(
    client: httpx.AsyncClient,
    op: dict[str, str],
    operator_token: str,
    clock: FakeClock,
    store: Store,
) -> None:
    await client.post("/api/v1/groups", json={"name": "shops"}, headers=op)
    await _make(client, op, "shop-1", groups=["shops"])
    await _make(client, op, "shop-2", groups=["shops"])
    csrf = await login(client, operator_token)

    clock.advance(10)
    r = await _post(client, "/dashboard/groups/shops/publish", csrf, images="library/app:v1\n")
    assert r.status_code == 200, r.text
    assert "2 state(s) published" in r.text
    clock.advance(10)
    r = await _post(
        client, "/dashboard/groups/shops/publish", csrf, images="library/app:v1 linux/amd64"
    )
    assert "2 state(s) published" in r.text
    clock.advance(10)
    r = await _post(client, "/dashboard/groups/shops/publish", csrf, images="nope nope nope")
    assert r.status_code == 400 and "Refused" in r.text

    group = (await client.get("/api/v1/dashboard/groups/shops", headers=op)).json()
    changes = [(h["change"], h["published"], h["versions"]) for h in group["history"]]
    assert changes == [
        ("library/app:v1 platforms linux/amd64", 2, "3"),
        ("+library/app:v1", 2, "2"),
        ("created with 0 image(s)", 0, None),
    ]
    assert group["images"][0]["platforms"] == ["linux/amd64"]

    r = await _post(client, "/dashboard/satellites/shop-1/join-token", csrf)
    token = re.search(r"gcj_[0-9a-f]{16}\.[\w-]+", r.text)
    assert r.status_code == 200 and token is not None
    r = await _post(client, "/dashboard/satellites/shop-1/publish", csrf)
    assert "1 state(s) published, version(s) 4-4" in r.text
    r = await _post(client, "/dashboard/satellites/shop-1/rotate", csrf)
    assert r.status_code == 422 and "no Harbor configured" in r.text
    # revocation needs the typed name; the wrong one changes nothing
    confirm = await client.get("/dashboard/satellites/shop-2/revoke")
    assert 'name="confirm"' in confirm.text
    r = await _post(client, "/dashboard/satellites/shop-2/revoke", csrf, confirm="shop-1")
    assert r.status_code == 400 and "type the satellite" in r.text
    r = await _post(client, "/dashboard/satellites/shop-2/revoke", csrf, confirm="shop-2")
    assert r.status_code == 200 and "shop-2 revoked" in r.text
    # forged: another origin, no CSRF token, a Bearer token instead of the session
    for headers, body in (
        ({"origin": "http://evil.example", **FORM}, f"csrf={csrf}&confirm=shop-1"),
        ({**ORIGIN, **FORM}, "confirm=shop-1"),
        ({**ORIGIN, **FORM, **op}, "csrf=x&confirm=shop-1"),
    ):
        r = await client.post(
            "/dashboard/satellites/shop-1/revoke", content=body.encode(), headers=headers
        )
        assert r.status_code == 403, r.text

    audit = (await client.get("/api/v1/audit", headers=op)).json()
    entries = [(e["actor"], e["action"], e["target"]) for e in audit["entries"]]
    assert entries == [
        ("test operator", "revoke", "satellite/shop-2"),
        ("test operator", "publish", "satellite/shop-1"),
        ("test operator", "join_token", "satellite/shop-1"),
        ("test operator", "publish", "group/shops"),
        ("test operator", "publish", "group/shops"),
    ]
    assert token.group(0) not in json.dumps(audit)  # the secret is shown once, never kept
    async with store.transaction() as q:
        assert (await q.satellite("shop-1")).revoked_at is None
        assert (await q.satellite("shop-2")).revoked_at is not None
    page = await client.get("/dashboard/audit")
    assert page.text.count('<tr data-action="') == 5


async def test_contact_history_merges_runs_across_batches_and_forgets(store: Store) -> None:
    async with store.transaction() as q:
        await q.insert_satellite("s", (), {}, {}, 1)
    batches = [
        [(1000, 1100, "online")],
        [(1150, 1200, "online"), (1300, 1300, "late")],
        [(5000, 5000, "online")],  # after an outage: a run of its own
        [(900, 950, "online")],  # older reports that came in last join the first run
        [(1200, 4950, "online")],  # and a run that bridges the gap merges all three
    ]
    seen = []
    for runs in batches:
        async with store.transaction() as q:
            await q.record_contacts("s", runs, 60, 0)
            rows, first = await q.contacts_since("s", 0)
        seen.append([(r["kind"], r["start_at"], r["end_at"]) for r in rows])
        assert first == min(r["start_at"] for r in rows)
    assert seen[1] == [("online", 1000, 1200), ("late", 1300, 1300)]
    assert seen[2][-1] == ("online", 5000, 5000)
    assert seen[3][0] == ("online", 900, 1200)
    assert seen[4] == [("online", 900, 5000), ("late", 1300, 1300)]
    async with store.transaction() as q:
        await q.record_contacts("s", [(6000, 6000, "online")], 60, 5500)  # forget before
        rows, first = await q.contacts_since("s", 0)
    assert [(r["start_at"], r["end_at"]) for r in rows] == [(6000, 6000)] and first == 6000

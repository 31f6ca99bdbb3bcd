"""The dashboard as an operator sees it in headless chromium, fed by real satellite
processes: the rollout bar after a publish from the page, an offline period in the
connectivity strip, search and paging, a revocation with its confirmation, the audit log.
A screenshot of each page is kept in test-artifacts/dashboard/."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from tests.groundcontrol.browser import Browser, artifacts_dir
from tests.groundcontrol.test_dashboard import parse
from tests.support.fleet import Fleet, state_version, wait_until

ROOT = Path(__file__).resolve().parents[2]
GC_CONFIG = '[status]\nstale_after = "3s"\noffline_after = "5s"\n'


def rollout(html: str, where: str) -> dict[str, int]:
    """The data- counts of the first rollout bar after ``where`` in the page."""
    start = html.index(where)
    svg = html[start : html.index("</svg>", start)]
    return {
        k: int(v)
        for k, v in re.findall(
            r'data-(current|behind|failing|offline|pending|revoked)="(\d+)"', svg
        )
    }


def test_operator_follows_a_rollout_and_an_outage(tmp_path: Path) -> None:
    shots = artifacts_dir(ROOT / "test-artifacts") / "dashboard"
    fleet = Fleet(tmp_path, config=GC_CONFIG).start()
    try:
        fleet.create_group("shops")
        tokens = {
            name: fleet.create_satellite(name, "shops", {"checkin_interval": "1s"})
            for name in ("shop-1", "shop-2", "shop-3", "shop-4")
        }
        sats = {name: fleet.satellite(name) for name in ("shop-1", "shop-2", "shop-3")}
        for name, sat in sats.items():
            fleet.register(sat, tokens[name])
        for i in range(60):  # enough for two pages
            fleet.api(
                "POST", "/api/v1/satellites", {"name": f"kiosk-{i:02d}", "labels": {"site": "west"}}
            )
        with sats["shop-1"], sats["shop-2"], Browser(tmp_path) as browser:
            browser.get(f"{fleet.url}/dashboard/login")
            browser.screenshot(shots / "login.png")
            browser.type("input[name=token]", fleet.token)
            browser.click("#login button")
            browser.wait_url(f"{fleet.url}/dashboard")

            # publish from the group page; the running satellites follow (long-poll) and
            # report the new version, which the rollout bar counts
            browser.get(f"{fleet.url}/dashboard/groups/shops")
            browser.click("#publish-group button")
            notice = wait_until(lambda: parse(browser.source()).text.get("notice"), what="notice")
            assert "4 state(s) published" in notice, notice
            for sat in (sats["shop-1"], sats["shop-2"]):
                wait_until(lambda sat=sat: state_version(sat) == 2, what="version 2 applied")

            def landed() -> dict[str, int] | None:
                browser.get(f"{fleet.url}/dashboard/groups/shops")
                counts = rollout(browser.source(), 'id="rollout"')
                return counts if counts["current"] == 2 else None

            counts = wait_until(landed, timeout=30, what="the rollout bar's count")
            assert counts == {
                "current": 2,
                "behind": 0,
                "failing": 0,
                "offline": 1,  # shop-3: registered, never ran
                "pending": 1,  # shop-4: never registered
                "revoked": 0,
            }
            group = parse(browser.source())
            assert group.rows["shop-1"]["applied"] == "2"
            assert group.rows["shop-3"]["status"] == "offline"
            assert "re-published by ops" in group.text["history"]
            browser.screenshot(shots / "group.png")

            # the fleet page: the same numbers per group, search, paging
            browser.get(f"{fleet.url}/dashboard")
            page = browser.source()
            assert rollout(page, 'data-group="shops"') == counts
            fleet_dom = parse(page)
            assert fleet_dom.text["total"] == "64 satellite(s)"
            assert fleet_dom.text["page"] == "page 1 of 2" and len(fleet_dom.rows) == 50
            browser.screenshot(shots / "fleet.png")
            browser.click("#next")
            browser.wait_url(f"{fleet.url}/dashboard?sort=name&page=2")
            page_two = parse(browser.source())
            assert page_two.text["page"] == "page 2 of 2"
            assert sorted(page_two.rows)[-4:] == ["shop-1", "shop-2", "shop-3", "shop-4"]
            browser.type("input[name=q]", "shop")
            browser.click("#search button")
            browser.wait_url(f"{fleet.url}/dashboard?q=shop&status=&group=&sort=name")
            found = parse(browser.source())
            assert sorted(found.rows) == ["shop-1", "shop-2", "shop-3", "shop-4"]
            browser.get(f"{fleet.url}/dashboard?q=site%3Dwest&status=pending&page=2")
            found = parse(browser.source())
            assert found.text["total"] == "60 satellite(s)" and len(found.rows) == 10

            # an outage: shop-2 goes dark past offline_after, then comes back
            sats["shop-2"].stop()
            wait_until(
                lambda: fleet.api("GET", "/api/v1/satellites/shop-2")["status"] == "offline",
                timeout=30,
                what="shop-2 offline",
            )
            time.sleep(2)  # dark for a while longer than offline_after
            sats["shop-2"].start()
            wait_until(
                lambda: fleet.api("GET", "/api/v1/satellites/shop-2")["status"] == "online",
                timeout=30,
                what="shop-2 back",
            )
            browser.get(f"{fleet.url}/dashboard/satellites/shop-2")
            source = browser.source()
            strip = [
                (r["seq"], r["report"]["sent_at"], r["received_at"])
                for r in fleet.checkins("shop-2")
            ]
            assert re.search(r'<rect class="kind-offline" data-kind="offline"', source), strip
            periods = parse(source).text["offline-periods"]
            assert re.search(r"\d{4}-\d\d-\d\dT[\d:]+Z to \d{4}-", periods), periods
            browser.screenshot(shots / "satellite.png")

            # a join token, and a revocation behind its confirmation
            browser.get(f"{fleet.url}/dashboard/satellites/shop-4")
            browser.click("#join-token button")
            browser.wait_url(f"{fleet.url}/dashboard/satellites/shop-4/join-token")
            assert re.search(r"gcj_[0-9a-f]{16}\.", parse(browser.source()).text["notice"])
            browser.get(f"{fleet.url}/dashboard/satellites/shop-3")
            browser.click("#revoke")
            browser.wait_url(f"{fleet.url}/dashboard/satellites/shop-3/revoke")
            browser.screenshot(shots / "revoke.png")
            browser.type("input[name=confirm]", "shop-3")
            browser.click("#revoke-confirm button")
            browser.wait_title("shop-3 · Ground Control")  # the form posts to its own URL
            assert "shop-3 revoked" in parse(browser.source()).text["notice"]
            assert fleet.api("GET", "/api/v1/satellites/shop-3")["status"] == "revoked"

            browser.get(f"{fleet.url}/dashboard/audit")
            audit = browser.source()
            rows = re.findall(
                r'<td class="actor">([^<]*)</td><td class="action">([^<]*)</td>'
                r'<td class="target">([^<]*)</td>',
                audit,
            )
            assert rows == [
                ("ops", "revoke", "satellite/shop-3"),
                ("ops", "join_token", "satellite/shop-4"),
                ("ops", "publish", "group/shops"),
            ]
            browser.screenshot(shots / "audit.png")
        # the JSON twin has the numbers a scraper reads
        twin = httpx.get(
            f"{fleet.url}/api/v1/dashboard",
            headers={"Authorization": f"Bearer {fleet.token}"},
            timeout=30,
        ).json()
        (shops,) = (g for g in twin["groups"] if g["name"] == "shops")
        assert shops["rollout"]["revoked"] == 1 and twin["counts"]["revoked"] == 1
    finally:
        fleet.stop()

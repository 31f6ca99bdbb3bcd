"""Names and numbers from outside, at Ground Control's edges (issue 12 items 2 and 3).

Every validated name is tried with a trailing newline (what ``re.match`` with ``$`` let
through), a carriage return and surrounding spaces; every number with digits that
``str.isdigit()`` accepts but ``int()`` refuses or reads differently, and with more
digits than the database holds. The contract's stdlib-only copy of the registry grammar
is held to registry_proxy.names on one corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from groundcontrol.cli import _config_values
from groundcontrol.config import load_config, parse_duration, parse_int
from groundcontrol.contract import (
    CHECKIN_PAYLOAD_TYPE,
    CheckIn,
    ImageDescriptor,
    MalformedDocument,
    canonical_json,
    sign_envelope,
)
from groundcontrol.errors import BadRequest
from groundcontrol.models import parse_config_overrides, parse_labels, parse_reference
from registry_proxy import names
from registry_proxy.units import INT64_MAX, ConfigError, parse_listen, parse_size
from tests.groundcontrol.conftest import FakeClock
from tests.groundcontrol.fleet import SimSatellite, at
from tests.groundcontrol.test_api import error, registered

GOOD = "sha256:" + "ab" * 32


def decorated(value: str) -> list[str]:
    return [value + "\n", value + "\r", value + "\r\n", value + " ", " " + value, "\n" + value]


# --- the contract's copy agrees with registry_proxy.names ------------------------------------

NAMES = [
    "a",
    "library/nginx",
    "team/app__x/a-b.c/d---e",
    "docker.io/library/nginx",
    "localhost:5000/team/app",
    "registry.example.com:443/x",
    "a" * 255,
    "h:5000/" + "a" * 248,
    "",
    "Library/nginx",
    "a//b",
    "a/",
    "/a",
    "-a",
    "a-",
    "a..b",
    "a___b",
    "a" * 256,
    "h:5000/" + "a" * 249,
    "localhost/x:5000",
    "host:/x",
    "host:123456/x",
    "\uff4cibrary/x",
    "library/x:v1",
    "library/x@" + GOOD,
    *decorated("library/nginx"),
    *decorated("localhost:5000/x"),
]
TAGS = [
    "latest",
    "v1.2.3-rc_1",
    "_",
    "T" * 128,
    "",
    "-v1",
    ".v1",
    "T" * 129,
    "v1/2",
    "v1:2",
    "v\u0661",
    "tàg",
    *decorated("v1"),
]
DIGESTS = [
    GOOD,
    "sha512:" + "a" * 128,
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha512:" + "a" * 64,
    "md5:" + "a" * 32,
    "sha256:" + "g" * 64,
    "sha256" + "a" * 64,
    *decorated(GOOD),
]
# The contract's host prefix is "[A-Za-z0-9.-]+:[0-9]{1,5}/": laxer than distribution's
# domain grammar, and without IPv6 literals. groundcontrol/contract.py is being split by
# the lead, who tightens it to registry_proxy.names.HOST; these then agree (XPASS fails).
CONTRACT_HOST_DIFFERS = [
    "-host-:5000/x",
    "a..b:5000/x",
    ".:5000/x",
    "[::1]:5000/x",
]


def contract_accepts(field: str, value: str) -> bool:
    image: dict[str, Any] = {
        "repository": "library/x",
        "tag": "v1",
        "digest": GOOD,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "size": 1,
        field: value,
    }
    try:
        ImageDescriptor(**image)
    except MalformedDocument:
        return False
    return True


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [("repository", v, names.is_qualified_name(v)) for v in NAMES]
    + [("tag", v, names.is_tag(v)) for v in TAGS]
    + [("digest", v, names.is_digest(v)) for v in DIGESTS],
)
def test_the_contract_agrees_with_registry_proxy_names(
    field: str, value: str, accepted: bool
) -> None:
    assert contract_accepts(field, value) is accepted


def test_the_corpus_holds_both_answers() -> None:
    for values, check in [
        (NAMES, names.is_qualified_name),
        (TAGS, names.is_tag),
        (DIGESTS, names.is_digest),
    ]:
        assert {check(v) for v in values} == {True, False}


@pytest.mark.parametrize("value", CONTRACT_HOST_DIFFERS)
def test_the_contract_agrees_on_registry_hosts(value: str) -> None:
    assert contract_accepts("repository", value) is names.is_qualified_name(value)


# --- pure validators ---------------------------------------------------------------------------


def test_references_with_anything_around_them_are_refused() -> None:
    for good in ("library/app:v1", f"library/app@{GOOD}", "library/app"):
        parse_reference(good)
        for bad in decorated(good):
            with pytest.raises(BadRequest):
                parse_reference(bad)
    with pytest.raises(BadRequest):
        parse_reference("a" * 256 + ":v1")  # the contract refuses names past 255


def test_label_keys_with_anything_around_them_are_refused() -> None:
    assert parse_labels({"region/zone": "eu"}) == {"region/zone": "eu"}
    for bad in decorated("region"):
        with pytest.raises(BadRequest):
            parse_labels({bad: "eu"})


def test_upstreams_with_anything_around_their_name_or_url_are_refused() -> None:
    good = {"name": "docker.io", "url": "https://registry-1.docker.io"}
    assert parse_config_overrides({"upstreams": [good]})["upstreams"][0]["name"] == "docker.io"
    bad_upstreams = [{**good, "name": bad} for bad in decorated("docker.io")]
    bad_upstreams += [{**good, "url": bad} for bad in decorated(good["url"])]
    bad_upstreams += [
        {**good, "url": "https://registry-1.docker.io/v2"},
        {**good, "url": "https://user@registry-1.docker.io"},
        {**good, "name": "docker.io:٣"},
    ]
    for upstream in bad_upstreams:
        with pytest.raises(BadRequest) as info:
            parse_config_overrides({"upstreams": [upstream]})
        assert info.value.code == "invalid_config"


def test_platforms_past_the_contracts_bound_are_refused() -> None:
    from groundcontrol.models import parse_image

    assert parse_image({"reference": "a:1", "platforms": ["linux/arm64/v8"]}).platforms
    for bad in ["linux/" + "a" * 33, "linux/amd64\n", *decorated("linux/amd64")]:
        with pytest.raises(BadRequest):
            parse_image({"reference": "a:1", "platforms": [bad]})


# --- numbers -----------------------------------------------------------------------------------

# each of these is str.isdigit(); int() raises on the first two and reads the third as 3
NOT_ASCII_DIGITS = ["²", "①", "٣"]


def test_parse_int_takes_ascii_digits_within_bounds() -> None:
    assert parse_int("0") == 0
    assert parse_int(str(INT64_MAX)) == INT64_MAX
    assert parse_int("007", 1, 10) == 7
    for bad in [*NOT_ASCII_DIGITS, "", "-1", "+1", " 1", "1 ", "1\n", "1_000", "1.0", "0x10"]:
        with pytest.raises(ValueError):
            parse_int(bad)
    for bad in [str(INT64_MAX + 1), "9" * 5000]:
        with pytest.raises(ValueError, match="between 0 and"):
            parse_int(bad)
    with pytest.raises(ValueError):
        parse_int("0", 1, 10)


def test_durations_and_sizes_are_ascii_and_bounded() -> None:
    assert parse_duration(" 90s ") == 90
    assert parse_size("50GIB") == 50 * 2**30
    assert parse_size(str(INT64_MAX)) == INT64_MAX
    for parse in (parse_duration, parse_size):
        for bad in [
            *(d + "s" for d in NOT_ASCII_DIGITS),
            *NOT_ASCII_DIGITS,
            "9" * 5000,
            "1\n",
            2**63,
            -1,
        ]:
            with pytest.raises(ValueError):
                parse(bad)
    for bad_size in ["99999999TiB", str(INT64_MAX + 1), "1KiB\n"]:
        with pytest.raises(ValueError):
            parse_size(bad_size)
    # added to a timestamp and stored as one: a century is the most a duration may be
    with pytest.raises(ValueError):
        parse_duration("36600d")
    with pytest.raises(ValueError):
        parse_listen("127.0.0.1:٣")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"GROUNDCONTROL_CHECKINS_KEPT": "٣"}, "checkins.kept"),
        ({"GROUNDCONTROL_CHECKINS_KEPT": "9" * 20}, "checkins.kept"),
        ({"GROUNDCONTROL_CHECKINS_KEPT": "-5"}, "checkins.kept"),
        ({"GROUNDCONTROL_STATUS_STALE_AFTER": "٣m"}, "status.stale_after"),
        ({"GROUNDCONTROL_DEFAULTS_CACHE_MAX_BYTES": "9" * 30}, "defaults.cache_max_bytes"),
        ({"GROUNDCONTROL_SERVER_LISTEN": "127.0.0.1:²"}, "server.listen"),
        ({"GROUNDCONTROL_REGISTRY_URL": "http://registry.example\n"}, "registry.url"),
        ({"GROUNDCONTROL_REGISTRY_URL": "http://registry.example/v2"}, "registry.url"),
        ({"GROUNDCONTROL_STATE_REGISTRY_URL": "https://h.example:8443\n"}, "state_registry.url"),
        ({"GROUNDCONTROL_STATE_REGISTRY_REPOSITORY": "fleet/state\n"}, "state_registry.repository"),
        ({"GROUNDCONTROL_STATE_REGISTRY_REPOSITORY": "a" * 192}, "state_registry.repository"),
    ],
)
def test_bad_numbers_and_names_in_the_config_name_the_key(
    tmp_path: Path, env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, environ=env)


def test_config_numbers_in_range_still_load() -> None:
    config = load_config(
        None,
        environ={
            "GROUNDCONTROL_CHECKINS_KEPT": "30",
            "GROUNDCONTROL_REGISTRY_URL": "http://[::1]:5000/",
            "GROUNDCONTROL_STATE_REGISTRY_REPOSITORY": "a" * 191,
        },
    )
    assert (config.checkins_kept, config.registry_url) == (30, "http://[::1]:5000")


def test_the_cli_sends_what_is_not_an_ascii_number_as_text() -> None:
    values = _config_values(["state_interval=90", "checkin_interval=²", "cache_max_bytes="])
    assert values == {"state_interval": 90, "checkin_interval": "²", "cache_max_bytes": None}
    # and the server refuses it with the key named, not with a traceback
    with pytest.raises(BadRequest, match=r"config\.checkin_interval"):
        parse_config_overrides(values)


# --- through the API -------------------------------------------------------------------------


async def test_names_with_anything_around_them_are_refused_by_the_api(
    client: httpx.AsyncClient, op: dict[str, str]
) -> None:
    r = await client.post("/api/v1/groups", json={"name": "g"}, headers=op)
    assert r.status_code == 201, r.text
    for bad in decorated("sat-a"):
        r = await client.post("/api/v1/groups", json={"name": bad}, headers=op)
        assert r.status_code == 400 and error(r) == "invalid_group", (bad, r.text)
        r = await client.post("/api/v1/satellites", json={"name": bad}, headers=op)
        assert r.status_code == 400 and error(r) == "invalid_satellite", (bad, r.text)
        r = await client.post("/api/v1/satellites", json={"name": "s", "groups": [bad]}, headers=op)
        assert r.status_code == 400 and error(r) == "invalid_group", (bad, r.text)
        r = await client.post(
            "/api/v1/satellites", json={"name": "s", "labels": {bad: "x"}}, headers=op
        )
        assert r.status_code == 400 and error(r) == "invalid_labels", (bad, r.text)
        r = await client.post(
            "/api/v1/satellites",
            json={"name": "s", "config": {"upstreams": [{"name": bad, "url": "https://x.io"}]}},
            headers=op,
        )
        assert r.status_code == 400 and error(r) == "invalid_config", (bad, r.text)
        r = await client.put("/api/v1/groups/g", json={"images": [f"{bad}:v1"]}, headers=op)
        assert r.status_code == 400 and error(r) == "invalid_image", (bad, r.text)
    assert [
        g["name"] for g in (await client.get("/api/v1/groups", headers=op)).json()["groups"]
    ] == ["g"]
    assert (await client.get("/api/v1/satellites", headers=op)).json()["satellites"] == []


async def test_an_upstream_credential_for_a_look_alike_registry_is_refused(
    client: httpx.AsyncClient, op: dict[str, str]
) -> None:
    body = {"username": "u", "password": "p"}
    for bad in ["evil.example%0A", "evil.example%0D", "evil.example%20", "%20evil.example"]:
        for method in ("PUT", "DELETE"):
            r = await client.request(
                method,
                f"/api/v1/upstream-credentials/{bad}",
                content=json.dumps(body) if method == "PUT" else None,
                headers={**op, "content-type": "application/json"},
            )
            assert r.status_code == 400 and error(r) == "invalid_registry", (bad, r.text)
    listing = (await client.get("/api/v1/upstream-credentials", headers=op)).json()
    assert listing["credentials"] == []
    r = await client.put("/api/v1/upstream-credentials/evil.example:5000", json=body, headers=op)
    assert r.status_code == 200, r.text


async def test_numbers_in_queries_and_paths_are_ascii_and_bounded(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> None:
    sat = await registered(client, op, clock, "s1")
    base = "/api/v1/satellites/s1"
    for value in [*NOT_ASCII_DIGITS, "9" * 5000, str(INT64_MAX + 1), " 5", "5\n", "-1"]:
        for path, params, code in [
            (f"{base}/checkins", {"limit": value}, "invalid_limit"),
            (f"{base}/checkins", {"before": value}, "invalid_before"),
            (f"{base}/state", {"have": value}, "invalid_have"),
        ]:
            r = await client.get(path, params=params, headers=op)
            assert r.status_code == 400 and error(r) == code, (path, value, r.text)
        r = await client.get(f"/api/v1/roots/{quote(value)}", headers=sat.headers)
        assert r.status_code == 400 and error(r) == "invalid_version", (value, r.text)
    r = await client.get(f"{base}/state", params={"have": str(INT64_MAX)}, headers=op)
    assert r.status_code == 304
    r = await client.get(f"{base}/checkins", params={"before": str(INT64_MAX)}, headers=op)
    assert r.status_code == 200
    r = await client.get(f"/api/v1/roots/{INT64_MAX}", headers=sat.headers)
    assert r.status_code == 404
    assert (await client.get("/api/v1/roots/1", headers=sat.headers)).status_code == 200


def signed_checkin(sat: SimSatellite, now: float, **payload: Any) -> dict[str, Any]:
    """A correctly signed check-in whose payload fields are set past the model's checks."""
    report = CheckIn(
        satellite=sat.name,
        seq=1,
        sent_at=at(now),
        state_version=0,
        images=(),
        cache_bytes_used=0,
        cache_bytes_max=0,
    ).to_dict()
    report.update(payload)
    envelope = sign_envelope(CHECKIN_PAYLOAD_TYPE, canonical_json(report), [sat.key])
    out: dict[str, Any] = json.loads(envelope.to_json())
    return out


async def test_a_signed_checkin_past_int64_is_one_rejected_entry(
    client: httpx.AsyncClient, op: dict[str, str], clock: FakeClock
) -> None:
    sat = await registered(client, op, clock, "s1")
    r = await sat.post(
        [
            signed_checkin(sat, clock.now, seq=2**63),
            signed_checkin(sat, clock.now, seq=5, state_version=2**63),
            signed_checkin(sat, clock.now, seq=INT64_MAX, state_version=INT64_MAX),
            sat.checkin(clock.now, 1, seq=7),
        ]
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert [(e["index"], e["code"]) for e in result["rejected"]] == [
        (0, "malformed"),
        (1, "malformed"),
    ]
    assert result["accepted"] == [7, INT64_MAX]
    # the batch can be sent again (an outbox retry): the same answer, never a 500
    again = await sat.post([signed_checkin(sat, clock.now, seq=2**63)])
    assert again.status_code == 200 and again.json()["rejected"][0]["index"] == 0

"""Bad input: every client mistake gets the spec's status and error code, never a 500."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from registry_proxy.store import ContentStore
from tests.registry_proxy.conftest import push_blob, push_image, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GOOD = sha256(b"x")
UPLOAD = "0b6bd2a6-7e5b-4e36-a1b4-0e3c9b5e3f52"
EMPTY_CONFIG = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": sha256(b"{}"),
    "size": 2,
}
# a manifest that is valid in every way but the one each case breaks
EMPTY_IMAGE = json.dumps(
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": EMPTY_CONFIG, "layers": []}
).encode()

CASES: list[tuple[str, str, str, bytes | None, dict[str, str], int, str]] = [
    # (case, method, path, body, headers, status, code)
    ("short digest", "GET", "/v2/r/blobs/sha256:abc", None, {}, 400, "DIGEST_INVALID"),
    ("upper-case hex", "GET", "/v2/r/blobs/sha256:" + "A" * 64, None, {}, 400, "DIGEST_INVALID"),
    ("no algorithm", "GET", "/v2/r/blobs/:" + "a" * 64, None, {}, 400, "DIGEST_INVALID"),
    (
        "unsupported algorithm",
        "GET",
        "/v2/r/blobs/md5:" + "a" * 32,
        None,
        {},
        400,
        "DIGEST_INVALID",
    ),
    (
        "sha512 of sha256 length",
        "GET",
        "/v2/r/blobs/sha512:" + "a" * 64,
        None,
        {},
        400,
        "DIGEST_INVALID",
    ),
    ("unknown blob", "GET", f"/v2/r/blobs/{GOOD}", None, {}, 404, "BLOB_UNKNOWN"),
    ("unknown blob HEAD", "HEAD", f"/v2/r/blobs/{GOOD}", None, {}, 404, ""),
    ("unknown manifest", "GET", "/v2/r/manifests/latest", None, {}, 404, "MANIFEST_UNKNOWN"),
    (
        "unknown manifest digest",
        "GET",
        f"/v2/r/manifests/{GOOD}",
        None,
        {},
        404,
        "MANIFEST_UNKNOWN",
    ),
    ("encoded slash", "GET", "/v2/a%2F..%2Fb/manifests/latest", None, {}, 400, "NAME_INVALID"),
    ("encoded dots", "GET", "/v2/%2e%2e/manifests/latest", None, {}, 400, "NAME_INVALID"),
    ("upper-case name", "GET", "/v2/Library/app/manifests/latest", None, {}, 400, "NAME_INVALID"),
    (
        "name too long",
        "GET",
        "/v2/" + "a" * 256 + "/manifests/latest",
        None,
        {},
        400,
        "NAME_INVALID",
    ),
    ("bad tag", "GET", "/v2/r/manifests/-bad", None, {}, 400, "MANIFEST_INVALID"),
    ("tag too long", "GET", "/v2/r/manifests/" + "t" * 129, None, {}, 400, "MANIFEST_INVALID"),
    ("unknown endpoint", "GET", "/v2/r/whatever", None, {}, 404, "NOT_FOUND"),
    ("unknown path outside /v2/", "GET", "/v3/r", None, {}, 404, "NOT_FOUND"),
    ("method not allowed", "POST", "/v2/r/manifests/latest", b"", {}, 405, "UNSUPPORTED"),
    ("POST on the catalog", "POST", "/v2/_catalog", b"", {}, 405, "UNSUPPORTED"),
    ("DELETE on the base", "DELETE", "/v2/", None, {}, 405, "UNSUPPORTED"),
    ("POST on /metrics", "POST", "/metrics", b"", {}, 405, "UNSUPPORTED"),
    (
        "bad upload id",
        "PATCH",
        "/v2/r/blobs/uploads/not-a-uuid",
        b"x",
        {},
        404,
        "BLOB_UPLOAD_UNKNOWN",
    ),
    (
        "unknown upload",
        "PATCH",
        f"/v2/r/blobs/uploads/{UPLOAD}",
        b"x",
        {},
        404,
        "BLOB_UPLOAD_UNKNOWN",
    ),
    ("put without digest", "PUT", f"/v2/r/blobs/uploads/{UPLOAD}", b"x", {}, 400, "DIGEST_INVALID"),
    (
        "monolithic bad digest",
        "POST",
        "/v2/r/blobs/uploads/?digest=sha256:zz",
        b"x",
        {},
        400,
        "DIGEST_INVALID",
    ),
    (
        "monolithic wrong digest",
        "POST",
        f"/v2/r/blobs/uploads/?digest={GOOD}",
        b"not x",
        {},
        400,
        "DIGEST_INVALID",
    ),
    (
        "mount bad digest",
        "POST",
        "/v2/r/blobs/uploads/?mount=sha256:1&from=x",
        None,
        {},
        400,
        "DIGEST_INVALID",
    ),
    (
        "mount bad from",
        "POST",
        f"/v2/r/blobs/uploads/?mount={GOOD}&from=../x",
        None,
        {},
        400,
        "NAME_INVALID",
    ),
    (
        "manifest not json",
        "PUT",
        "/v2/r/manifests/t",
        b"{not json",
        {"content-type": OCI_MANIFEST},
        400,
        "MANIFEST_INVALID",
    ),
    (
        "manifest is a list",
        "PUT",
        "/v2/r/manifests/t",
        b"[]",
        {"content-type": OCI_MANIFEST},
        400,
        "MANIFEST_INVALID",
    ),
    (
        "unknown media type",
        "PUT",
        "/v2/r/manifests/t",
        json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown"}).encode(),
        {"content-type": "application/x-unknown"},
        400,
        "MANIFEST_INVALID",
    ),
    (
        "schema1",
        "PUT",
        "/v2/r/manifests/t",
        json.dumps({"schemaVersion": 1}).encode(),
        {"content-type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
        400,
        "MANIFEST_INVALID",
    ),
    (
        "config without digest",
        "PUT",
        "/v2/r/manifests/t",
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "size": 1},
                "layers": [],
            }
        ).encode(),
        {"content-type": OCI_MANIFEST},
        400,
        "MANIFEST_INVALID",
    ),
    (
        "negative size",
        "PUT",
        "/v2/r/manifests/t",
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "size": -1, "digest": GOOD},
                "layers": [],
            }
        ).encode(),
        {"content-type": OCI_MANIFEST},
        400,
        "MANIFEST_INVALID",
    ),
    (
        "media types disagree",
        "PUT",
        "/v2/r/manifests/t",
        json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}}).encode(),
        {"content-type": "application/vnd.oci.image.index.v1+json"},
        400,
        "MANIFEST_INVALID",
    ),
    (
        "oversized manifest",
        "PUT",
        "/v2/r/manifests/t",
        b" " * (4 * 1024 * 1024 + 1),
        {"content-type": OCI_MANIFEST},
        413,
        "MANIFEST_INVALID",
    ),
    (
        "pagination n invalid",
        "GET",
        "/v2/_catalog?n=-1",
        None,
        {},
        400,
        "PAGINATION_NUMBER_INVALID",
    ),
    (
        "bad content-range",
        "PATCH",
        f"/v2/r/blobs/uploads/{UPLOAD}",
        b"x",
        {"content-range": "garbage"},
        416,
        "RANGE_INVALID",
    ),
    # numbers: ASCII digits only, and no longer than an int64 (int() fails past 4,300)
    *[
        (
            f"n={label} on {where}",
            "GET",
            f"{path}?n={n}",
            None,
            {},
            400,
            "PAGINATION_NUMBER_INVALID",
        )
        for where, path in (("catalog", "/v2/_catalog"), ("tags", "/v2/r/tags/list"))
        for label, n in (("5000 digits", "9" * 5000), ("superscript", "²"), ("circled", "①"))
    ],
    *[
        (
            f"content-range {label}",
            "PATCH",
            f"/v2/r/blobs/uploads/{UPLOAD}",
            b"x",
            {"content-range": value},
            416,
            "RANGE_INVALID",
        )
        for label, value in (
            ("5000 digits", "0-" + "9" * 5000),
            ("superscript", "0-²"),
            ("total of 5000 digits", "0-0/" + "9" * 5000),
        )
    ],
    (
        "content-range ending past its total",
        "PATCH",
        f"/v2/r/blobs/uploads/{UPLOAD}",
        b"0123456789",
        {"content-range": "10-19/5"},
        416,
        "RANGE_INVALID",
    ),
    *[
        (
            f"content-length {label}",
            "PATCH",
            f"/v2/r/blobs/uploads/{UPLOAD}",
            b"x",
            {"content-length": value},
            400,
            "SIZE_INVALID",
        )
        for label, value in (("superscript", "²"), ("5000 digits", "9" * 5000))
    ],
    # manifests: strict JSON (one meaning for every reader) and only manifest types
    *[
        (
            f"manifest {label}",
            "PUT",
            "/v2/r/manifests/t",
            body,
            {"content-type": OCI_MANIFEST},
            400,
            "MANIFEST_INVALID",
        )
        for label, body in (
            ("in UTF-16", EMPTY_IMAGE.decode().encode("utf-16")),
            ("with a BOM", b"\xef\xbb\xbf" + EMPTY_IMAGE),
            ("with NaN", EMPTY_IMAGE[:-1] + b', "x": NaN}'),
            ("with 1e400", EMPTY_IMAGE[:-1] + b', "x": 1e400}'),
            ("with a duplicate key", EMPTY_IMAGE[:-1] + b', "schemaVersion": 2}'),
            ("nested 100,000 deep", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
            ("with a 5000-digit integer", EMPTY_IMAGE[:-1] + b', "x": ' + b"9" * 5000 + b"}"),
            ("with a lone surrogate", EMPTY_IMAGE[:-1] + b', "x": "\\ud800"}'),
            ("with a numeric annotation", EMPTY_IMAGE[:-1] + b', "annotations": {"n": 1}}'),
            (
                "with a size of 2**64",
                EMPTY_IMAGE.replace(b'"size": 2', b'"size": 18446744073709551616'),
            ),
        )
    ],
    *[
        (
            f"manifest pushed as {content_type}",
            "PUT",
            "/v2/r/manifests/t",
            EMPTY_IMAGE,
            {"content-type": content_type},
            400,
            "MANIFEST_INVALID",
        )
        for content_type in (
            "text/plain",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
    ],
    (
        "manifest without mediaType pushed as text/plain",
        "PUT",
        "/v2/r/manifests/t",
        json.dumps({"schemaVersion": 2, "config": EMPTY_CONFIG, "layers": []}).encode(),
        {"content-type": "text/plain"},
        400,
        "MANIFEST_INVALID",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_input(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    # latin-1, as HTTP carries header bytes: "²" is the byte 0xb2 on the wire
    raw = {k.encode(): v.encode("latin-1") for k, v in headers.items()}
    r = await client.request(method, path, content=body, headers=raw)
    assert r.status_code == status, r.text[:300]
    if code:
        errors = r.json()["errors"]
        assert errors[0]["code"] == code
        assert errors[0]["message"]


async def test_manifest_body_not_matching_digest_in_url(
    client: httpx.AsyncClient, store: ContentStore
) -> None:
    _, body = await push_image(client, "r", "v1")
    claimed = sha256(body + b" ")
    r = await client.put(
        f"/v2/r/manifests/{claimed}", content=body, headers={"content-type": OCI_MANIFEST}
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert (await client.get(f"/v2/r/manifests/{claimed}")).status_code == 404


async def test_content_length_disagreeing_with_content_range(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/r/blobs/uploads/")).headers["location"]
    r = await client.patch(location, content=b"12345", headers={"content-range": "0-9"})
    assert r.status_code == 416
    assert r.json()["errors"][0]["code"] == "RANGE_INVALID"
    # nothing was appended
    assert (await client.get(location)).headers["range"] == "0-0"


async def test_a_chunk_out_of_order_says_where_the_upload_is(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/r/blobs/uploads/")).headers["location"]
    r = await client.patch(location, content=b"12345", headers={"content-range": "0-4"})
    assert r.status_code == 202
    for send in (client.patch, client.put):
        target = location if send is client.patch else f"{location}?digest=sha256:{'0' * 64}"
        r = await send(target, content=b"678", headers={"content-range": "9-11"})
        assert r.status_code == 416
        assert r.json()["errors"][0]["code"] == "RANGE_INVALID"
        assert (r.headers["location"], r.headers["range"]) == (location, "0-4")
    assert (await client.get(location)).headers["range"] == "0-4"  # nothing appended


async def test_upload_of_another_repository_is_unknown(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/mine/blobs/uploads/")).headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    r = await client.patch(f"/v2/theirs/blobs/uploads/{upload_id}", content=b"x")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


async def test_no_file_outside_the_data_dir(client: httpx.AsyncClient, store: ContentStore) -> None:
    await push_blob(client, "r", b"content")
    for path in ["/v2/r/blobs/sha256:../../metadata.db", "/v2/r/blobs/..%2f..%2fmetadata.db"]:
        r = await client.get(path)
        assert r.status_code in (400, 404)
        assert b"SQLite" not in r.content


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/v2/../etc/blobs/" + GOOD.encode(),
        b"/v2/a/../b/manifests/latest",
        b"/v2/r/blobs/sha256:../../metadata.db",
        b"/v2/r/blobs/uploads/../../metadata.db",
    ],
)
async def test_unnormalized_dot_segments(store: ContentStore, raw_path: bytes) -> None:
    """What a client that does not normalize URLs (curl --path-as-is) would send."""
    from registry_proxy.app import create_app

    app = create_app(store)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"r")],
        "server": ("r", 80),
        "client": None,
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] in (400, 404)
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))  # type: ignore[misc]
    assert body["errors"][0]["code"] in ("NAME_INVALID", "DIGEST_INVALID", "NOT_FOUND")


@pytest.mark.parametrize(
    "header",
    ["bytes=0-" + "9" * 5000, "bytes=" + "9" * 4301 + "-", "bytes=-" + "9" * 20, "bytes=²-"],
)
async def test_range_numbers_that_are_no_offset(client: httpx.AsyncClient, header: str) -> None:
    digest = await push_blob(client, "r", b"0123456789")
    r = await client.get(f"/v2/r/blobs/{digest}", headers={b"range": header.encode("latin-1")})
    assert r.status_code == 416, r.text[:300]
    assert r.json()["errors"][0]["code"] == "RANGE_INVALID"
    assert r.headers["content-range"] == "bytes */10"


async def test_content_range_with_a_total_is_accepted_when_consistent(
    client: httpx.AsyncClient,
) -> None:
    location = (await client.post("/v2/r/blobs/uploads/")).headers["location"]
    r = await client.patch(location, content=b"12345", headers={"content-range": "0-4/10"})
    assert r.status_code == 202, r.text
    assert r.headers["range"] == "0-4"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v2/_catalog", "GET"),
        ("PATCH", "/v2/r/manifests/latest", "GET, HEAD, PUT, DELETE"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
async def test_wrong_methods_say_which_are_allowed(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    r = await client.request(method, path)
    assert r.status_code == 405
    assert r.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert set(r.headers["allow"].split(", ")) == set(allow.split(", "))


async def test_an_unexpected_exception_is_a_500_with_a_request_id_in_the_log(
    client: httpx.AsyncClient,
    store: ContentStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: object) -> list[str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "catalog", broken)
    with caplog.at_level(logging.ERROR, logger="satellite.registry"):
        r = await client.get("/v2/_catalog")
        head = await client.head("/v2/_catalog")
    assert r.status_code == 500
    request_id = r.headers["x-request-id"]
    assert r.json() == {
        "errors": [
            {"code": "UNKNOWN", "message": "internal error", "detail": {"request_id": request_id}}
        ]
    }
    assert (head.status_code, head.content) == (500, b"")
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "a bug" in str(logged[0].exc_info[1])
    # and the app goes on answering
    monkeypatch.undo()
    assert (await client.get("/v2/_catalog")).status_code == 200

"""registry_proxy.names, the one grammar: whole-string matches only, ASCII only."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from registry_proxy import names
from registry_proxy.digest import Digest
from registry_proxy.errors import RegistryError
from registry_proxy.store import ContentStore
from tests.registry_proxy.conftest import push_blob, push_image, sha256

GOOD = sha256(b"x")

# what a value may not carry around it: each was accepted by re.match with "$" (the
# newline), or is a look-alike of the bare value in logs and listings
DECORATIONS = [
    lambda v: v + "\n",
    lambda v: v + "\r",
    lambda v: v + "\r\n",
    lambda v: v + " ",
    lambda v: " " + v,
    lambda v: "\n" + v,
    lambda v: v + "\t",
    lambda v: v + "\x00",
]

VALID: list[tuple[Callable[[object], bool], str]] = [
    (names.is_name, "library/nginx"),
    (names.is_name, "a"),
    (names.is_name, "team/app__x/a-b.c"),
    (names.is_qualified_name, "localhost:5000/team/app"),
    (names.is_qualified_name, "docker.io/library/nginx"),
    (names.is_qualified_name, "[::1]:5000/x"),
    (names.is_tag, "latest"),
    (names.is_tag, "_v1.2-rc"),
    (names.is_tag, "T" * 128),
    (names.is_digest, GOOD),
    (names.is_digest, "sha512:" + "a" * 128),
    (names.is_registry_host, "docker.io"),
    (names.is_registry_host, "Registry-1.Example.COM:443"),
    (names.is_registry_host, "localhost"),
    (names.is_registry_host, "[::1]:5000"),
    (names.is_registry_url, "https://ghcr.io"),
    (names.is_registry_url, "http://127.0.0.1:5000/"),
    (names.is_registry_url, "http://[::1]:5000"),
]

INVALID: list[tuple[Callable[[object], bool], object]] = [
    (names.is_name, ""),
    (names.is_name, "Library/nginx"),
    (names.is_name, "a//b"),
    (names.is_name, "a/"),
    (names.is_name, "-a"),
    (names.is_name, "a" * 256),
    (names.is_name, "\uff4cibrary"),  # a full-width letter
    (names.is_name, 5),
    (names.is_qualified_name, "localhost/x:5000"),
    (names.is_qualified_name, "host:5000/" + "a" * 250),
    (names.is_tag, ""),
    (names.is_tag, "-v1"),
    (names.is_tag, ".v1"),
    (names.is_tag, "T" * 129),
    (names.is_tag, "v\u0661"),  # an Arabic-Indic digit: "\d" and "\w" match it
    (names.is_tag, "tàg"),
    (names.is_digest, "sha256:" + "A" * 64),
    (names.is_digest, "sha256:" + "a" * 63),
    (names.is_digest, "md5:" + "a" * 32),
    (names.is_digest, None),
    (names.is_registry_host, ""),
    (names.is_registry_host, "-docker.io"),
    (names.is_registry_host, "docker-.io"),
    (names.is_registry_host, "docker..io"),
    (names.is_registry_host, "docker.io:"),
    (names.is_registry_host, "docker.io:123456"),
    (names.is_registry_host, "user@docker.io"),
    (names.is_registry_host, "docker.io/x"),
    (names.is_registry_host, "dockér.io"),
    (names.is_registry_host, "docker.io:٣"),
    (names.is_registry_url, "ftp://ghcr.io"),
    (names.is_registry_url, "https://ghcr.io/v2"),
    (names.is_registry_url, "https://u:p@ghcr.io"),
    (names.is_registry_url, "https://ghcr.io?x"),
    (names.is_registry_url, "https://"),
]


@pytest.mark.parametrize(("check", "value"), VALID)
def test_valid_values_are_accepted_and_never_with_anything_around_them(
    check: Callable[[object], bool], value: str
) -> None:
    assert check(value)
    for decorate in DECORATIONS:
        assert not check(decorate(value)), repr(decorate(value))


@pytest.mark.parametrize(("check", "value"), INVALID)
def test_invalid_values_are_refused(check: Callable[[object], bool], value: object) -> None:
    assert not check(value)


def test_validators_raise_the_protocol_errors() -> None:
    for bad in ("library/x\n", "library/x\r", " library/x"):
        with pytest.raises(RegistryError) as info:
            names.validate_name(bad)
        assert info.value.code == "NAME_INVALID"
    for bad in ("v1\n", "v1 "):
        with pytest.raises(RegistryError) as info:
            names.parse_reference(bad)
        assert info.value.code == "MANIFEST_INVALID"
    with pytest.raises(RegistryError) as info:
        names.parse_reference(GOOD + "\n")
    assert info.value.code == "DIGEST_INVALID"
    assert names.parse_reference(GOOD) == Digest.parse(GOOD)
    assert names.parse_reference("v1") == "v1"


async def test_mount_from_a_name_with_a_trailing_newline_is_refused(
    client: httpx.AsyncClient,
) -> None:
    digest = await push_blob(client, "library/x", b"x")
    for source in ("library/x%0A", "library/x%0D", "library/x%20"):
        r = await client.post(f"/v2/r/blobs/uploads/?mount={digest}&from={source}")
        assert r.status_code == 400, (source, r.status_code, r.text)
        assert r.json()["errors"][0]["code"] == "NAME_INVALID"
    r = await client.post(f"/v2/r/blobs/uploads/?mount={digest}&from=library/x")
    assert r.status_code == 201


async def test_a_digest_with_a_trailing_newline_is_refused(client: httpx.AsyncClient) -> None:
    for path in (f"/v2/r/blobs/uploads/?digest={GOOD}%0A", f"/v2/r/blobs/uploads/?mount={GOOD}%0A"):
        r = await client.post(path, content=b"x")
        assert r.status_code == 400, (path, r.text)
        assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"


@pytest.mark.parametrize(
    "path",
    ["/v2/r/tags/list\n", "/v2/r/tags/list\r", "/v2/r\n/tags/list", "/v2/r/manifests/v1\n"],
)
async def test_a_control_character_in_the_path_never_reaches_a_handler(
    client: httpx.AsyncClient, store: ContentStore, path: str
) -> None:
    """What a client could put in the ASGI path unescaped (the app refuses any "%")."""
    from registry_proxy.app import RegistrySettings, create_app

    await push_image(client, "r", "v1")
    app = create_app(store, RegistrySettings(push=True))
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
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"r")],
        "server": ("r", 80),
        "client": None,
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] in (400, 404), sent
    body = b"".join(m.get("body", b"") for m in sent[1:])  # type: ignore[misc]
    # an OCI body even when "{rest:path}" does not match (Starlette's own 404 before)
    codes = ("NAME_INVALID", "MANIFEST_INVALID", "NOT_FOUND")
    assert json.loads(body)["errors"][0]["code"] in codes

"""The upstream registry client against real parts on 127.0.0.1.

- Debian's docker-registry (anonymous, and with htpasswd Basic auth) holding images
  pushed with skopeo from generated OCI layouts;
- a token service and a registry-like app that demands its Bearer tokens
  (tests/support/tokenserver.py), both on hypercorn;
- small Starlette apps on hypercorn that misbehave on purpose: 5xx/429 then success,
  a wrong body, a cut connection, a hang, a redirect to a second server, TLS.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from registry_proxy.digest import Digest
from registry_proxy.manifest import OCI_INDEX, OCI_MANIFEST
from registry_proxy.upstream import (
    UpstreamAuthError,
    UpstreamBlob,
    UpstreamClient,
    UpstreamIntegrityError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
    parse_challenges,
)
from tests.support.images import GeneratedLayout
from tests.support.net import free_port
from tests.support.skopeo import Skopeo
from tests.support.tls import make_tls
from tests.support.tokenserver import BearerRegistry, TokenService, serve_app
from tests.support.upstream import UpstreamRegistry

USER, PASSWORD = "puller", "s3cret pass"
MISSING = Digest.of(b"nobody pushed this")


def client_for(url: str, **kwargs: object) -> UpstreamClient:
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("max_backoff", 0.05)
    return UpstreamClient("test", url, **kwargs)  # type: ignore[arg-type]


async def read_all(blob: UpstreamBlob) -> bytes:
    return b"".join([chunk async for chunk in blob.chunks()])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------- docker-registry


@pytest.fixture(scope="module")
def anon_registry(
    tmp_path_factory: pytest.TempPathFactory, image_layout: GeneratedLayout, skopeo: Skopeo
) -> Iterator[UpstreamRegistry]:
    registry = UpstreamRegistry(tmp_path_factory.mktemp("upstream-anon")).start()
    try:
        skopeo.copy(image_layout.oci("app:v1"), f"docker://{registry.host}/team/app:v1")
        skopeo.copy(
            image_layout.oci("multi:v1"), f"docker://{registry.host}/team/multi:v1", all_images=True
        )
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def basic_registry(
    tmp_path_factory: pytest.TempPathFactory, image_layout: GeneratedLayout, skopeo: Skopeo
) -> Iterator[UpstreamRegistry]:
    registry = UpstreamRegistry(
        tmp_path_factory.mktemp("upstream-basic"), auth=(USER, PASSWORD)
    ).start()
    try:
        skopeo.copy(
            image_layout.oci("app:v1"),
            f"docker://{registry.host}/team/app:v1",
            dest_creds=(USER, PASSWORD),
        )
        yield registry
    finally:
        registry.stop()


@pytest.fixture
async def anon(anon_registry: UpstreamRegistry) -> AsyncIterator[UpstreamClient]:
    async with client_for(anon_registry.url) as client:
        yield client


async def test_get_manifest_by_tag_returns_the_exact_bytes(
    anon: UpstreamClient, image_layout: GeneratedLayout
) -> None:
    app = image_layout.app
    manifest = await anon.get_manifest("team/app", "v1")
    assert manifest.body == app.manifest_bytes()
    assert str(manifest.digest) == app.digest
    assert manifest.media_type == OCI_MANIFEST


async def test_get_manifest_by_digest_is_verified(
    anon: UpstreamClient, image_layout: GeneratedLayout
) -> None:
    app = image_layout.app
    manifest = await anon.get_manifest("team/app", app.digest)
    assert manifest.body == app.manifest_bytes()
    assert manifest.digest == Digest.parse(app.digest)


async def test_get_index_and_its_children(
    anon: UpstreamClient, image_layout: GeneratedLayout
) -> None:
    multi = image_layout.multi
    index = await anon.get_manifest("team/multi", "v1")
    assert (index.body, index.media_type) == (multi.manifest_bytes(), OCI_INDEX)
    for child in multi.manifests:
        got = await anon.get_manifest("team/multi", child.digest)
        assert got.body == child.manifest_bytes()


async def test_head_manifest_by_tag_and_digest(
    anon: UpstreamClient, image_layout: GeneratedLayout
) -> None:
    app = image_layout.app
    for reference in ("v1", app.digest):
        head = await anon.head_manifest("team/app", reference)
        assert (str(head.digest), head.media_type, head.size) == (
            app.digest,
            OCI_MANIFEST,
            app.size,
        )


async def test_open_blob_whole_and_from_an_offset(
    anon: UpstreamClient, image_layout: GeneratedLayout
) -> None:
    app = image_layout.app
    layer = app.layer_digests[1]
    data = app.blob_file(layer).read_bytes()
    async with anon.open_blob("team/app", Digest.parse(layer)) as blob:
        assert (blob.offset, blob.size) == (0, len(data))
        assert await read_all(blob) == data
    offset = len(data) // 3
    async with anon.open_blob("team/app", Digest.parse(layer), offset=offset) as blob:
        assert (blob.offset, blob.size) == (offset, len(data))
        assert await read_all(blob) == data[offset:]


async def test_unknown_things_are_not_found(
    anon: UpstreamClient, image_layout: GeneratedLayout
) -> None:
    with pytest.raises(UpstreamNotFound):
        await anon.get_manifest("team/app", "no-such-tag")
    with pytest.raises(UpstreamNotFound):
        await anon.get_manifest("team/nothing-here", "v1")
    with pytest.raises(UpstreamNotFound):
        await anon.get_manifest("team/app", str(MISSING))
    with pytest.raises(UpstreamNotFound):
        await anon.head_manifest("team/app", "no-such-tag")
    with pytest.raises(UpstreamNotFound):
        async with anon.open_blob("team/app", MISSING):
            pass
    await anon.ping()


async def test_basic_auth_with_and_without_credentials(
    basic_registry: UpstreamRegistry, image_layout: GeneratedLayout
) -> None:
    app = image_layout.app
    async with client_for(basic_registry.url, username=USER, password=PASSWORD) as client:
        manifest = await client.get_manifest("team/app", "v1")
        assert manifest.body == app.manifest_bytes()
        config = app.config_digest
        assert config is not None
        async with client.open_blob("team/app", Digest.parse(config)) as blob:
            assert await read_all(blob) == app.blob_file(config).read_bytes()
        await client.ping()
    async with client_for(basic_registry.url) as client:
        await client.ping()  # 401 is an answer: the upstream is reachable
        with pytest.raises(UpstreamAuthError):
            await client.get_manifest("team/app", "v1")
    async with client_for(basic_registry.url, username=USER, password="wrong") as client:
        with pytest.raises(UpstreamAuthError):
            await client.head_manifest("team/app", "v1")


# --------------------------------------------------------------------------- Bearer tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MANIFEST_A = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","layers":[]}'
MANIFEST_B = MANIFEST_A.replace(b"[]", b"[ ]")


class BearerSetup:
    def __init__(self, tokens: TokenService, registry: BearerRegistry, url: str) -> None:
        self.tokens = tokens
        self.registry = registry
        self.url = url


@pytest.fixture
async def bearer() -> AsyncIterator[Callable[..., BearerSetup]]:
    """Start a token service and a registry demanding its tokens; configure via kwargs."""
    tokens = TokenService()
    async with serve_app(tokens.app()) as token_url:
        registry = BearerRegistry(tokens, realm=f"{token_url}/token")
        registry.add_manifest("team/a", "v1", MANIFEST_A, OCI_MANIFEST)
        registry.add_manifest("team/b", "v1", MANIFEST_B, OCI_MANIFEST)
        registry.blobs[("team/a", str(Digest.of(b"layer")))] = b"layer"
        async with serve_app(registry.app()) as registry_url:

            def configure(**settings: object) -> BearerSetup:
                for name, value in settings.items():
                    target = registry if hasattr(registry, name) else tokens
                    setattr(target, name, value)
                return BearerSetup(tokens, registry, registry_url)

            yield configure


async def test_bearer_token_fetched_once_per_scope_and_reused(
    bearer: Callable[..., BearerSetup],
) -> None:
    setup = bearer()
    async with client_for(setup.url) as client:
        assert (await client.get_manifest("team/a", "v1")).body == MANIFEST_A
        assert (await client.head_manifest("team/a", "v1")).size == len(MANIFEST_A)
        async with client.open_blob("team/a", Digest.of(b"layer")) as blob:
            assert await read_all(blob) == b"layer"
        assert (await client.get_manifest("team/b", "v1")).body == MANIFEST_B
        assert (await client.get_manifest("team/b", "v1")).body == MANIFEST_B
    assert setup.tokens.scopes() == ["repository:team/a:pull", "repository:team/b:pull"]
    assert {r.service for r in setup.tokens.requests} == {setup.tokens.service}
    assert all(r.authorization is None for r in setup.tokens.requests)  # anonymous
    # one 401 in all: once the origin has challenged, every request carries a token up
    # front (cached, or fetched before it for a new scope)
    unauthenticated = [r.path for r in setup.registry.requests if r.authorization is None]
    assert unauthenticated == ["/v2/team/a/manifests/v1"]
    assert len(setup.registry.requests) == 6


async def test_bearer_with_basic_credentials_and_access_token(
    bearer: Callable[..., BearerSetup],
) -> None:
    setup = bearer(credentials=(USER, PASSWORD), token_field="access_token", expires_in=None)
    async with client_for(setup.url, username=USER, password=PASSWORD) as client:
        assert (await client.get_manifest("team/a", "v1")).body == MANIFEST_A
    assert [r.authorization for r in setup.tokens.requests] == [basic(USER, PASSWORD)]
    # Basic credentials go to the token service only, never to the registry
    assert all(
        r.authorization is None or r.authorization.startswith("Bearer ")
        for r in setup.registry.requests
    )
    async with client_for(setup.url, username=USER, password="wrong") as client:
        with pytest.raises(UpstreamAuthError):
            await client.get_manifest("team/a", "v1")


async def test_bearer_token_is_fetched_again_after_expiry(
    bearer: Callable[..., BearerSetup],
) -> None:
    setup = bearer(expires_in=60)
    clock = Clock()
    async with client_for(setup.url, clock=clock) as client:
        await client.get_manifest("team/a", "v1")
        clock.now += 45  # within the lifetime less the margin
        await client.get_manifest("team/a", "v1")
        assert len(setup.tokens.requests) == 1
        clock.now += 10  # 55 s: inside the renewal margin
        await client.get_manifest("team/a", "v1")
    assert setup.tokens.scopes() == ["repository:team/a:pull"] * 2
    tokens = [r.authorization for r in setup.registry.requests]
    # the renewal happened before the request: no second 401
    assert tokens[0] is None
    assert tokens[1] == tokens[2] != tokens[3]
    assert len(tokens) == 4


async def test_bearer_refused_token_is_retried_exactly_once(
    bearer: Callable[..., BearerSetup],
) -> None:
    setup = bearer(accept_tokens=False)
    async with client_for(setup.url) as client:
        with pytest.raises(UpstreamAuthError):
            await client.get_manifest("team/a", "v1")
    assert len(setup.tokens.requests) == 1
    assert [r.authorization is not None for r in setup.registry.requests] == [False, True]


async def test_bearer_concurrent_requests_share_one_token_fetch(
    bearer: Callable[..., BearerSetup],
) -> None:
    setup = bearer()
    async with client_for(setup.url) as client:
        results = await asyncio.gather(
            *(client.get_manifest("team/a", "v1") for _ in range(8)),
            *(client.get_manifest("team/b", "v1") for _ in range(8)),
        )
    assert [m.body for m in results] == [MANIFEST_A] * 8 + [MANIFEST_B] * 8
    assert sorted(s or "" for s in setup.tokens.scopes()) == [
        "repository:team/a:pull",
        "repository:team/b:pull",
    ]


async def test_bearer_ping_needs_no_token(bearer: Callable[..., BearerSetup]) -> None:
    setup = bearer()
    async with client_for(setup.url) as client:
        await client.ping()
    assert setup.tokens.requests == []


def test_parse_challenges_handles_quotes_commas_and_several_challenges() -> None:
    [bearer] = parse_challenges(
        [
            'Bearer realm="https://auth.example/token?x=1,2",service="reg, eu",'
            'scope="repository:a/b:pull,push", error="insufficient_scope"'
        ]
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token?x=1,2",
        "service": "reg, eu",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
    }
    first, second = parse_challenges(['Basic realm="say \\"hi\\"", BEARER realm=r,service=s'])
    assert (first.scheme, first.params) == ("basic", {"realm": 'say "hi"'})
    assert (second.scheme, second.params) == ("bearer", {"realm": "r", "service": "s"})
    assert parse_challenges(["Negotiate", ""]) == parse_challenges(["Negotiate"])


# --------------------------------------------------------------------------- retries and failures


def manifest_response(body: bytes, digest: str | None = None) -> Response:
    headers = {"Content-Type": OCI_MANIFEST}
    headers["Docker-Content-Digest"] = digest or str(Digest.of(body))
    return Response(body, headers=headers)


def scripted(script: list[Callable[[], Response]], hits: list[str]) -> Starlette:
    """Answers the n-th request with script[n] (the last entry repeats)."""

    async def handle(request: Request) -> Response:
        hits.append(request.url.path)
        return script[min(len(hits), len(script)) - 1]()

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "HEAD"])])


def status(code: int, **headers: str) -> Callable[[], Response]:
    return lambda: JSONResponse({"errors": [{"code": "UNAVAILABLE"}]}, code, headers=headers)


async def test_5xx_and_429_are_retried_until_success() -> None:
    hits: list[str] = []
    app = scripted([status(503), status(502), lambda: manifest_response(MANIFEST_A)], hits)
    async with serve_app(app) as url, client_for(url) as client:
        assert (await client.get_manifest("team/a", "v1")).body == MANIFEST_A
    assert hits == ["/v2/team/a/manifests/v1"] * 3

    hits = []
    app = scripted(
        [status(429, **{"Retry-After": "0"}), lambda: manifest_response(MANIFEST_A)], hits
    )
    async with serve_app(app) as url, client_for(url, backoff=30.0, max_backoff=30.0) as client:
        # Retry-After: 0 wins over the (huge) backoff, or this test would time out
        assert (await client.get_manifest("team/a", "v1", timeout=20)).body == MANIFEST_A
    assert len(hits) == 2


async def test_retries_are_bounded() -> None:
    hits: list[str] = []
    async with serve_app(scripted([status(503)], hits)) as url:
        async with client_for(url, retries=2) as client:
            with pytest.raises(UpstreamUnavailable) as caught:
                await client.get_manifest("team/a", "v1")
            assert caught.value.status == 503
        assert len(hits) == 3
        async with client_for(url, retries=0) as client:
            with pytest.raises(UpstreamUnavailable):
                async with client.open_blob("team/a", MISSING):
                    pass
        assert len(hits) == 4


async def test_client_errors_are_not_retried() -> None:
    hits: list[str] = []
    async with serve_app(scripted([status(400)], hits)) as url, client_for(url) as client:
        with pytest.raises(UpstreamProtocolError):
            await client.get_manifest("team/a", "v1")
    assert len(hits) == 1


async def test_blob_open_is_retried_and_a_range_may_be_ignored() -> None:
    data = b"0123456789" * 100
    hits: list[str] = []
    app = scripted([status(500), lambda: Response(data)], hits)
    async with (
        serve_app(app) as url,
        client_for(url) as client,
        client.open_blob("team/a", Digest.of(data), offset=500) as blob,
    ):
        # the server ignored Range and sent it all: the caller must skip
        assert (blob.offset, blob.size) == (0, len(data))
        assert await read_all(blob) == data
    assert len(hits) == 2


async def test_connection_refused_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with client_for(url, retries=1) as client:
        with pytest.raises(UpstreamUnavailable):
            await client.get_manifest("team/a", "v1")
        with pytest.raises(UpstreamUnavailable):
            await client.ping()
        with pytest.raises(UpstreamUnavailable):
            async with client.open_blob("team/a", MISSING):
                pass


async def test_refused_tag_lookup_is_not_retried_but_a_digest_lookup_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tag lookup has a local fallback: a closed port answers it at once."""
    from registry_proxy.upstream import client as upstream_module

    sleeps: list[float] = []

    async def no_sleep(delay: float) -> None:
        sleeps.append(delay)

    monkeypatch.setattr(upstream_module.asyncio, "sleep", no_sleep)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with client_for(url, retries=3) as client:
        for call in (client.head_manifest, client.get_manifest):
            with pytest.raises(UpstreamUnavailable) as exc:
                await call("team/a", "v1")
            assert exc.value.refused
        assert sleeps == []
        with pytest.raises(UpstreamUnavailable):
            await client.get_manifest("team/a", str(MISSING))
        assert len(sleeps) == 3  # by digest there is no fallback: worth retrying


async def test_connection_cut_mid_blob_raises_unavailable_from_chunks() -> None:
    async def cut(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            raise ConnectionAbortedError("the link went down")

        return StreamingResponse(body(), headers={"Content-Length": "5000"})

    app = Starlette(routes=[Route("/{path:path}", cut)])
    async with (
        serve_app(app) as url,
        client_for(url) as client,
        client.open_blob("team/a", MISSING) as blob,
    ):
        assert blob.size == 5000
        received = 0
        with pytest.raises(UpstreamUnavailable):
            async for chunk in blob.chunks():
                received += len(chunk)
        assert received <= 1000


async def test_manifest_lookup_has_a_total_budget() -> None:
    release = asyncio.Event()

    async def hang(request: Request) -> Response:
        await release.wait()
        return manifest_response(MANIFEST_A)

    app = Starlette(routes=[Route("/{path:path}", hang)])
    async with serve_app(app) as url:
        try:
            async with client_for(url, retries=5) as client:
                with pytest.raises(UpstreamUnavailable, match="no answer within"):
                    await client.get_manifest("team/a", "v1", timeout=0.3)
        finally:
            release.set()


async def test_body_that_does_not_match_the_digest_is_refused() -> None:
    wanted = Digest.of(MANIFEST_A)
    wrong = scripted([lambda: manifest_response(MANIFEST_B)], [])
    async with serve_app(wrong) as url, client_for(url) as client:
        with pytest.raises(UpstreamIntegrityError):
            await client.get_manifest("team/a", str(wanted))
    # a tag lookup whose announced digest is not the body's
    lying = scripted([lambda: manifest_response(MANIFEST_B, str(wanted))], [])
    async with serve_app(lying) as url, client_for(url) as client:
        with pytest.raises(UpstreamIntegrityError):
            await client.get_manifest("team/a", "v1")
        with pytest.raises(UpstreamIntegrityError):
            await client.head_manifest("team/a", str(Digest.of(MANIFEST_B)))


async def test_redirect_to_another_host_drops_the_credentials() -> None:
    data = b"layer bytes on the blob store"
    digest = Digest.of(data)
    cdn_seen: list[dict[str, str]] = []
    registry_seen: list[str | None] = []

    async def cdn(request: Request) -> Response:
        cdn_seen.append(dict(request.headers))
        return Response(data)

    async with serve_app(Starlette(routes=[Route("/{path:path}", cdn)])) as cdn_url:

        async def blob(request: Request) -> Response:
            authorization = request.headers.get("authorization")
            registry_seen.append(authorization)
            if authorization != basic(USER, PASSWORD):
                return Response(status_code=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
            return Response(
                status_code=307, headers={"Location": f"{cdn_url}/store/{digest.encoded}?sig=x"}
            )

        registry = Starlette(routes=[Route("/{path:path}", blob)])
        async with (
            serve_app(registry) as url,
            client_for(url, username=USER, password=PASSWORD) as client,
        ):
            async with client.open_blob("team/a", digest) as opened:
                assert await read_all(opened) == data
            async with client.open_blob("team/a", digest) as opened:  # Basic now up front
                assert await read_all(opened) == data
    assert registry_seen == [None, basic(USER, PASSWORD), basic(USER, PASSWORD)]
    assert len(cdn_seen) == 2
    assert all("authorization" not in headers for headers in cdn_seen)


# --------------------------------------------------------------------------- TLS


async def test_tls_verified_with_the_configured_ca(tmp_path: Path) -> None:
    ca_file, tls = make_tls(tmp_path)
    app = scripted([lambda: manifest_response(MANIFEST_A)], [])
    async with serve_app(app, tls=tls) as url:
        async with client_for(url, ca_file=ca_file) as client:
            await client.ping()
            assert (await client.get_manifest("team/a", "v1")).body == MANIFEST_A
        # the system CAs do not know this one
        async with client_for(url, retries=0) as client:
            with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get_manifest("team/a", "v1")


# --------------------------------------------------------------------------- hostile numbers


@pytest.mark.parametrize(
    "content_range",
    [
        "bytes 500-999/" + "9" * 5000,  # past int(): a ValueError, not a protocol error
        "bytes 500-" + "9" * 5000 + "/1000",
        "bytes 500-999/600",  # the range ends past the whole
        "bytes 500-499/1000",
        "bytes 400-999/1000",  # not the offset asked for
    ],
)
async def test_a_206_with_an_impossible_content_range_is_a_protocol_error(
    content_range: str,
) -> None:
    data = bytes(500)
    hits: list[str] = []
    app = scripted([lambda: Response(data, 206, headers={"Content-Range": content_range})], hits)
    async with serve_app(app) as url, client_for(url) as client:
        with pytest.raises(UpstreamProtocolError):
            async with client.open_blob("team/a", Digest.of(bytes(1000)), offset=500):
                pass


async def test_deeply_nested_json_from_upstream_is_no_crash() -> None:
    """An error body or an untyped manifest nested 100,000 deep: refused as what it is."""
    deep = b"[" * 100_000 + b"]" * 100_000
    hits: list[str] = []
    app = scripted([lambda: Response(deep, 404)], hits)
    async with serve_app(app) as url, client_for(url) as client:
        with pytest.raises(UpstreamNotFound):
            await client.get_manifest("team/a", "v1")
    app = scripted([lambda: Response(deep, headers={"Content-Type": "text/plain"})], [])
    async with serve_app(app) as url, client_for(url) as client:
        with pytest.raises(UpstreamProtocolError):
            await client.get_manifest("team/a", "v1")

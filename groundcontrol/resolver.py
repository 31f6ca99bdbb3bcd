"""Resolving group image references against the central registry at publish time.

``library/nginx:1.25`` → the full descriptor a satellite needs (repository, tag, manifest or
index digest, media type, size) from ``HEAD /v2/<repo>/manifests/<ref>`` with an Accept
header naming the OCI and Docker manifest and index types; when the registry gives no
``Docker-Content-Digest`` (or refuses HEAD) the manifest is fetched (capped) and hashed.
A reference by digest is checked against what the registry returns.

Auth: anonymous, Basic, and the Bearer challenge flow (``WWW-Authenticate: Bearer
realm=…,service=…,scope=…`` → token endpoint with the Basic credentials). Transport
failures become ``registry_unavailable`` (502); an unknown image ``image_not_found``
(422), so that a bad group definition is refused with a clear code and never stored.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from groundcontrol.contract import ImageDescriptor
from groundcontrol.errors import Unprocessable, UpstreamError
from groundcontrol.models import ImageRef

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class ImageNotFound(Unprocessable):
    code = "image_not_found"


class RegistryNotConfigured(Unprocessable):
    code = "registry_not_configured"


@dataclass(frozen=True)
class RegistryAuth:
    username: str = ""
    password: str = ""


class Resolver:
    """Resolves references against one registry; a token cache per repository scope."""

    def __init__(
        self,
        url: str,
        auth: RegistryAuth | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.auth = auth or RegistryAuth()
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False)
        self._tokens: dict[str, str] = {}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve_all(self, refs: Iterable[ImageRef]) -> dict[ImageRef, ImageDescriptor]:
        out = {}
        for ref in refs:
            out[ref] = await self.resolve(ref)
        return out

    async def resolve(self, ref: ImageRef) -> ImageDescriptor:
        if not self.url:
            raise RegistryNotConfigured(
                f"cannot resolve {ref.reference}: no central registry configured ([registry] url)"
            )
        target = ref.digest or ref.tag or "latest"
        path = f"/v2/{ref.repository}/manifests/{target}"
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        response = await self._request("HEAD", path, ref, headers)
        digest = response.headers.get("docker-content-digest", "")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        length = response.headers.get("content-length", "")
        if response.status_code != 200 or not digest or not length.isdigit():
            response = await self._request("GET", path, ref, headers)
            body = response.content
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            if ref.digest and ref.digest.startswith("sha512:"):
                digest = "sha512:" + hashlib.sha512(body).hexdigest()
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            length = str(len(body))
        if ref.digest and digest != ref.digest:
            raise UpstreamError(
                f"{ref.reference}: the registry returned {digest}", code="digest_mismatch"
            )
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise ImageNotFound(
                f"{ref.reference}: not an image manifest or index ({media_type or 'no type'})"
            )
        try:
            return ImageDescriptor(
                repository=ref.repository,
                tag=ref.tag if ref.digest is None else None,
                digest=digest,
                media_type=media_type,
                size=int(length),
                platforms=ref.platforms,
            )
        except ValueError as exc:
            raise UpstreamError(f"{ref.reference}: bad answer from registry: {exc}") from None

    async def _request(
        self, method: str, path: str, ref: ImageRef, headers: dict[str, str]
    ) -> httpx.Response:
        repository = ref.repository
        scope = f"repository:{repository}:pull"
        for attempt in range(2):
            h = dict(headers)
            token = self._tokens.get(scope)
            if token:
                h["Authorization"] = f"Bearer {token}"
            elif self.auth.username:
                basic = f"{self.auth.username}:{self.auth.password}".encode()
                h["Authorization"] = "Basic " + base64.b64encode(basic).decode()
            try:
                if method == "GET":
                    response = await self._get_capped(path, h)
                else:
                    response = await self._client.request(method, self.url + path, headers=h)
            except httpx.HTTPError as exc:
                raise UpstreamError(
                    f"central registry {self.url} unreachable: {type(exc).__name__}"
                ) from None
            if response.status_code == 401 and attempt == 0:
                challenge = response.headers.get("www-authenticate", "")
                if challenge.lower().startswith("bearer "):
                    self._tokens[scope] = await self._fetch_token(challenge, scope)
                    continue
            break
        if response.status_code == 404:
            raise ImageNotFound(f"{ref.reference} not found in the registry")
        if response.status_code in (401, 403):
            raise UpstreamError(
                f"central registry refused access to {repository} ({response.status_code})",
                code="registry_unauthorized",
            )
        if response.status_code == 405 and method == "HEAD":
            return response
        if response.status_code != 200:
            raise UpstreamError(
                f"central registry answered {response.status_code} for {repository}"
            )
        return response

    async def _get_capped(self, path: str, headers: dict[str, str]) -> httpx.Response:
        async with self._client.stream("GET", self.url + path, headers=headers) as response:
            chunks, total = [], 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > MAX_MANIFEST_BYTES:
                    raise UpstreamError(f"manifest at {path} exceeds {MAX_MANIFEST_BYTES} bytes")
                chunks.append(chunk)
        return httpx.Response(
            response.status_code, headers=response.headers, content=b"".join(chunks)
        )

    async def _fetch_token(self, challenge: str, scope: str) -> str:
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.pop("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise UpstreamError("central registry sent a Bearer challenge without a realm")
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        auth = (self.auth.username, self.auth.password) if self.auth.username else None
        try:
            response = await self._client.get(realm, params=query, auth=auth)
            data = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            raise UpstreamError("central registry token endpoint unreachable") from None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamError(
                f"central registry token endpoint refused ({response.status_code})",
                code="registry_unauthorized",
            )
        return token

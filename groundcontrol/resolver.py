"""Resolving group image references against the central registry at publish time.

``library/nginx:1.25`` → the full descriptor a satellite needs (repository, tag, manifest or
index digest, media type, size), through the project's one registry client
(``registry_proxy.upstream.UpstreamClient.head_manifest``): a HEAD with an Accept header
naming the OCI and Docker manifest and index types, and a capped, verified GET when the
HEAD does not say enough. A reference by digest is checked against what the registry
returns.

Auth is the client's (anonymous, Basic, the Bearer challenge flow), with the credentials
``registry_credentials`` finds for the registry's host before each resolution. A registry
that cannot be reached becomes ``registry_unavailable`` (502); an unknown image
``image_not_found`` (422), so that a bad group definition is refused with a clear code and
never stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpx

from groundcontrol.contract import ImageDescriptor
from groundcontrol.errors import Unprocessable, UpstreamError
from groundcontrol.models import ImageRef
from registry_proxy.errors import RegistryError
from registry_proxy.upstream import (
    Timeouts,
    UpstreamAuthError,
    UpstreamClient,
    UpstreamHead,
    UpstreamIntegrityError,
    UpstreamNotAManifest,
    UpstreamNotFound,
    UpstreamUnavailable,
)
from registry_proxy.upstream import UpstreamError as ClientError

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)

CredentialLookup = Callable[[str], Awaitable[tuple[str, str]]]


class Resolver:
    """Resolves references against one registry; tokens cached per scope by the client."""

    def __init__(
        self,
        url: str,
        username: str = "",
        password: str = "",
        *,
        credentials: CredentialLookup | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._credentials = credentials
        self._client: UpstreamClient | None = None
        if self.url:
            self._client = UpstreamClient(
                "central registry",
                self.url,
                username=username or None,
                password=password,
                timeouts=Timeouts(timeout, timeout, timeout, timeout, manifest_total=timeout),
                retries=0,  # an operator is waiting on the answer: no retry rounds
                transport=transport,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def resolve_all(self, refs: Iterable[ImageRef]) -> dict[ImageRef, ImageDescriptor]:
        out = {}
        for ref in refs:
            out[ref] = await self.resolve(ref)
        return out

    async def resolve(self, ref: ImageRef) -> ImageDescriptor:
        if self._client is None:
            raise Unprocessable(
                f"cannot resolve {ref.reference}: no central registry configured ([registry] url)",
                code="registry_not_configured",
            )
        if self._credentials is not None:
            username, password = await self._credentials(urlsplit(self.url).netloc)
            self._client.auth.set_credentials(username or None, password)
        head = await self._head(ref)
        if head.media_type not in MANIFEST_MEDIA_TYPES:
            raise Unprocessable(
                f"{ref.reference}: not an image manifest or index ({head.media_type})",
                code="image_not_found",
            )
        try:
            return ImageDescriptor(
                repository=ref.repository,
                tag=ref.tag if ref.digest is None else None,
                digest=str(head.digest),
                media_type=head.media_type,
                size=head.size,
                platforms=ref.platforms,
            )
        except ValueError as exc:
            raise UpstreamError(f"{ref.reference}: bad answer from registry: {exc}") from None

    async def _head(self, ref: ImageRef) -> UpstreamHead:
        """The client's answer, its errors as Ground Control's."""
        assert self._client is not None
        target = ref.digest or ref.tag or "latest"
        try:
            return await self._client.head_manifest(ref.repository, target)
        except UpstreamNotFound:
            raise Unprocessable(
                f"{ref.reference} not found in the registry", code="image_not_found"
            ) from None
        except UpstreamAuthError as exc:
            raise UpstreamError(
                f"central registry refused access to {ref.repository} ({exc.status or 'token'})",
                code="registry_unauthorized",
            ) from None
        except UpstreamIntegrityError as exc:
            raise UpstreamError(f"{ref.reference}: {exc}", code="digest_mismatch") from None
        except UpstreamNotAManifest:
            raise Unprocessable(
                f"{ref.reference}: not an image manifest or index", code="image_not_found"
            ) from None
        except UpstreamUnavailable as exc:
            raise UpstreamError(f"central registry {self.url} unreachable: {exc}") from None
        except ClientError as exc:
            raise UpstreamError(f"central registry {self.url}: {exc}") from None
        except RegistryError as exc:
            raise Unprocessable(f"{ref.reference}: {exc.message}", code="image_not_found") from None

"""The one OCI registry client of the project, in three parts:

- ``errors``: what it raises (``UpstreamError`` and its tree), httpx's exceptions
  translated at one boundary, and what a client of the satellite is told
  (``as_registry_error``);
- ``auth``: the ``WWW-Authenticate`` parser and ``RegistryAuth``, the Basic and Bearer
  token flow as an httpx auth flow;
- ``client``: ``UpstreamClient``, manifests, blobs and pings with retries and budgets.

The names below are the public ones; import them from here.
"""

from registry_proxy.upstream.auth import Challenge, RegistryAuth, parse_challenges
from registry_proxy.upstream.client import (
    Timeouts,
    UpstreamBlob,
    UpstreamClient,
    UpstreamHead,
    UpstreamManifest,
)
from registry_proxy.upstream.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamIntegrityError,
    UpstreamNotAManifest,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamUnavailable,
    as_registry_error,
)

__all__ = [
    "Challenge",
    "RegistryAuth",
    "Timeouts",
    "UpstreamAuthError",
    "UpstreamBlob",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamHead",
    "UpstreamIntegrityError",
    "UpstreamManifest",
    "UpstreamNotAManifest",
    "UpstreamNotFound",
    "UpstreamProtocolError",
    "UpstreamUnavailable",
    "as_registry_error",
    "parse_challenges",
]

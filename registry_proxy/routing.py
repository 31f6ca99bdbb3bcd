"""Which upstream a request is for, and under which name its content is kept. Pure.

A request is routed, in this order, by containerd's ``?ns=<registry>`` parameter, by a
first path segment naming a configured upstream (``/v2/docker.io/library/nginx/...``),
or to the default upstream. Content fetched through an upstream is stored under
``<upstream name>/<repository>``, so both spellings of the same image share one cache
and two upstreams never mix. Without a matching upstream the repository is local.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

DOCKER_HUB_HOSTS = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})


@dataclass(frozen=True)
class UpstreamName:
    name: str
    url: str
    default: bool = False

    @property
    def is_docker_hub(self) -> bool:
        host = urlsplit(self.url).hostname or ""
        return self.name in DOCKER_HUB_HOSTS or host in DOCKER_HUB_HOSTS


@dataclass(frozen=True)
class Target:
    """A request's repository: as the client named it, as stored, and as upstream knows it."""

    name: str
    repo: str
    upstream: str | None = None
    upstream_repo: str | None = None


class Router:
    def __init__(self, upstreams: Sequence[UpstreamName]) -> None:
        self._by_name = {u.name: u for u in upstreams}
        defaults = [u for u in upstreams if u.default]
        self._default = defaults[0] if defaults else None

    def route(self, name: str, ns: str | None = None) -> Target:
        upstream: UpstreamName | None = None
        repo = name
        if ns is not None and ns in self._by_name:
            upstream = self._by_name[ns]
        else:
            first, sep, rest = name.partition("/")
            if sep and first in self._by_name:
                upstream, repo = self._by_name[first], rest
            elif ns is None or ns not in self._by_name:
                upstream = self._default
        if upstream is None:
            return Target(name=name, repo=name)
        if upstream.is_docker_hub and "/" not in repo:
            repo = f"library/{repo}"  # Docker Hub's official images
        return Target(
            name=name, repo=f"{upstream.name}/{repo}", upstream=upstream.name, upstream_repo=repo
        )

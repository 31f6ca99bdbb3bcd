"""Shared fixtures: real registries on loopback, generated images, skopeo.

- `image_layout` (session): an OCI layout with "app:v1" (3 layers) and "multi:v1"
  (an index over linux/amd64 and linux/arm64), never modified by tests.
- `upstream_registry` / `upstream_registry_factory`: Debian's docker-registry.
- `satellite` / `satellite_factory`: `satellite run` as a subprocess, pushes enabled.
- `skopeo`: a `Skopeo` runner (plain HTTP, bounded, raises with stderr).

- `containerd_factory` (tests/support/containerd.py): `make()` -> a started containerd.

A missing Debian tool fails the test with the package to install; nothing is skipped.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import GeneratedLayout, build_image, build_index
from tests.support.satellite import SatelliteProcess
from tests.support.skopeo import Skopeo
from tests.support.upstream import ToolMissing, UpstreamRegistry, require_tool

pytest_plugins = ("tests.support.containerd",)


@pytest.fixture(autouse=True)
def _garbage_of_this_test() -> Iterator[None]:
    """Collects each test's garbage in its own teardown. An unclosed socket or file
    caught in a reference cycle then fails the test that leaked it (ResourceWarning is an
    error here), not whichever later test the collector happened to run in.

    What is still alive afterwards is frozen (moved out of the collector's sight), so
    each collection looks only at what one test made: a full collection over the whole
    heap after every test would cost about 50 ms each."""
    yield
    gc.collect()
    gc.freeze()


def _need(name: str, package: str) -> None:
    try:
        require_tool(name, package)
    except ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> GeneratedLayout:
    path = tmp_path_factory.mktemp("images") / "layout"
    app = build_image(path, "app:v1", layers=3, layer_size=64 * 1024, seed="app")
    multi = build_index(
        path, "multi:v1", [("linux", "amd64"), ("linux", "arm64")], layers=2, seed="multi"
    )
    return GeneratedLayout(path=path, app=app, multi=multi)


@pytest.fixture(scope="session")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    _need("skopeo", "skopeo")
    return Skopeo(tmp_path_factory.mktemp("skopeo"))


UpstreamFactory = Callable[..., UpstreamRegistry]


@pytest.fixture
def upstream_registry_factory(tmp_path: Path) -> Iterator[UpstreamFactory]:
    """`make(auth=("u","p"), proxy_remote=URL, ...)` -> a started docker-registry."""
    _need("docker-registry", "docker-registry")
    started: list[UpstreamRegistry] = []

    def make(**kwargs: Any) -> UpstreamRegistry:
        registry = UpstreamRegistry(tmp_path / f"upstream-{len(started)}", **kwargs)
        started.append(registry)
        return registry.start()

    yield make
    for registry in reversed(started):
        registry.stop()


@pytest.fixture
def upstream_registry(upstream_registry_factory: UpstreamFactory) -> UpstreamRegistry:
    """A plain (anonymous, delete-enabled) docker-registry on 127.0.0.1."""
    return upstream_registry_factory()


SatelliteFactory = Callable[..., SatelliteProcess]


@pytest.fixture
def satellite_factory(tmp_path: Path) -> Iterator[SatelliteFactory]:
    """`make(push=True, upstreams=[UpstreamTable(...)], extra_config="...", ...)` -> started."""
    started: list[SatelliteProcess] = []

    def make(**kwargs: Any) -> SatelliteProcess:
        sat = SatelliteProcess(tmp_path / f"satellite-{len(started)}", **kwargs)
        started.append(sat)
        return sat.start()

    yield make
    for sat in reversed(started):
        sat.stop()


@pytest.fixture
def satellite(satellite_factory: SatelliteFactory) -> SatelliteProcess:
    """A running satellite with pushes enabled and a fresh data dir under tmp_path."""
    return satellite_factory()

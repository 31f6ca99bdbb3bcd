"""image/layout.py stays standard library only (image/build.sh runs it without the
project installed), so it spells digests itself: here it must agree with the project's
digest helper (registry_proxy.digest) on bytes, on files and on a gzip layer's diff id."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from registry_proxy.digest import Digest
from tests.support.satellite import REPO_ROOT


@pytest.fixture(scope="module")
def layout_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_layout", REPO_ROOT / "image/layout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digests_agree_with_the_project_helper(layout_py: ModuleType, tmp_path: Path) -> None:
    layout = layout_py.Layout(tmp_path / "layout")
    data = json.dumps({"a": 1}).encode()
    added = layout.add_bytes(data, "application/json")
    assert added["digest"] == str(Digest.of(data))
    assert (tmp_path / "layout/blobs/sha256" / Digest.of(data).encoded).read_bytes() == data

    raw = bytes(range(256)) * 5000  # over one read chunk of neither kind
    gz = tmp_path / "layer.tar.gz"
    gz.write_bytes(gzip.compress(raw, mtime=0))
    from_file = layout.add_file(gz, "application/vnd.oci.image.layer.v1.tar+gzip")
    digest, size = Digest.of_file(gz)
    assert (from_file["digest"], from_file["size"]) == (str(digest), size)
    assert size == gz.stat().st_size
    assert layout_py._diff_id(gz) == str(Digest.of(raw))
    assert layout_py._diff_id(gz) != from_file["digest"]

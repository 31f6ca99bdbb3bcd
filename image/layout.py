"""The appliance image's OCI layout writer, used by image/build.sh. Standard library only.

    python3 image/layout.py tar DIR OUT.tar [PATH=UID:GID:MODE]...   # a directory as a layer
    python3 image/layout.py gzip IN.tar OUT.tar.gz                    # deterministic gzip
    python3 image/layout.py write OUT_DIR SPEC.json                   # the OCI image layout

Same inputs, same bytes: tar entries sorted, mtime fixed to SOURCE_DATE_EPOCH, owners
root unless named, gzip without a name or a time, JSON with sorted keys.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 1 << 20


def _epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def tar_dir(src: Path, out: Path, owners: dict[str, tuple[int, int, int]]) -> None:
    """`src` as a layer tar: paths relative to it, sorted, fixed mtime, root-owned unless
    `owners` names the path (uid, gid, mode)."""
    epoch = _epoch()
    paths = sorted(p.relative_to(src).as_posix() for p in src.rglob("*"))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            info = tar.gettarinfo(str(src / rel), arcname=rel)
            info.mtime = epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if rel in owners:
                info.uid, info.gid, info.mode = owners[rel]
            if info.isfile():
                with (src / rel).open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)


def gzip_file(src: Path, out: Path) -> None:
    with (
        src.open("rb") as fin,
        out.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
    ):
        shutil.copyfileobj(fin, gz, CHUNK)


def _digest(hasher: hashlib._Hash) -> str:
    """``sha256:<hex>``: this script's one digest spelling. It stays standard library only
    (build.sh runs it without the project installed); tests/test_image_layout.py checks
    that it agrees with registry_proxy.digest, the project's digest helper."""
    return f"{hasher.name}:{hasher.hexdigest()}"


def _digest_file(path: Path) -> tuple[str, int]:
    with path.open("rb") as fh:
        return _digest(hashlib.file_digest(fh, "sha256")), path.stat().st_size


def _diff_id(gz: Path) -> str:
    """The digest of the uncompressed layer, streamed."""
    hasher = hashlib.sha256()
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with gz.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(inflate.decompress(chunk))
    hasher.update(inflate.flush())
    return _digest(hasher)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def add_bytes(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = _digest(hashlib.sha256(data))
        (self.blobs / digest[7:]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def add_file(self, path: Path, media_type: str) -> dict[str, Any]:
        digest, size = _digest_file(path)
        target = self.blobs / digest[7:]
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=self.blobs)
            os.close(fd)
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        return {"mediaType": media_type, "digest": digest, "size": size}


def write(out: Path, spec: dict[str, Any]) -> str:
    """The layout at `out` (replaced); returns the manifest digest.

    spec: {"layers": [{"gz": PATH, "comment": TEXT}], "config": {OCI "config" object},
           "architecture": "amd64", "annotations": {...}, "tags": ["latest", ...]}
    """
    created = datetime.fromtimestamp(_epoch(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if out.exists():
        shutil.rmtree(out)
    layout = Layout(out)
    layers, diff_ids, history = [], [], []
    for layer in spec["layers"]:
        gz = Path(layer["gz"])
        layers.append(layout.add_file(gz, MEDIA_LAYER))
        diff_ids.append(_diff_id(gz))
        history.append({"created": created, "created_by": layer["comment"]})
    config = {
        "created": created,
        "architecture": spec["architecture"],
        "os": "linux",
        "config": spec["config"],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": layout.add_bytes(_json(config), MEDIA_CONFIG),
        "layers": layers,
        "annotations": spec.get("annotations", {}),
    }
    descriptor = layout.add_bytes(_json(manifest), MEDIA_MANIFEST)
    descriptor["platform"] = {"architecture": spec["architecture"], "os": "linux"}
    index = {
        "schemaVersion": 2,
        "manifests": [
            {**descriptor, "annotations": {"org.opencontainers.image.ref.name": tag}}
            for tag in spec["tags"]
        ],
    }
    (out / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(_json(index))
    return str(descriptor["digest"])


def _owner(arg: str) -> tuple[str, tuple[int, int, int]]:
    path, _, spec = arg.partition("=")
    uid, gid, mode = spec.split(":")
    return path, (int(uid), int(gid), int(mode, 8))


def main(argv: list[str]) -> int:
    if argv[:1] == ["tar"] and len(argv) >= 3:
        tar_dir(Path(argv[1]), Path(argv[2]), dict(_owner(a) for a in argv[3:]))
    elif argv[:1] == ["gzip"] and len(argv) == 3:
        gzip_file(Path(argv[1]), Path(argv[2]))
    elif argv[:1] == ["write"] and len(argv) == 3:
        print(write(Path(argv[1]), json.loads(Path(argv[2]).read_text())))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

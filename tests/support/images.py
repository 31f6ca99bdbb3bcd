"""Offline, deterministic container images in an OCI image layout, for tests.

Everything is derived from a seed string: the same call gives the same bytes, so the same
digests, on every run. Layers are tar archives written with mtime 0, uid/gid 0, sorted
names, and gzip with mtime 0 and no file name; file contents come from SHAKE-256 of the
seed (fast, and stable across Python versions). Blobs are streamed to disk while hashed,
so a 1 GiB layer costs disk, not memory.

Layout on disk (image-spec "image-layout"):

    LAYOUT/oci-layout                  {"imageLayoutVersion": "1.0.0"}
    LAYOUT/index.json                  one entry per tag (annotation ref.name)
    LAYOUT/blobs/sha256/<hex>          manifests, indexes, configs, layers
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = "1970-01-01T00:00:00Z"

CHUNK = 1 << 20  # generator and copy granularity

Platform = tuple[str, str]  # (os, architecture)
JSON = dict[str, Any]


# --------------------------------------------------------------------------- digests


def sha256_bytes(data: bytes) -> str:
    """`sha256:<hex>` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of the file at `path`, read in chunks."""
    with path.open("rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding used for every document written here (compact, key order kept)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- content


def seeded_chunks(seed: str, size: int) -> Iterator[bytes]:
    """`size` pseudo-random bytes derived from `seed`, in chunks of at most 1 MiB."""
    index = 0
    remaining = size
    while remaining > 0:
        n = min(CHUNK, remaining)
        yield hashlib.shake_256(f"{seed}\0{index}".encode()).digest(n)
        remaining -= n
        index += 1


class _SeededReader:
    """A read()-able stream of seeded bytes, for `tarfile.addfile` without a buffer."""

    def __init__(self, seed: str, size: int) -> None:
        self._chunks = seeded_chunks(seed, size)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            return self._buf + b"".join(self._chunks)
        while len(self._buf) < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


class _HashingWriter:
    """Forwards writes to `sink` while counting and hashing them."""

    def __init__(self, sink: IO[bytes] | _HashingWriter | gzip.GzipFile) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        self._sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


# --------------------------------------------------------------------------- layout


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hex_ = digest.partition(":")
    return layout / "blobs" / algorithm / hex_


def init_layout(layout: Path) -> Path:
    """Create (or keep) an empty OCI image layout at `layout`."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    marker = layout / "oci-layout"
    if not marker.exists():
        marker.write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    if not (layout / "index.json").exists():
        _write_atomic(layout / "index.json", canonical_json({"schemaVersion": 2, "manifests": []}))
    return layout


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


class _BlobSink:
    """A temp file in the layout's blob dir, renamed to its digest on commit."""

    def __init__(self, layout: Path) -> None:
        self._dir = layout / "blobs" / "sha256"
        self._tmp = self._dir / f".upload-{os.getpid()}-{id(self)}"
        self.file: IO[bytes] = self._tmp.open("wb")
        self.writer = _HashingWriter(self.file)

    def commit(self) -> tuple[str, int]:
        self.file.close()
        digest = self.writer.digest
        self._tmp.replace(self._dir / digest.removeprefix("sha256:"))
        return digest, self.writer.size

    def abort(self) -> None:
        self.file.close()
        self._tmp.unlink(missing_ok=True)


def write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    """Store `data` as a blob of `layout`; returns (digest, size)."""
    init_layout(layout)
    digest = sha256_bytes(data)
    path = blob_path(layout, digest)
    if not path.exists():
        _write_atomic(path, data)
    return digest, len(data)


def read_blob(layout: Path, digest: str) -> bytes:
    return blob_path(layout, digest).read_bytes()


def read_index(layout: Path) -> JSON:
    index: JSON = json.loads((layout / "index.json").read_bytes())
    return index


def find_ref(layout: Path, tag: str) -> JSON:
    """The descriptor that `index.json` of `layout` lists under ref name `tag`."""
    for desc in read_index(layout).get("manifests", []):
        if desc.get("annotations", {}).get(ANNOTATION_REF_NAME) == tag:
            found: JSON = desc
            return found
    raise KeyError(f"{tag!r} not in {layout}/index.json")


def tag_in_layout(layout: Path, tag: str, descriptor: Mapping[str, Any]) -> None:
    """Point ref name `tag` of `layout` at `descriptor` (replacing an earlier entry)."""
    init_layout(layout)
    index = read_index(layout)
    kept = [
        d
        for d in index.get("manifests", [])
        if d.get("annotations", {}).get(ANNOTATION_REF_NAME) != tag
    ]
    entry = dict(descriptor)
    entry["annotations"] = {**entry.get("annotations", {}), ANNOTATION_REF_NAME: tag}
    index["manifests"] = [*kept, entry]
    _write_atomic(layout / "index.json", canonical_json(index))


# --------------------------------------------------------------------------- refs


@dataclass(frozen=True)
class ImageRef:
    """What was written: a manifest or an index, with everything it reaches."""

    layout: Path
    tag: str | None
    digest: str
    size: int
    media_type: str
    config_digest: str | None = None  # None for an index
    layer_digests: tuple[str, ...] = ()
    platform: Platform | None = None
    manifests: tuple[ImageRef, ...] = field(default=())  # per-platform images of an index
    annotations: Mapping[str, str] | None = None

    @property
    def is_index(self) -> bool:
        return self.media_type == MEDIA_OCI_INDEX

    def descriptor(self) -> JSON:
        """The OCI descriptor of this manifest/index (with platform when it has one)."""
        desc: JSON = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            desc["platform"] = {"architecture": self.platform[1], "os": self.platform[0]}
        return desc

    def manifest_bytes(self) -> bytes:
        return read_blob(self.layout, self.digest)

    def manifest_json(self) -> JSON:
        doc: JSON = json.loads(self.manifest_bytes())
        return doc

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """Config and layer digests (of every platform, for an index), in manifest order."""
        if self.is_index:
            return tuple(d for m in self.manifests for d in m.blob_digests)
        assert self.config_digest is not None
        return (self.config_digest, *self.layer_digests)

    @property
    def all_digests(self) -> tuple[str, ...]:
        """Every digest this ref reaches, itself and child manifests included."""
        if self.is_index:
            return (self.digest, *(d for m in self.manifests for d in m.all_digests))
        return (self.digest, *self.blob_digests)

    def blob_file(self, digest: str) -> Path:
        return blob_path(self.layout, digest)


# --------------------------------------------------------------------------- builders


@dataclass(frozen=True)
class _Layer:
    digest: str
    size: int
    diff_id: str
    media_type: str


def _write_layer(
    layout: Path,
    files: Sequence[tuple[str, int, str]],
    *,
    compress: bool,
    compresslevel: int,
) -> _Layer:
    """A tar of `files` ((name, size, seed) each; directories implied) as a layout blob."""
    names: dict[str, tuple[int, str] | None] = {}
    for name, size, seed in files:
        parts = name.split("/")
        for i in range(1, len(parts)):
            names.setdefault("/".join(parts[:i]), None)
        names[name] = (size, seed)

    sink = _BlobSink(layout)
    try:
        gz: gzip.GzipFile | None = None
        if compress:
            gz = gzip.GzipFile(
                filename="", mode="wb", fileobj=sink.writer, compresslevel=compresslevel, mtime=0
            )
        tar_sink = _HashingWriter(gz if gz is not None else sink.writer)
        stream = cast("IO[bytes]", tar_sink)  # tarfile's stream mode only calls write()
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(names):
                entry = names[name]
                info = tarfile.TarInfo(name)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if entry is None:
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                else:
                    info.mode = 0o644
                    info.size = entry[0]
                    tar.addfile(info, _SeededReader(entry[1], entry[0]))
        if gz is not None:
            gz.close()
        digest, size = sink.commit()
    except BaseException:
        sink.abort()
        raise
    return _Layer(
        digest=digest,
        size=size,
        diff_id=tar_sink.digest,
        media_type=MEDIA_OCI_LAYER_GZIP if compress else MEDIA_OCI_LAYER_TAR,
    )


def _layer_files(seed: str, index: int, layer_size: int) -> list[tuple[str, int, str]]:
    """Split `layer_size` bytes over up to 4 files under `layer-<index>/`."""
    count = max(1, min(4, layer_size // 4096))
    base, extra = divmod(layer_size, count)
    return [
        (f"layer-{index}/file-{j}.bin", base + (1 if j < extra else 0), f"{seed}/{index}/{j}")
        for j in range(count)
    ]


def manifest_document(config: JSON, layers: Sequence[JSON]) -> JSON:
    """An OCI image manifest for the given config and layer descriptors."""
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": config,
        "layers": list(layers),
    }


def image_manifest(config: bytes, layers: Sequence[bytes], **extra: Any) -> bytes:
    """The manifest (encoded) of an image made of these config and layer bytes, for tests
    that push blobs themselves; `extra` adds top-level fields (subject, annotations...)."""
    doc = manifest_document(
        {"mediaType": MEDIA_OCI_CONFIG, "digest": sha256_bytes(config), "size": len(config)},
        [
            {"mediaType": MEDIA_OCI_LAYER_GZIP, "digest": sha256_bytes(layer), "size": len(layer)}
            for layer in layers
        ],
    )
    doc.update(extra)
    return json.dumps(doc).encode()


def _write_image(
    layout: Path,
    layer_files: Sequence[Sequence[tuple[str, int, str]]],
    *,
    seed: str,
    platform: Platform,
    compress: bool,
    compresslevel: int,
    annotations: Mapping[str, str] | None,
) -> ImageRef:
    init_layout(layout)
    layers = [
        _write_layer(layout, files, compress=compress, compresslevel=compresslevel)
        for files in layer_files
    ]
    os_, arch = platform
    config: JSON = {
        "created": EPOCH,
        "architecture": arch,
        "os": os_,
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Cmd": ["/bin/true"],
            "Labels": {"org.satellite.test.seed": seed},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": EPOCH, "created_by": f"tests.support.images {seed} layer {i}"}
            for i in range(len(layers))
        ],
    }
    config_digest, config_size = write_blob(layout, canonical_json(config))
    manifest = manifest_document(
        {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": config_size},
        [
            {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    )
    if annotations:
        manifest["annotations"] = dict(annotations)
    digest, size = write_blob(layout, canonical_json(manifest))
    return ImageRef(
        layout=layout,
        tag=None,
        digest=digest,
        size=size,
        media_type=MEDIA_OCI_MANIFEST,
        config_digest=config_digest,
        layer_digests=tuple(layer.digest for layer in layers),
        platform=platform,
        annotations=annotations,
    )


def _tagged(ref: ImageRef, tag: str | None) -> ImageRef:
    if tag is None:
        return ref
    desc = ref.descriptor()
    desc.pop("platform", None)
    tag_in_layout(ref.layout, tag, desc)
    return dataclasses.replace(ref, tag=tag)


def build_image(
    layout: Path,
    tag: str | None,
    *,
    layers: int = 3,
    layer_size: int = 64 * 1024,
    seed: str = "x",
    platform: Platform = ("linux", "amd64"),
    compress: bool = True,
    compresslevel: int = 6,
    annotations: Mapping[str, str] | None = None,
) -> ImageRef:
    """An image of `layers` gzip tar layers of about `layer_size` content bytes each.

    `tag` becomes the layout's ref name (e.g. "app:v1", used as `oci:LAYOUT:app:v1`);
    None writes the blobs without listing the image in index.json.
    """
    if layers < 1 or layer_size < 0:
        raise ValueError("need layers >= 1 and layer_size >= 0")
    files = [
        _layer_files(f"{seed}/{platform[0]}/{platform[1]}", i, layer_size) for i in range(layers)
    ]
    ref = _write_image(
        layout,
        files,
        seed=seed,
        platform=platform,
        compress=compress,
        compresslevel=compresslevel,
        annotations=annotations,
    )
    return _tagged(ref, tag)


def build_index(
    layout: Path,
    tag: str | None,
    platforms: Sequence[Platform] = (("linux", "amd64"), ("linux", "arm64")),
    *,
    layers: int = 2,
    layer_size: int = 32 * 1024,
    seed: str = "x",
    annotations: Mapping[str, str] | None = None,
    compress: bool = True,
) -> ImageRef:
    """An OCI image index over one image per platform (each with its own layers)."""
    if not platforms:
        raise ValueError("an index needs at least one platform")
    children = tuple(
        build_image(
            layout,
            None,
            layers=layers,
            layer_size=layer_size,
            seed=seed,
            platform=p,
            compress=compress,
        )
        for p in platforms
    )
    index: JSON = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [child.descriptor() for child in children],
    }
    if annotations:
        index["annotations"] = dict(annotations)
    digest, size = write_blob(layout, canonical_json(index))
    ref = ImageRef(
        layout=layout,
        tag=None,
        digest=digest,
        size=size,
        media_type=MEDIA_OCI_INDEX,
        manifests=children,
        annotations=annotations,
    )
    return _tagged(ref, tag)


def build_big_image(
    layout: Path,
    tag: str | None,
    size: int,
    *,
    seed: str = "big",
    compress: bool = False,
    platform: Platform = ("linux", "amd64"),
) -> ImageRef:
    """A single-layer image whose layer holds one file of `size` bytes.

    Uncompressed by default: gzip of random bytes runs at ~60 MB/s here, the plain tar at
    disk speed. The layer blob is then `size` plus about 2 KiB of tar headers.
    """
    files = [[(f"big/{seed}.bin", size, f"{seed}/big")]]
    ref = _write_image(
        layout,
        files,
        seed=seed,
        platform=platform,
        compress=compress,
        compresslevel=1,
        annotations=None,
    )
    return _tagged(ref, tag)


@dataclass(frozen=True)
class GeneratedLayout:
    """An OCI layout and the images generated into it (the `image_layout` fixture)."""

    path: Path
    app: ImageRef  # "app:v1": 3 gzip layers, linux/amd64
    multi: ImageRef  # "multi:v1": index over linux/amd64 + linux/arm64

    def oci(self, tag: str) -> str:
        """The skopeo source name, e.g. `oci:/tmp/.../layout:app:v1`."""
        return f"oci:{self.path}:{tag}"

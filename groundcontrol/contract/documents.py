"""The wire documents: trust root, state document, image descriptors and check-ins."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final, Literal, get_args

from groundcontrol.contract.encoding import _typename
from groundcontrol.contract.fields import (
    _DIGEST_RE,
    _MEDIA_TYPE_RE,
    _PLATFORM_RE,
    _REPOSITORY_RE,
    _TAG_RE,
    _check_bool,
    _check_datetime,
    _check_float,
    _check_int,
    _check_keys,
    _check_list,
    _check_match,
    _check_now,
    _check_object,
    _check_satellite,
    _check_text,
    _check_threshold,
    _check_tuple,
    _check_unrecognized,
    _checked_instance,
    _fail,
    _Fields,
    _format_time,
    _json_copy,
    _parse_items,
    _parse_time,
    _set,
    _take,
)

ROOT_PAYLOAD_TYPE: Final = "application/vnd.satellite.root+json"
STATE_PAYLOAD_TYPE: Final = "application/vnd.satellite.state+json"
CHECKIN_PAYLOAD_TYPE: Final = "application/vnd.satellite.checkin+json"

# Byte caps on whole envelopes (base64 payload included). A root lists a handful of keys;
# a state document lists ~300 bytes per image, so 8 MiB is room for >15k images.
DEFAULT_ROOT_MAX_BYTES: Final = 512 * 1024
DEFAULT_STATE_MAX_BYTES: Final = 8 * 1024 * 1024
DEFAULT_CHECKIN_MAX_BYTES: Final = 4 * 1024 * 1024

# How far in the future a state's issued_at may lie (edge clocks drift; a far-future
# issued_at means a wrong clock on one side or a crafted document).
DEFAULT_CLOCK_SKEW: Final = timedelta(minutes=5)

_REPOSITORY: Final = "an OCI repository name"
_DIGEST: Final = "sha256:<64 hex> or sha512:<128 hex>"

ImageStatusValue = Literal["present", "missing", "replicating", "failed"]
IMAGE_STATUSES: Final[frozenset[str]] = frozenset(get_args(ImageStatusValue))


@dataclass(frozen=True)
class Root:
    """The trust root: which keys may sign roots and states, and how many must.

    ``root_keys``/``state_keys`` map keyid to ``public_key_b64``; the constructor checks
    that each keyid is the hash of its key and that each threshold can be met.
    """

    version: int
    expires: datetime
    root_keys: dict[str, str]
    root_threshold: int
    state_keys: dict[str, str]
    state_threshold: int
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"version", "expires", "root_keys", "root_threshold", "state_keys", "state_threshold"}
    )

    def __post_init__(self) -> None:
        _check_int("Root.version", self.version, 1)
        _set(self, "expires", _check_datetime("Root.expires", self.expires))
        _set(self, "root_keys", _check_keys("Root.root_keys", self.root_keys))
        _check_threshold("Root.root_threshold", self.root_threshold, self.root_keys)
        _set(self, "state_keys", _check_keys("Root.state_keys", self.state_keys))
        _check_threshold("Root.state_threshold", self.state_threshold, self.state_keys)
        _set(
            self,
            "unrecognized",
            _check_unrecognized("Root.unrecognized", self.unrecognized, self._FIELDS),
        )

    def is_expired(self, now: datetime) -> bool:
        return _check_now(now) >= self.expires

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "version": self.version,
            "expires": _format_time(self.expires),
            "root_keys": dict(self.root_keys),
            "root_threshold": self.root_threshold,
            "state_keys": dict(self.state_keys),
            "state_threshold": self.state_threshold,
        }

    @classmethod
    def from_dict(cls, data: object) -> "Root":
        f = _Fields(data, "root")
        return cls(
            version=f.required("version"),
            expires=f.required_time("expires"),
            root_keys=f.required("root_keys"),
            root_threshold=f.required("root_threshold"),
            state_keys=f.required("state_keys"),
            state_threshold=f.required("state_threshold"),
            unrecognized=f.rest(),
        )


@dataclass(frozen=True)
class ImageDescriptor:
    """One image a satellite must keep: a manifest or index by digest, optionally tagged.

    ``platforms`` lists the platforms to keep from an index ("linux/amd64",
    "linux/arm64/v8"); empty means all. ``tag`` and ``platforms`` may be absent on the wire.
    """

    repository: str
    tag: str | None
    digest: str
    media_type: str
    size: int
    platforms: tuple[str, ...] = ()
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"repository", "tag", "digest", "media_type", "size", "platforms"}
    )

    def __post_init__(self) -> None:
        w = "ImageDescriptor"
        _check_match(f"{w}.repository", self.repository, _REPOSITORY_RE, "an OCI repository name")
        if self.tag is not None:
            _check_match(f"{w}.tag", self.tag, _TAG_RE, "an OCI tag")
        _check_match(f"{w}.digest", self.digest, _DIGEST_RE, "sha256:<64 hex> or sha512:<128 hex>")
        _check_match(f"{w}.media_type", self.media_type, _MEDIA_TYPE_RE, "a media type")
        _check_int(f"{w}.size", self.size, 0)
        platforms = _check_tuple(f"{w}.platforms", self.platforms)
        for i, platform in enumerate(platforms):
            _check_match(f"{w}.platforms[{i}]", platform, _PLATFORM_RE, "os/arch[/variant]")
        if len(set(platforms)) != len(platforms):
            _fail(f"{w}.platforms", "lists a platform twice")
        _set(self, "platforms", platforms)
        _set(
            self,
            "unrecognized",
            _check_unrecognized(f"{w}.unrecognized", self.unrecognized, self._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "platforms": list(self.platforms),
        }

    @classmethod
    def from_dict(cls, data: object) -> "ImageDescriptor":
        f = _Fields(data, "image")
        platforms = f.optional("platforms", [])
        if not isinstance(platforms, list):
            _fail("image.platforms", f"expected a list, got {_typename(platforms)}")
        return cls(
            repository=f.required("repository"),
            tag=f.optional("tag", None),
            digest=f.required("digest"),
            media_type=f.required("media_type"),
            size=f.required("size"),
            platforms=tuple(platforms),
            unrecognized=f.rest(),
        )


@dataclass(frozen=True)
class StateDocument:
    """The desired state of one satellite: images to hold and its configuration.

    ``version`` increases with every document Ground Control signs for the satellite,
    including re-signing unchanged content; ``expires`` must lie after ``issued_at``.
    Two descriptors may not give the same repository:tag different digests.
    """

    satellite: str
    version: int
    issued_at: datetime
    expires: datetime
    images: tuple[ImageDescriptor, ...]
    config: dict[str, Any] = field(default_factory=dict)
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"satellite", "version", "issued_at", "expires", "images", "config"}
    )

    def __post_init__(self) -> None:
        w = "StateDocument"
        _check_satellite(f"{w}.satellite", self.satellite)
        _check_int(f"{w}.version", self.version, 1)
        _set(self, "issued_at", _check_datetime(f"{w}.issued_at", self.issued_at))
        _set(self, "expires", _check_datetime(f"{w}.expires", self.expires))
        if self.expires <= self.issued_at:
            _fail(f"{w}.expires", "must be later than issued_at")
        images = _check_tuple(f"{w}.images", self.images)
        tagged: dict[tuple[str, str], str] = {}
        for i, image in enumerate(images):
            if not isinstance(image, ImageDescriptor):
                _fail(f"{w}.images[{i}]", f"expected an ImageDescriptor, got {_typename(image)}")
            if image.tag is not None:
                other = tagged.setdefault((image.repository, image.tag), image.digest)
                if other != image.digest:
                    _fail(
                        f"{w}.images[{i}]",
                        f"{image.repository}:{image.tag} is given two different digests",
                    )
        _set(self, "images", images)
        _set(self, "config", _check_object(f"{w}.config", self.config))
        _set(
            self,
            "unrecognized",
            _check_unrecognized(f"{w}.unrecognized", self.unrecognized, self._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "satellite": self.satellite,
            "version": self.version,
            "issued_at": _format_time(self.issued_at),
            "expires": _format_time(self.expires),
            "images": [image.to_dict() for image in self.images],
            "config": _json_copy("config", self.config),
        }

    @classmethod
    def from_dict(cls, data: object) -> "StateDocument":
        f = _Fields(data, "state")
        images = f.required_items("images", ImageDescriptor.from_dict)
        return cls(
            satellite=f.required("satellite"),
            version=f.required("version"),
            issued_at=f.required_time("issued_at"),
            expires=f.required_time("expires"),
            images=images,
            config=f.required("config"),
            unrecognized=f.rest(),
        )


@dataclass(frozen=True)
class ImageStatus:
    """What a satellite reports about one image of its state."""

    repository: str
    digest: str
    status: ImageStatusValue
    error: str | None = None
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"repository", "digest", "status", "error"})

    def __post_init__(self) -> None:
        self._check_fields(self.__dict__)

    @classmethod
    def _check_fields(cls, f: dict[str, Any]) -> None:
        """The checks of every field, normalising ``f`` in place: the constructor's, and
        ``from_dict``'s before it builds the object without running them a second time."""
        _check_match("ImageStatus.repository", f["repository"], _REPOSITORY_RE, _REPOSITORY)
        _check_match("ImageStatus.digest", f["digest"], _DIGEST_RE, _DIGEST)
        status = f["status"]
        if status not in IMAGE_STATUSES:
            _fail("ImageStatus.status", f"expected one of {sorted(IMAGE_STATUSES)}, got {status!r}")
        if f["error"] is not None:
            _check_text("ImageStatus.error", f["error"])
        f["unrecognized"] = _check_unrecognized(
            "ImageStatus.unrecognized", f["unrecognized"], cls._FIELDS
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "repository": self.repository,
            "digest": self.digest,
            "status": self.status,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: object) -> "ImageStatus":
        (repository, digest, status, error), rest = _take(
            data, "image", ("repository", "digest", "status"), (("error", None),)
        )
        fields = {
            "repository": repository,
            "digest": digest,
            "status": status,
            "error": error,
            "unrecognized": rest,
        }
        cls._check_fields(fields)
        return _checked_instance(cls, fields)


@dataclass(frozen=True)
class CheckIn:
    """A satellite's signed report; Ground Control ingests by (satellite, seq) idempotently.

    ``state_version`` 0 means no state applied yet. ``state_expired`` is the satellite's own
    statement that the state it serves has expired.

    Optional (absent on the wire when empty, so older reports keep their bytes):
    ``events`` says why an event check-in was sent (objects with a ``type`` such as
    ``state_accepted``, ``state_refused``, ``state_expired``, ``link_restored``,
    ``image_status``, and their details); ``outbox_depth`` and ``dropped`` report the
    satellite's queue when it was signed and how many reports it had to drop.
    """

    satellite: str
    seq: int
    sent_at: datetime
    state_version: int
    images: tuple[ImageStatus, ...]
    cache_bytes_used: int
    cache_bytes_max: int
    errors: tuple[str, ...] = ()
    offline_seconds: float = 0.0
    state_expired: bool = False
    events: tuple[dict[str, Any], ...] = ()
    outbox_depth: int = 0
    dropped: int = 0
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _WIRE_REQUIRED: ClassVar[tuple[str, ...]] = (
        "satellite",
        "seq",
        "sent_at",
        "state_version",
        "images",
        "cache_bytes_used",
        "cache_bytes_max",
        "errors",
        "offline_seconds",
        "state_expired",
    )
    _WIRE_OPTIONAL: ClassVar[tuple[tuple[str, Any], ...]] = (
        ("events", []),
        ("outbox_depth", 0),
        ("dropped", 0),
    )

    _FIELDS: ClassVar[frozenset[str]] = frozenset(_WIRE_REQUIRED).union(
        name for name, _default in _WIRE_OPTIONAL
    )

    def __post_init__(self) -> None:
        self._check_fields(self.__dict__)

    @classmethod
    def _check_fields(cls, f: dict[str, Any]) -> None:
        """The checks of every field, normalising ``f`` in place (see ImageStatus)."""
        _check_satellite("CheckIn.satellite", f["satellite"])
        _check_int("CheckIn.seq", f["seq"], 1)
        f["sent_at"] = _check_datetime("CheckIn.sent_at", f["sent_at"])
        _check_int("CheckIn.state_version", f["state_version"], 0)
        images = f["images"] = _check_tuple("CheckIn.images", f["images"])
        for i, image in enumerate(images):
            if not isinstance(image, ImageStatus):
                _fail(f"CheckIn.images[{i}]", f"expected an ImageStatus, got {_typename(image)}")
        _check_int("CheckIn.cache_bytes_used", f["cache_bytes_used"], 0)
        _check_int("CheckIn.cache_bytes_max", f["cache_bytes_max"], 0)
        errors = f["errors"] = _check_tuple("CheckIn.errors", f["errors"])
        for i, error in enumerate(errors):
            _check_text(f"CheckIn.errors[{i}]", error)
        f["offline_seconds"] = _check_float("CheckIn.offline_seconds", f["offline_seconds"])
        _check_bool("CheckIn.state_expired", f["state_expired"])
        checked = []
        for i, event in enumerate(_check_tuple("CheckIn.events", f["events"])):
            copied = _check_object(f"CheckIn.events[{i}]", event)
            _check_text(f"CheckIn.events[{i}].type", copied.get("type"))
            checked.append(copied)
        f["events"] = tuple(checked)
        _check_int("CheckIn.outbox_depth", f["outbox_depth"], 0)
        _check_int("CheckIn.dropped", f["dropped"], 0)
        f["unrecognized"] = _check_unrecognized(
            "CheckIn.unrecognized", f["unrecognized"], cls._FIELDS
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "satellite": self.satellite,
            "seq": self.seq,
            "sent_at": _format_time(self.sent_at),
            "state_version": self.state_version,
            "images": [image.to_dict() for image in self.images],
            "cache_bytes_used": self.cache_bytes_used,
            "cache_bytes_max": self.cache_bytes_max,
            "errors": list(self.errors),
            "offline_seconds": self.offline_seconds,
            "state_expired": self.state_expired,
            **({"events": [dict(e) for e in self.events]} if self.events else {}),
            **({"outbox_depth": self.outbox_depth} if self.outbox_depth else {}),
            **({"dropped": self.dropped} if self.dropped else {}),
        }

    @classmethod
    def from_dict(cls, data: object) -> "CheckIn":
        values, rest = _take(data, "checkin", cls._WIRE_REQUIRED, cls._WIRE_OPTIONAL)
        (satellite, seq, sent_at, state_version, images, used, most, errors, offline) = values[:9]
        (state_expired, events, outbox_depth, dropped) = values[9:]
        fields = {
            "satellite": satellite,
            "seq": seq,
            "sent_at": _parse_time("checkin.sent_at", sent_at),
            "state_version": state_version,
            "images": _parse_items(
                "checkin.images", _check_list("checkin.images", images), ImageStatus.from_dict
            ),
            "cache_bytes_used": used,
            "cache_bytes_max": most,
            "errors": _check_list("checkin.errors", errors),
            "offline_seconds": offline,
            "state_expired": state_expired,
            "events": _check_list("checkin.events", events),
            "outbox_depth": outbox_depth,
            "dropped": dropped,
            "unrecognized": rest,
        }
        cls._check_fields(fields)
        return _checked_instance(cls, fields)

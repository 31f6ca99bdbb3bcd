"""Tests of the wire contract: round trips, and TUF's attacks where they apply."""

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from groundcontrol.contract import (
    CHECKIN_PAYLOAD_TYPE,
    DEFAULT_CLOCK_SKEW,
    ROOT_PAYLOAD_TYPE,
    STATE_PAYLOAD_TYPE,
    CheckIn,
    ContractError,
    Envelope,
    ExpiredError,
    ImageDescriptor,
    ImageStatus,
    MalformedDocument,
    NotYetValidError,
    OversizeError,
    RollbackError,
    Root,
    RotationError,
    Signature,
    SignatureError,
    StateDocument,
    WrongSatelliteError,
    canonical_json,
    generate_key,
    is_same_state,
    keyid,
    load_public_key_b64,
    pae,
    private_key_from_pem,
    private_key_to_pem,
    public_key_b64,
    sign_checkin,
    sign_envelope,
    sign_root,
    sign_state,
    state_is_expired,
    verify_checkin,
    verify_root,
    verify_root_chain,
    verify_state,
)

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
DIGEST_512 = "sha512:" + "cd" * 64
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
SAT = "shop-0042"


def wrong_type(value: object) -> Any:
    """A wrongly typed value, passed on purpose."""
    return value


def key(n: int) -> Ed25519PrivateKey:
    """Deterministic keys keep failures reproducible."""
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def keymap(keys: Sequence[Ed25519PrivateKey]) -> dict[str, str]:
    return {keyid(k.public_key()): public_key_b64(k.public_key()) for k in keys}


def make_root(
    version: int,
    root_keys: Sequence[Ed25519PrivateKey],
    state_keys: Sequence[Ed25519PrivateKey],
    *,
    root_threshold: int = 1,
    state_threshold: int = 1,
    expires: datetime = NOW + timedelta(days=365),
) -> Root:
    return Root(
        version=version,
        expires=expires,
        root_keys=keymap(root_keys),
        root_threshold=root_threshold,
        state_keys=keymap(state_keys),
        state_threshold=state_threshold,
    )


def make_image(**changes: Any) -> ImageDescriptor:
    image = ImageDescriptor(
        repository="docker.io/library/nginx",
        tag="1.27",
        digest=DIGEST,
        media_type=INDEX_TYPE,
        size=1234,
        platforms=("linux/amd64", "linux/arm64/v8"),
    )
    return replace(image, **changes)


def make_state(**changes: Any) -> StateDocument:
    doc = StateDocument(
        satellite=SAT,
        version=5,
        issued_at=NOW - timedelta(hours=1),
        expires=NOW + timedelta(days=7),
        images=(
            make_image(),
            make_image(repository="library/busybox", tag=None, digest=DIGEST_512),
        ),
        config={"registry": {"push": False}, "max_bytes": 50 * 2**30, "labels": ["a", "b"]},
    )
    return replace(doc, **changes)


def make_checkin(**changes: Any) -> CheckIn:
    checkin = CheckIn(
        satellite=SAT,
        seq=17,
        sent_at=NOW,
        state_version=5,
        images=(
            ImageStatus("docker.io/library/nginx", DIGEST, "present"),
            ImageStatus("library/busybox", DIGEST_512, "failed", "upstream unreachable"),
        ),
        cache_bytes_used=10_000,
        cache_bytes_max=50 * 2**30,
        errors=("upstream docker.io unreachable",),
        offline_seconds=3600.5,
        state_expired=False,
    )
    return replace(checkin, **changes)


class Keys:
    root = [key(1), key(2), key(3)]
    state = [key(11), key(12)]
    device = key(21)
    stranger = key(99)


@pytest.fixture
def root() -> Root:
    return make_root(1, Keys.root[:1], Keys.state[:1])


@pytest.fixture
def root_2of3() -> Root:
    """Root keys 2-of-3, state keys 2-of-2."""
    return make_root(1, Keys.root, Keys.state, root_threshold=2, state_threshold=2)


def state_bytes(doc: StateDocument, keys: Sequence[Ed25519PrivateKey]) -> bytes:
    return sign_state(doc, keys).to_json()


def envelope_dict(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(data)
    return result


def raw_envelope(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# ----------------------------------------------------------------------------------- keys


def test_public_key_round_trip_and_keyid() -> None:
    pub = generate_key().public_key()
    text = public_key_b64(pub)
    raw = base64.b64decode(text)
    assert len(raw) == 32
    assert public_key_b64(load_public_key_b64(text)) == text
    assert keyid(pub) == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    "text",
    ["not base64!", base64.b64encode(b"x" * 31).decode(), base64.b64encode(b"x" * 33).decode()],
)
def test_load_public_key_refuses_garbage(text: str) -> None:
    with pytest.raises(MalformedDocument, match="public key"):
        load_public_key_b64(text)


def test_private_key_pem_round_trip() -> None:
    k = generate_key()
    pem = private_key_to_pem(k)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_b64(private_key_from_pem(pem).public_key()) == public_key_b64(k.public_key())


def test_private_key_from_pem_refuses_other_keys() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(MalformedDocument, match="Ed25519"):
        private_key_from_pem(ec_pem)
    encrypted = generate_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(MalformedDocument, match="unencrypted"):
        private_key_from_pem(encrypted)
    with pytest.raises(MalformedDocument):
        private_key_from_pem(b"garbage")


# ------------------------------------------------------------------------ JSON and DSSE


def test_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": "é"}]}) == (
        '{"a":[1,{"c":"é","d":null}],"b":1}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_pae_matches_dsse_spec() -> None:
    # The DSSE v1 protocol document's example.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    # Lengths count bytes, not characters.
    assert pae("tÿpe", b"\x00\xff") == "DSSEv1 5 tÿpe 2 ".encode() + b"\x00\xff"


def test_envelope_round_trip_and_wire_shape() -> None:
    env = sign_envelope("text/plain", b"hello", [key(1), key(2)])
    data = env.to_json()
    obj = envelope_dict(data)
    assert set(obj) == {"payloadType", "payload", "signatures"}
    assert obj["payloadType"] == "text/plain"
    assert base64.b64decode(obj["payload"]) == b"hello"
    assert [s["keyid"] for s in obj["signatures"]] == [
        keyid(key(1).public_key()),
        keyid(key(2).public_key()),
    ]
    assert Envelope.from_json(data, max_bytes=len(data)) == env
    # The signature is an ordinary Ed25519 signature over the PAE (interoperable DSSE).
    key(1).public_key().verify(base64.b64decode(env.signatures[0].sig), pae("text/plain", b"hello"))


def test_sign_envelope_dedupes_keys_and_needs_one() -> None:
    env = sign_envelope("t", b"p", [key(1), key(1)])
    assert len(env.signatures) == 1
    with pytest.raises(ValueError, match="at least one key"):
        sign_envelope("t", b"p", [])


def test_signing_is_deterministic() -> None:
    doc = make_state()
    assert state_bytes(doc, Keys.state) == state_bytes(doc, Keys.state)


def test_oversize_refused_before_parsing() -> None:
    with pytest.raises(OversizeError, match="limit is 10"):
        Envelope.from_json(b"x" * 11, max_bytes=10)  # not JSON: the cap fires first
    Envelope.from_json(sign_envelope("t", b"", [key(1)]).to_json(), max_bytes=10_000)


GOOD_SIG = base64.b64encode(b"s" * 64).decode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "expected an object"),
        (raw_envelope({"payload": "", "signatures": []}), "payloadType.*missing"),
        (raw_envelope({"payloadType": "t", "signatures": []}), "payload.*missing"),
        (raw_envelope({"payloadType": "t", "payload": ""}), "signatures.*missing"),
        (raw_envelope({"payloadType": 1, "payload": "", "signatures": []}), "payloadType"),
        (
            raw_envelope({"payloadType": "t", "payload": "@@@", "signatures": []}),
            "payload: invalid",
        ),
        (raw_envelope({"payloadType": "t", "payload": "YQ", "signatures": []}), "payload: invalid"),
        (raw_envelope({"payloadType": "t", "payload": 5, "signatures": []}), "payload"),
        (raw_envelope({"payloadType": "t", "payload": "", "signatures": {}}), "signatures"),
        (
            raw_envelope({"payloadType": "t", "payload": "", "signatures": ["x"]}),
            r"signatures\[0\]",
        ),
        (
            raw_envelope({"payloadType": "t", "payload": "", "signatures": [{"sig": GOOD_SIG}]}),
            r"signatures\[0\]\.keyid.*missing",
        ),
        (
            raw_envelope({"payloadType": "t", "payload": "", "signatures": [{"keyid": "k"}]}),
            r"signatures\[0\]\.sig.*missing",
        ),
        (
            raw_envelope(
                {"payloadType": "t", "payload": "", "signatures": [{"keyid": 1, "sig": GOOD_SIG}]}
            ),
            r"signatures\[0\]\.keyid",
        ),
        (
            raw_envelope(
                {"payloadType": "t", "payload": "", "signatures": [{"keyid": "k", "sig": "!!"}]}
            ),
            r"signatures\[0\]\.sig: invalid base64",
        ),
        (b'{"payloadType":"a","payloadType":"b","payload":"","signatures":[]}', "duplicate key"),
        (b'{"payloadType":"t","payload":"","signatures":[],"x":NaN}', "NaN"),
        (b'{"payloadType":"t","payload":"","signatures":[],"x":1e999}', "out of range"),
        (b'{"x":' + b"1" * 5000 + b"}", "integer of 5000 digits is out of range"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
    ],
)
def test_malformed_envelopes(data: bytes, match: str) -> None:
    with pytest.raises(MalformedDocument, match=match):
        Envelope.from_json(data, max_bytes=1_000_000)


def test_envelope_ignores_unknown_fields() -> None:
    obj = envelope_dict(sign_envelope("t", b"p", [key(1)]).to_json())
    obj["extension"] = {"x": 1}
    assert Envelope.from_json(raw_envelope(obj), 10_000).payload == b"p"


# ------------------------------------------------------------------------ wire documents


def test_root_round_trip(root_2of3: Root) -> None:
    assert Root.from_dict(root_2of3.to_dict()) == root_2of3
    assert Root.from_dict(json.loads(canonical_json(root_2of3.to_dict()))) == root_2of3
    assert root_2of3.to_dict()["expires"] == "2031-06-01T12:00:00Z"


def test_state_round_trip() -> None:
    doc = make_state(issued_at=datetime(2030, 5, 31, 23, 0, 0, 123456, tzinfo=UTC))
    wire = json.loads(canonical_json(doc.to_dict()))
    assert wire["issued_at"] == "2030-05-31T23:00:00.123456Z"
    assert StateDocument.from_dict(wire) == doc


def test_checkin_round_trip() -> None:
    checkin = make_checkin()
    assert CheckIn.from_dict(json.loads(canonical_json(checkin.to_dict()))) == checkin


def test_datetimes_normalised_to_utc() -> None:
    paris = timezone(timedelta(hours=2))
    doc = make_state(issued_at=datetime(2030, 6, 1, 13, 0, tzinfo=paris))
    assert doc.issued_at == datetime(2030, 6, 1, 11, 0, tzinfo=UTC)
    assert doc.issued_at.tzinfo is UTC
    assert doc.to_dict()["issued_at"] == "2030-06-01T11:00:00Z"


def test_unrecognized_fields_are_preserved() -> None:
    wire = make_state().to_dict()
    wire["future_field"] = {"nested": [1, 2]}
    wire["images"][0]["annotations"] = {"org.example": "x"}
    doc = StateDocument.from_dict(wire)
    assert doc.unrecognized == {"future_field": {"nested": [1, 2]}}
    assert doc.images[0].unrecognized == {"annotations": {"org.example": "x"}}
    assert doc.to_dict() == wire
    root_wire = make_root(1, Keys.root, Keys.state).to_dict() | {"spec": "1.1"}
    assert Root.from_dict(root_wire).to_dict() == root_wire
    checkin_wire = make_checkin().to_dict() | {"uptime": 5}
    checkin_wire["images"][0]["layers_missing"] = 0
    assert CheckIn.from_dict(checkin_wire).to_dict() == checkin_wire


def test_unrecognized_may_not_shadow_known_fields() -> None:
    with pytest.raises(MalformedDocument, match=r"unrecognized.*\['version'\]"):
        make_state(unrecognized={"version": 99})


def test_optional_wire_fields() -> None:
    wire = make_image().to_dict()
    del wire["tag"], wire["platforms"]
    image = ImageDescriptor.from_dict(wire)
    assert image.tag is None
    assert image.platforms == ()
    status = make_checkin().images[0].to_dict()
    del status["error"]
    assert ImageStatus.from_dict(status).error is None


def test_lists_are_accepted_and_stored_as_tuples() -> None:
    image = make_image(platforms=["linux/amd64"])
    assert image.platforms == ("linux/amd64",)
    doc = make_state(images=[image], config={"t": (1, 2)})
    assert doc.images == (image,)
    assert doc.config == {"t": [1, 2]}


def test_config_is_copied() -> None:
    config: dict[str, Any] = {"a": {"b": 1}}
    doc = make_state(config=config)
    config["a"]["b"] = 2
    assert doc.config == {"a": {"b": 1}}


GOOD_ROOT = make_root(1, Keys.root, Keys.state, root_threshold=2)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: replace(GOOD_ROOT, version=0), r"Root\.version: must be >= 1"),
        (lambda: replace(GOOD_ROOT, version=True), r"Root\.version: expected an integer"),
        (
            lambda: replace(GOOD_ROOT, version=wrong_type("2")),
            r"Root\.version: expected an integer",
        ),
        (lambda: replace(GOOD_ROOT, expires=datetime(2031, 1, 1)), r"Root\.expires.*timezone"),
        (
            lambda: replace(GOOD_ROOT, expires=wrong_type("2031-01-01")),
            r"Root\.expires: expected a datetime",
        ),
        (lambda: replace(GOOD_ROOT, root_keys={}), r"Root\.root_keys: must list at least one"),
        (lambda: replace(GOOD_ROOT, root_threshold=0), r"Root\.root_threshold: must be >= 1"),
        (lambda: replace(GOOD_ROOT, root_threshold=4), r"Root\.root_threshold: 4 exceeds"),
        (lambda: replace(GOOD_ROOT, state_threshold=3), r"Root\.state_threshold: 3 exceeds"),
        (
            lambda: replace(
                GOOD_ROOT, state_keys={"ab" * 32: public_key_b64(key(11).public_key())}
            ),
            r"Root\.state_keys.*keyid is not the SHA-256",
        ),
        (
            lambda: replace(GOOD_ROOT, state_keys={"XYZ": public_key_b64(key(11).public_key())}),
            r"Root\.state_keys keyid: expected 64 lowercase hex",
        ),
        (
            lambda: replace(GOOD_ROOT, state_keys={keyid(key(11).public_key()): "%%"}),
            r"Root\.state_keys\[.*invalid base64",
        ),
        (lambda: make_image(repository="../etc/passwd"), r"ImageDescriptor\.repository"),
        (lambda: make_image(repository="Library/Nginx"), r"ImageDescriptor\.repository"),
        (lambda: make_image(tag="-bad"), r"ImageDescriptor\.tag"),
        (lambda: make_image(tag=5), r"ImageDescriptor\.tag: expected a string"),
        (lambda: make_image(digest="sha256:abc"), r"ImageDescriptor\.digest: expected sha256"),
        (lambda: make_image(digest="sha256:" + "AB" * 32), r"ImageDescriptor\.digest"),
        (lambda: make_image(digest="md5:" + "ab" * 16), r"ImageDescriptor\.digest"),
        (lambda: make_image(digest=DIGEST + "\n"), r"ImageDescriptor\.digest"),
        (lambda: make_image(media_type="json"), r"ImageDescriptor\.media_type"),
        (lambda: make_image(size=-1), r"ImageDescriptor\.size: must be >= 0"),
        (lambda: make_image(size=1.5), r"ImageDescriptor\.size: expected an integer"),
        (
            lambda: make_image(platforms="linux/amd64"),
            r"ImageDescriptor\.platforms: expected a list",
        ),
        (lambda: make_image(platforms=("linux",)), r"ImageDescriptor\.platforms\[0\]"),
        (lambda: make_image(platforms=("linux/amd64",) * 2), r"platforms: lists a platform twice"),
        (lambda: make_state(satellite=""), r"StateDocument\.satellite"),
        (lambda: make_state(satellite="a\nb"), r"StateDocument\.satellite"),
        (lambda: make_state(satellite=" a"), r"StateDocument\.satellite"),
        (lambda: make_state(version=0), r"StateDocument\.version"),
        (
            lambda: make_state(expires=NOW - timedelta(days=1)),
            r"StateDocument\.expires: must be later",
        ),
        (lambda: make_state(images=(make_image(), "x")), r"StateDocument\.images\[1\]"),
        (
            lambda: make_state(images=(make_image(), make_image(digest=DIGEST_512))),
            r"images\[1\]: docker\.io/library/nginx:1\.27 is given two different digests",
        ),
        (lambda: make_state(config=[]), r"StateDocument\.config: expected an object"),
        (lambda: make_state(config={"x": {1, 2}}), r"StateDocument\.config\.x: set is not"),
        (lambda: make_state(config={"x": float("inf")}), r"StateDocument\.config\.x"),
        (lambda: make_state(config={1: "x"}), r"StateDocument\.config: object keys"),
        (lambda: make_state(config={"x": "\udcff"}), r"config\.x: not encodable"),
        (lambda: make_checkin(seq=0), r"CheckIn\.seq: must be >= 1"),
        (lambda: make_checkin(state_version=-1), r"CheckIn\.state_version: must be >= 0"),
        (lambda: make_checkin(cache_bytes_used=-1), r"CheckIn\.cache_bytes_used"),
        (lambda: make_checkin(cache_bytes_max=None), r"CheckIn\.cache_bytes_max"),
        (lambda: make_checkin(errors=("ok", 3)), r"CheckIn\.errors\[1\]: expected a string"),
        (lambda: make_checkin(errors=("bad file \udcff",)), r"CheckIn\.errors\[0\]: not encodable"),
        (lambda: make_checkin(offline_seconds=float("nan")), r"CheckIn\.offline_seconds"),
        (lambda: make_checkin(offline_seconds=-1), r"CheckIn\.offline_seconds"),
        (lambda: make_checkin(offline_seconds=True), r"CheckIn\.offline_seconds"),
        (lambda: make_checkin(state_expired="yes"), r"CheckIn\.state_expired: expected a boolean"),
        (lambda: make_checkin(sent_at=datetime(2030, 1, 1)), r"CheckIn\.sent_at"),
        (
            lambda: ImageStatus("library/x", DIGEST, wrong_type("gone")),
            r"ImageStatus\.status: expected one of",
        ),
        (lambda: ImageStatus("library/x", "sha1:00", "present"), r"ImageStatus\.digest"),
        (lambda: ImageStatus("library/x", DIGEST, "failed", wrong_type(3)), r"ImageStatus\.error"),
    ],
)
def test_constructors_name_the_bad_field(build: Callable[[], object], match: str) -> None:
    with pytest.raises(MalformedDocument, match=match):
        build()


def test_malformed_document_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        make_state(version=0)


def test_registry_host_with_port_is_a_valid_repository() -> None:
    assert make_image(repository="127.0.0.1:5000/team/app").repository == "127.0.0.1:5000/team/app"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda w: w.pop("satellite"), r"state\.satellite: required field is missing"),
        (lambda w: w.pop("images"), r"state\.images: required field is missing"),
        (lambda w: w.pop("config"), r"state\.config: required field is missing"),
        (lambda w: w.update(images={}), r"state\.images: expected a list"),
        (lambda w: w.update(version="5"), r"StateDocument\.version: expected an integer"),
        (lambda w: w.update(expires=1900000000), r"state\.expires: expected a time string"),
        (lambda w: w.update(expires="2030-06-08T12:00:00+00:00"), r"state\.expires: expected YYYY"),
        (lambda w: w.update(expires="2030-06-08 12:00:00Z"), r"state\.expires"),
        (lambda w: w.update(expires="2030-02-30T12:00:00Z"), r"state\.expires: invalid time"),
        (lambda w: w.update(expires="\uff12\uff10\uff13\uff10-06-08T12:00:00Z"), r"state\.expires"),
        (lambda w: w["images"][1].pop("digest"), r"state\.images\[1\]: image\.digest: required"),
        (lambda w: w["images"][0].update(size="1"), r"state\.images\[0\].*size"),
        (lambda w: w["images"][0].update(platforms="linux/amd64"), r"images\[0\].*platforms"),
        (lambda w: w["images"].append([]), r"state\.images\[2\]: image: expected an object"),
    ],
)
def test_state_from_dict_names_the_bad_field(
    mutate: Callable[[dict[str, Any]], object], match: str
) -> None:
    wire = make_state().to_dict()
    mutate(wire)
    with pytest.raises(MalformedDocument, match=match):
        StateDocument.from_dict(wire)


@pytest.mark.parametrize(
    "field", ["satellite", "seq", "sent_at", "state_version", "images", "cache_bytes_used",
              "cache_bytes_max", "errors", "offline_seconds", "state_expired"],
)  # fmt: skip
def test_checkin_fields_are_required_on_the_wire(field: str) -> None:
    wire = make_checkin().to_dict()
    del wire[field]
    with pytest.raises(MalformedDocument, match=rf"checkin\.{field}: required field is missing"):
        CheckIn.from_dict(wire)


@pytest.mark.parametrize(
    "field", ["version", "expires", "root_keys", "root_threshold", "state_keys", "state_threshold"]
)
def test_root_fields_are_required_on_the_wire(field: str) -> None:
    wire = GOOD_ROOT.to_dict()
    del wire[field]
    with pytest.raises(MalformedDocument, match=rf"root\.{field}: required field is missing"):
        Root.from_dict(wire)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda w: w.update(seq=0), r"CheckIn\.seq: must be >= 1"),
        (lambda w: w.update(seq=True), r"CheckIn\.seq: expected an integer, got boolean"),
        (lambda w: w.update(satellite=" x"), r"CheckIn\.satellite: expected a printable"),
        (lambda w: w.update(sent_at="2030-06-01"), r"checkin\.sent_at: expected YYYY"),
        (lambda w: w.update(images={}), r"checkin\.images: expected a list, got object"),
        (lambda w: w["images"][0].update(digest="x"), r"images\[0\]: ImageStatus\.digest"),
        (lambda w: w["images"][0].pop("status"), r"checkin\.images\[0\]: image\.status: required"),
        (lambda w: w["images"][0].update(error=1), r"ImageStatus\.error: expected a string"),
        (lambda w: w["images"][0].update(status="gone"), r"ImageStatus\.status: expected one of"),
        (lambda w: w.update(errors="boom"), r"checkin\.errors: expected a list, got string"),
        (lambda w: w.update(errors=[1]), r"CheckIn\.errors\[0\]: expected a string"),
        (lambda w: w.update(offline_seconds=-1), r"CheckIn\.offline_seconds: must be"),
        (lambda w: w.update(state_expired=0), r"CheckIn\.state_expired: expected a boolean"),
        (lambda w: w.update(events={}), r"checkin\.events: expected a list, got object"),
        (lambda w: w.update(events=[{"at": 1}]), r"CheckIn\.events\[0\]\.type: expected a string"),
        (lambda w: w.update(events=["x"]), r"CheckIn\.events\[0\]: expected an object"),
        (lambda w: w.update(outbox_depth=-1), r"CheckIn\.outbox_depth: must be >= 0"),
        (lambda w: w.update(dropped=2**63), r"CheckIn\.dropped: must be <="),
        (lambda w: w.update(cache_bytes_max=1.5), r"CheckIn\.cache_bytes_max: expected an integer"),
    ],
)  # fmt: skip
def test_checkin_from_the_wire_is_checked_like_one_built_in_python(
    change: Callable[[dict[str, Any]], object], match: str
) -> None:
    wire = json.loads(canonical_json(make_checkin().to_dict()))
    change(wire)
    with pytest.raises(MalformedDocument, match=match):
        CheckIn.from_dict(wire)


def test_checkin_from_the_wire_shares_nothing_with_the_wire() -> None:
    wire = make_checkin(events=({"type": "link_restored", "down": [1]},)).to_dict()
    wire["extra"] = {"k": [1]}
    wire["images"][0]["extra"] = {"k": [2]}
    checkin = CheckIn.from_dict(wire)
    wire["extra"]["k"].append(9)
    wire["images"][0]["extra"]["k"].append(9)
    wire["events"][0]["down"].append(9)
    wire["errors"].append("later")
    assert checkin.unrecognized == {"extra": {"k": [1]}}
    assert checkin.images[0].unrecognized == {"extra": {"k": [2]}}
    assert checkin.events == ({"type": "link_restored", "down": [1]},)
    assert checkin.errors == make_checkin().errors
    assert checkin == CheckIn.from_dict(checkin.to_dict())


def test_from_dict_refuses_non_objects() -> None:
    for cls in (Root, StateDocument, CheckIn, ImageDescriptor, ImageStatus):
        with pytest.raises(MalformedDocument, match="expected an object, got list"):
            cls.from_dict([])


# ---------------------------------------------------------------------------- verify_state


def test_verify_state_returns_the_verified_document(root: Root) -> None:
    doc = make_state()
    assert verify_state(state_bytes(doc, Keys.state[:1]), root, SAT, NOW, None) == doc
    assert verify_state(state_bytes(doc, Keys.state[:1]), root, SAT, NOW, 4) == doc


def test_verify_state_threshold_met_by_distinct_keys(root_2of3: Root) -> None:
    doc = make_state()
    assert verify_state(state_bytes(doc, Keys.state), root_2of3, SAT, NOW, None) == doc


@pytest.mark.parametrize("trusted_version", [5, 6, 100])
def test_rollback_refused(root: Root, trusted_version: int) -> None:
    data = state_bytes(make_state(version=5), Keys.state[:1])
    with pytest.raises(
        RollbackError, match=f"version 5 is not newer than trusted version {trusted_version}"
    ):
        verify_state(data, root, SAT, NOW, trusted_version)


def test_same_state_is_recognised_before_rollback_check(root: Root) -> None:
    stored = state_bytes(make_state(), Keys.state[:1])
    fetched = state_bytes(make_state(), Keys.state[:1])
    assert is_same_state(fetched, stored)
    assert not is_same_state(state_bytes(make_state(version=6), Keys.state[:1]), stored)
    with pytest.raises(RollbackError):
        verify_state(fetched, root, SAT, NOW, 5)


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(seconds=1), timedelta(days=400)])
def test_freeze_expired_state_refused(root: Root, delta: timedelta) -> None:
    doc = make_state(expires=NOW - delta, issued_at=NOW - timedelta(days=500))
    with pytest.raises(ExpiredError, match="state: version 5 expired at"):
        verify_state(state_bytes(doc, Keys.state[:1]), root, SAT, NOW, None)


def test_state_is_expired_boundary() -> None:
    doc = make_state()
    assert not state_is_expired(doc, doc.expires - timedelta(microseconds=1))
    assert state_is_expired(doc, doc.expires)
    assert state_is_expired(doc, doc.expires + timedelta(days=1))
    # The satellite can still check the state it serves: a valid, unexpired one first...
    verify_state(
        state_bytes(doc, Keys.state[:1]),
        make_root(1, Keys.root[:1], Keys.state[:1]),
        SAT,
        NOW,
        None,
    )
    # ...then later reports it as expired without re-verifying.
    assert state_is_expired(doc, NOW + timedelta(days=8))


def test_future_issued_at_beyond_skew_refused(root: Root) -> None:
    ok = make_state(issued_at=NOW + DEFAULT_CLOCK_SKEW, expires=NOW + timedelta(days=1))
    verify_state(state_bytes(ok, Keys.state[:1]), root, SAT, NOW, None)
    ahead = make_state(issued_at=NOW + DEFAULT_CLOCK_SKEW + timedelta(seconds=1))
    with pytest.raises(NotYetValidError, match="allowed clock skew"):
        verify_state(state_bytes(ahead, Keys.state[:1]), root, SAT, NOW, None)
    verify_state(
        state_bytes(ahead, Keys.state[:1]), root, SAT, NOW, None, max_clock_skew=timedelta(hours=1)
    )


def test_mix_and_match_another_satellites_state_refused(root: Root) -> None:
    data = state_bytes(make_state(satellite="shop-0043"), Keys.state[:1])
    with pytest.raises(WrongSatelliteError, match="'shop-0043', this is 'shop-0042'"):
        verify_state(data, root, SAT, NOW, None)


def test_payload_type_confusion_root_as_state(root: Root) -> None:
    # One key that is both a root and a state key: the signature itself would be valid.
    both = make_root(1, [key(5)], [key(5)])
    root_env = sign_root(both, [key(5)]).to_json()
    with pytest.raises(MalformedDocument, match=r"payloadType is .*root.*expected .*state"):
        verify_state(root_env, both, SAT, NOW, None)
    # Relabelling the type breaks the signature, because the PAE covers the type.
    relabelled = envelope_dict(root_env) | {"payloadType": STATE_PAYLOAD_TYPE}
    with pytest.raises(SignatureError):
        verify_state(raw_envelope(relabelled), both, SAT, NOW, None)


def test_payload_type_confusion_checkin_as_state() -> None:
    r = make_root(1, Keys.root[:1], [Keys.device])
    data = sign_checkin(make_checkin(), Keys.device).to_json()
    with pytest.raises(MalformedDocument, match="payloadType"):
        verify_state(data, r, SAT, NOW, None)


def test_state_as_root_and_checkin_refused(root: Root) -> None:
    data = state_bytes(make_state(), Keys.state[:1])
    with pytest.raises(MalformedDocument, match="payloadType"):
        verify_root(data, root, NOW)
    with pytest.raises(MalformedDocument, match="payloadType"):
        verify_checkin(data, Keys.state[0].public_key(), SAT)


def test_unknown_key_refused(root: Root) -> None:
    data = state_bytes(make_state(), [Keys.stranger])
    with pytest.raises(
        SignatureError, match=r"0 valid .* threshold is 1 \(0 invalid, 1 by unknown"
    ):
        verify_state(data, root, SAT, NOW, None)


def test_root_key_may_not_sign_state(root: Root) -> None:
    with pytest.raises(SignatureError):
        verify_state(state_bytes(make_state(), Keys.root[:1]), root, SAT, NOW, None)


def test_wrong_key_under_a_trusted_keyid_refused(root: Root) -> None:
    env = sign_state(make_state(), [Keys.stranger])
    forged = Signature(keyid(Keys.state[0].public_key()), env.signatures[0].sig)
    data = replace(env, signatures=(forged,)).to_json()
    with pytest.raises(SignatureError, match=r"\(1 invalid, 0 by unknown"):
        verify_state(data, root, SAT, NOW, None)


def test_below_threshold_refused(root_2of3: Root) -> None:
    data = state_bytes(make_state(), Keys.state[:1])
    with pytest.raises(SignatureError, match=r"1 valid signature.*threshold is 2"):
        verify_state(data, root_2of3, SAT, NOW, None)


def test_same_key_twice_counts_once(root_2of3: Root) -> None:
    env = sign_state(make_state(), Keys.state[:1])
    doubled = replace(env, signatures=env.signatures * 2).to_json()
    with pytest.raises(SignatureError, match=r"1 valid signature.*threshold is 2"):
        verify_state(doubled, root_2of3, SAT, NOW, None)


def test_unknown_signatures_do_not_count_but_do_not_hurt(root_2of3: Root) -> None:
    env = sign_state(make_state(), [Keys.state[0], Keys.stranger, key(98)])
    with pytest.raises(SignatureError, match=r"1 valid .*2 by unknown"):
        verify_state(env.to_json(), root_2of3, SAT, NOW, None)
    env = sign_state(make_state(), [Keys.stranger, *Keys.state])
    assert verify_state(env.to_json(), root_2of3, SAT, NOW, None).version == 5


def test_bad_signature_before_good_one_of_same_keyid_is_not_retried(root: Root) -> None:
    # Only the first signature per keyid is tried: a flood of bogus signatures claiming a
    # trusted keyid costs one verification. (Anyone able to add signatures can also strip
    # them, so this refuses nothing an attacker could not already suppress.)
    env = sign_state(make_state(), Keys.state[:1])
    bogus = Signature(env.signatures[0].keyid, GOOD_SIG)
    data = replace(env, signatures=(bogus,) * 1000 + env.signatures).to_json()
    with pytest.raises(SignatureError, match=r"\(1 invalid"):
        verify_state(data, root, SAT, NOW, None)


def test_no_signatures_refused(root: Root) -> None:
    env = replace(sign_state(make_state(), Keys.state[:1]), signatures=())
    with pytest.raises(SignatureError, match="0 valid"):
        verify_state(env.to_json(), root, SAT, NOW, None)


def test_tampered_payload_refused(root: Root) -> None:
    env = sign_state(make_state(), Keys.state[:1])
    tampered = env.payload.replace(b'"version":5', b'"version":6')
    assert tampered != env.payload
    with pytest.raises(SignatureError):
        verify_state(replace(env, payload=tampered).to_json(), root, SAT, NOW, None)


def test_tampered_signature_refused(root: Root) -> None:
    env = sign_state(make_state(), Keys.state[:1])
    raw = bytearray(base64.b64decode(env.signatures[0].sig))
    raw[0] ^= 1
    sig = Signature(env.signatures[0].keyid, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(SignatureError, match="1 invalid"):
        verify_state(replace(env, signatures=(sig,)).to_json(), root, SAT, NOW, None)


def test_truncated_signature_refused(root: Root) -> None:
    env = sign_state(make_state(), Keys.state[:1])
    sig = Signature(env.signatures[0].keyid, base64.b64encode(b"short").decode())
    with pytest.raises(SignatureError):
        verify_state(replace(env, signatures=(sig,)).to_json(), root, SAT, NOW, None)


ED25519_L = 2**252 + 27742317777372353535851937790883648493


@pytest.mark.parametrize(
    "change",
    [
        # the same signature with S + L: a second valid-looking encoding (malleability)
        lambda raw: raw[:32] + (int.from_bytes(raw[32:], "little") + ED25519_L).to_bytes(32, "little"),  # noqa: E501
        lambda raw: raw + b"\x00",  # 65 bytes
        lambda raw: raw[:63],  # 63 bytes
        lambda raw: bytes(64),  # all zeros: R is a point of small order
    ],
    ids=["S+L", "65 bytes", "63 bytes", "zeros"],
)  # fmt: skip
def test_signature_encodings_other_than_the_signers_are_refused(
    root: Root, change: Callable[[bytes], bytes]
) -> None:
    env = sign_state(make_state(), Keys.state[:1])
    raw = base64.b64decode(env.signatures[0].sig)
    sig = Signature(env.signatures[0].keyid, base64.b64encode(change(raw)).decode())
    with pytest.raises(SignatureError, match="1 invalid"):
        verify_state(replace(env, signatures=(sig,)).to_json(), root, SAT, NOW, None)


def test_oversized_state_refused(root: Root) -> None:
    data = state_bytes(make_state(), Keys.state[:1])
    verify_state(data, root, SAT, NOW, None, max_bytes=len(data))
    with pytest.raises(OversizeError):
        verify_state(data, root, SAT, NOW, None, max_bytes=len(data) - 1)


def test_endless_data_default_cap(root: Root) -> None:
    huge = make_state(config={"junk": "x" * (9 * 2**20)})
    with pytest.raises(OversizeError):
        verify_state(state_bytes(huge, Keys.state[:1]), root, SAT, NOW, None)


def test_signed_garbage_payload_is_malformed(root: Root) -> None:
    for payload in (b"not json", b"[]", canonical_json({"satellite": SAT})):
        env = sign_envelope(STATE_PAYLOAD_TYPE, payload, Keys.state[:1])
        with pytest.raises(MalformedDocument):
            verify_state(env.to_json(), root, SAT, NOW, None)


def test_signed_payload_with_wrong_types_is_malformed(root: Root) -> None:
    wire = make_state().to_dict() | {"version": "5"}
    env = sign_envelope(STATE_PAYLOAD_TYPE, canonical_json(wire), Keys.state[:1])
    with pytest.raises(MalformedDocument, match=r"StateDocument\.version"):
        verify_state(env.to_json(), root, SAT, NOW, None)


def test_expired_root_refuses_new_state() -> None:
    old_root = make_root(1, Keys.root[:1], Keys.state[:1], expires=NOW)
    with pytest.raises(ExpiredError, match="trusted root version 1 expired"):
        verify_state(state_bytes(make_state(), Keys.state[:1]), old_root, SAT, NOW, None)


def test_naive_now_is_a_programming_error(root: Root) -> None:
    data = state_bytes(make_state(), Keys.state[:1])
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_state(data, root, SAT, datetime(2030, 6, 1), None)
    with pytest.raises(ValueError, match="timezone-aware"):
        state_is_expired(make_state(), datetime(2030, 6, 1))


def test_all_refusals_are_contract_errors(root: Root) -> None:
    attempts = [
        b"garbage",
        state_bytes(make_state(satellite="other"), Keys.state[:1]),
        state_bytes(make_state(), [Keys.stranger]),
        state_bytes(make_state(expires=NOW, issued_at=NOW - timedelta(1)), Keys.state[:1]),
    ]
    for data in attempts:
        with pytest.raises(ContractError):
            verify_state(data, root, SAT, NOW, None)


# ----------------------------------------------------------------------- roots and rotation


def rotate(
    new: Root, old_keys: Sequence[Ed25519PrivateKey], new_keys: Sequence[Ed25519PrivateKey]
) -> bytes:
    return sign_root(new, [*old_keys, *new_keys]).to_json()


def test_bootstrap_root_self_signed(root_2of3: Root) -> None:
    data = sign_root(root_2of3, Keys.root[:2]).to_json()
    assert verify_root(data, None, NOW) == root_2of3


def test_bootstrap_root_below_own_threshold_refused(root_2of3: Root) -> None:
    with pytest.raises(SignatureError, match=r"new root version 1.*threshold is 2"):
        verify_root(sign_root(root_2of3, Keys.root[:1]).to_json(), None, NOW)


def test_bootstrap_root_signed_by_unlisted_key_refused(root: Root) -> None:
    with pytest.raises(SignatureError):
        verify_root(sign_root(root, [Keys.stranger]).to_json(), None, NOW)


def test_bootstrap_root_expired_refused() -> None:
    old = make_root(1, Keys.root[:1], Keys.state[:1], expires=NOW - timedelta(seconds=1))
    with pytest.raises(ExpiredError, match="root: version 1 expired"):
        verify_root(sign_root(old, Keys.root[:1]).to_json(), None, NOW)


def test_oversized_root_refused(root: Root) -> None:
    data = sign_root(root, Keys.root[:1]).to_json()
    with pytest.raises(OversizeError):
        verify_root(data, None, NOW, max_bytes=100)


def test_rotation_to_new_keys() -> None:
    v1 = make_root(1, Keys.root[:1], Keys.state[:1])
    v2 = make_root(2, [key(31)], [key(41)])
    assert verify_root(rotate(v2, Keys.root[:1], [key(31)]), v1, NOW) == v2


def test_rotation_signed_only_by_new_keys_refused() -> None:
    v1 = make_root(1, Keys.root[:1], Keys.state[:1])
    v2 = make_root(2, [key(31)], [key(41)])
    with pytest.raises(SignatureError, match="keys of trusted root version 1"):
        verify_root(sign_root(v2, [key(31)]).to_json(), v1, NOW)


def test_rotation_signed_only_by_old_keys_refused() -> None:
    v1 = make_root(1, Keys.root[:1], Keys.state[:1])
    v2 = make_root(2, [key(31)], [key(41)])
    with pytest.raises(SignatureError, match="keys of new root version 2"):
        verify_root(sign_root(v2, Keys.root[:1]).to_json(), v1, NOW)


def test_rotation_below_old_threshold_refused(root_2of3: Root) -> None:
    v2 = make_root(2, [key(31)], Keys.state)
    with pytest.raises(SignatureError, match=r"trusted root version 1.*threshold is 2"):
        verify_root(rotate(v2, Keys.root[:1], [key(31)]), root_2of3, NOW)
    assert verify_root(rotate(v2, Keys.root[1:], [key(31)]), root_2of3, NOW) == v2


def test_rotation_skipping_a_version_refused(root: Root) -> None:
    v3 = make_root(3, Keys.root[:1], Keys.state[:1])
    with pytest.raises(RotationError, match="version 3 skips"):
        verify_root(sign_root(v3, Keys.root[:1]).to_json(), root, NOW)


@pytest.mark.parametrize("version", [1, 2])
def test_root_rollback_refused(version: int) -> None:
    trusted = make_root(2, Keys.root[:1], Keys.state[:1])
    old = make_root(version, Keys.root[:1], Keys.state[:1])
    with pytest.raises(
        RollbackError, match=f"version {version} is not newer than trusted version 2"
    ):
        verify_root(sign_root(old, Keys.root[:1]).to_json(), trusted, NOW)


def test_rotation_to_expired_root_refused(root: Root) -> None:
    v2 = make_root(2, Keys.root[:1], Keys.state[:1], expires=NOW - timedelta(days=1))
    with pytest.raises(ExpiredError):
        verify_root(sign_root(v2, Keys.root[:1]).to_json(), root, NOW)


def test_tampered_root_refused(root: Root) -> None:
    v2 = make_root(2, Keys.root[:1], Keys.state[:1])
    env = sign_root(v2, Keys.root[:1])
    # Swap in an attacker's state key without re-signing.
    evil = make_root(2, Keys.root[:1], [Keys.stranger])
    forged = replace(env, payload=canonical_json(evil.to_dict())).to_json()
    with pytest.raises(SignatureError):
        verify_root(forged, root, NOW)


def chain_1_2_3() -> tuple[Root, list[bytes], Root, Root]:
    v1 = make_root(1, [key(1)], [key(11)])
    v2 = make_root(2, [key(2)], [key(12)])
    v3 = make_root(3, [key(3)], [key(13)])
    return v1, [rotate(v2, [key(1)], [key(2)]), rotate(v3, [key(2)], [key(3)])], v2, v3


def test_valid_rotation_chain_1_2_3() -> None:
    v1, chain, v2, v3 = chain_1_2_3()
    assert verify_root_chain(chain, v1, NOW) == v3
    assert verify_root(chain[0], v1, NOW) == v2
    assert verify_root(chain[1], v2, NOW) == v3


def test_empty_chain_keeps_trusted_root() -> None:
    v1, _, _, _ = chain_1_2_3()
    assert verify_root_chain([], v1, NOW) == v1
    expired = make_root(1, [key(1)], [key(11)], expires=NOW)
    with pytest.raises(ExpiredError, match="final root version 1"):
        verify_root_chain([], expired, NOW)


def test_chain_with_gap_refused() -> None:
    v1, _, _, v3 = chain_1_2_3()
    # Even signed by v1's keys, v3 may not follow v1 directly.
    with pytest.raises(RotationError, match=r"root chain\[0\]: root: version 3 skips"):
        verify_root_chain([rotate(v3, [key(1)], [key(3)])], v1, NOW)
    _, chain, _, _ = chain_1_2_3()
    with pytest.raises(SignatureError, match=r"root chain\[0\]"):
        verify_root_chain(chain[1:], v1, NOW)


def test_chain_out_of_order_refused() -> None:
    v1, chain, _, _ = chain_1_2_3()
    with pytest.raises(SignatureError, match=r"root chain\[0\]"):
        verify_root_chain(list(reversed(chain)), v1, NOW)


def test_chain_step_signed_by_grandparent_keys_refused() -> None:
    v1, chain, _, v3 = chain_1_2_3()
    skip_signer = rotate(v3, [key(1)], [key(3)])  # v1's keys, not v2's
    with pytest.raises(SignatureError, match=r"root chain\[1\].*trusted root version 2"):
        verify_root_chain([chain[0], skip_signer], v1, NOW)


def test_chain_tolerates_expired_intermediate_root() -> None:
    # A satellite offline for a year walks through roots that expired meanwhile.
    v1 = make_root(1, [key(1)], [key(11)], expires=NOW - timedelta(days=300))
    v2 = make_root(2, [key(2)], [key(12)], expires=NOW - timedelta(days=30))
    v3 = make_root(3, [key(3)], [key(13)])
    chain = [rotate(v2, [key(1)], [key(2)]), rotate(v3, [key(2)], [key(3)])]
    assert verify_root_chain(chain, v1, NOW) == v3
    with pytest.raises(ExpiredError):  # one step at a time, the expired v2 is refused
        verify_root(chain[0], v1, NOW)


def test_chain_ending_in_expired_root_refused() -> None:
    v1 = make_root(1, [key(1)], [key(11)])
    v2 = make_root(2, [key(2)], [key(12)], expires=NOW)
    with pytest.raises(ExpiredError, match="final root version 2"):
        verify_root_chain([rotate(v2, [key(1)], [key(2)])], v1, NOW)


def test_rotated_out_state_key_refused_after_rotation() -> None:
    v1, chain, _, v3 = chain_1_2_3()
    old_state = state_bytes(make_state(version=9), [key(11)])
    assert verify_state(old_state, v1, SAT, NOW, 8).version == 9
    current = verify_root_chain(chain, v1, NOW)
    with pytest.raises(SignatureError, match="1 by unknown"):
        verify_state(state_bytes(make_state(version=10), [key(11)]), current, SAT, NOW, 9)
    assert (
        verify_state(state_bytes(make_state(version=10), [key(13)]), v3, SAT, NOW, 9).version == 10
    )


def test_rotation_can_raise_the_state_threshold() -> None:
    v1 = make_root(1, [key(1)], [key(11)])
    v2 = make_root(2, [key(1)], [key(11), key(12)], state_threshold=2)
    current = verify_root_chain([rotate(v2, [key(1)], [])], v1, NOW)
    with pytest.raises(SignatureError, match="threshold is 2"):
        verify_state(state_bytes(make_state(), [key(11)]), current, SAT, NOW, None)
    verify_state(state_bytes(make_state(), [key(11), key(12)]), current, SAT, NOW, None)


# -------------------------------------------------------------------------------- check-ins


def test_checkin_round_trip_through_envelope() -> None:
    checkin = make_checkin()
    data = sign_checkin(checkin, Keys.device).to_json()
    assert envelope_dict(data)["payloadType"] == CHECKIN_PAYLOAD_TYPE
    assert verify_checkin(data, Keys.device.public_key(), SAT) == checkin


def test_checkin_with_wrong_device_key_refused() -> None:
    data = sign_checkin(make_checkin(), Keys.stranger).to_json()
    with pytest.raises(SignatureError, match="check-in"):
        verify_checkin(data, Keys.device.public_key(), SAT)


def test_checkin_from_another_satellite_refused() -> None:
    data = sign_checkin(make_checkin(satellite="shop-0043"), Keys.device).to_json()
    with pytest.raises(WrongSatelliteError):
        verify_checkin(data, Keys.device.public_key(), SAT)


def test_tampered_checkin_refused() -> None:
    env = sign_checkin(make_checkin(), Keys.device)
    tampered = env.payload.replace(b'"state_expired":false', b'"state_expired":true')
    assert tampered != env.payload
    with pytest.raises(SignatureError):
        verify_checkin(replace(env, payload=tampered).to_json(), Keys.device.public_key(), SAT)


def test_oversized_checkin_refused() -> None:
    data = sign_checkin(make_checkin(), Keys.device).to_json()
    with pytest.raises(OversizeError):
        verify_checkin(data, Keys.device.public_key(), SAT, max_bytes=len(data) - 1)


def test_old_and_late_checkins_are_accepted() -> None:
    # Check-ins queue offline for days: no time check, Ground Control dedupes by seq.
    checkin = make_checkin(sent_at=NOW - timedelta(days=90), offline_seconds=90 * 86400)
    data = sign_checkin(checkin, Keys.device).to_json()
    assert verify_checkin(data, Keys.device.public_key(), SAT) == checkin


def test_checkin_payload_is_canonical_json() -> None:
    env = sign_checkin(make_checkin(), Keys.device)
    assert env.payload == canonical_json(json.loads(env.payload))
    assert env.payload_type == CHECKIN_PAYLOAD_TYPE
    assert sign_root(GOOD_ROOT, Keys.root[:2]).payload_type == ROOT_PAYLOAD_TYPE

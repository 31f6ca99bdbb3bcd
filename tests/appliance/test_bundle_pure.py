"""The pure parts of USB bundles: the ack list and inventory documents, the state check
on a copy of the trusted state, and the layout walk's order."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from appliance.bundle import BundleError, check_acks, check_state, part_files, referrer_entries
from groundcontrol.bundle import PartsWriter
from groundcontrol.contract import (
    ImageDescriptor,
    MalformedDocument,
    TrustedState,
    canonical_json,
    generate_key,
    sign_acks,
    sign_root,
    sign_state,
)
from groundcontrol.contract.bundle import Acks, Inventory, checkins_body
from registry_proxy.digest import Digest
from registry_proxy.ocilayout import index_document, walk
from registry_proxy.referrers import is_referrer_tag, referrer_tags
from tests.groundcontrol.test_contract import NOW, SAT, make_root, make_state
from tests.groundcontrol.test_contract_trusted import ROOT_KEYS, STATE_KEYS, root_bytes, state_bytes

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def test_acks_round_trip_and_cover() -> None:
    acks = Acks("site-a", 5, frozenset({7, 9}), 3)
    again = Acks.from_bytes(acks.to_bytes())
    assert again == acks
    assert [s for s in range(1, 11) if again.covers(s)] == [1, 2, 3, 4, 5, 7, 9]


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'{"satellite": "a", "state_version": 1, "through": -1, "seqs": []}',
        b'{"satellite": "a", "state_version": 1, "through": 1, "seqs": [true]}',
        b'{"satellite": "a", "state_version": 1, "through": 1, "seqs": [], "more": 1}',
        b'{"satellite": "", "state_version": 1, "through": 1, "seqs": []}',
        b'{"satellite": "a", "state_version": 1, "through": 1, "through": 2, "seqs": []}',
        b'{"satellite": "a", "through": 1, "seqs": []}',  # no state version
    ],
)
def test_acks_refuse_what_is_not_an_ack_list(data: bytes) -> None:
    with pytest.raises(MalformedDocument):
        Acks.from_bytes(data)


def test_inventory_round_trip_and_refusals() -> None:
    inventory = Inventory("site-a", frozenset({"sha256:" + "a" * 64}))
    assert Inventory.from_bytes(inventory.to_bytes()) == inventory
    with pytest.raises(MalformedDocument):
        Inventory.from_bytes(b'{"satellite": "a", "blobs": [1]}')


def test_checkins_body_keeps_each_envelope_byte_for_byte() -> None:
    envelopes = [b'{"payload":"x", "b": 1}', b'{ "payload" : "y" }']
    body = checkins_body(envelopes)
    assert json.loads(body)["checkins"] == [{"payload": "x", "b": 1}, {"payload": "y"}]
    assert all(envelope in body for envelope in envelopes)


def trusted() -> TrustedState:
    trust = TrustedState.first_use(SAT, root_bytes(1), NOW)
    trust.update_state(state_bytes(1), NOW)
    return trust


def test_check_state_works_on_a_copy() -> None:
    trust = trusted()
    checked = check_state(trust, [(1, root_bytes(1))], state_bytes(2), NOW)
    assert checked.doc.version == 2 and checked.newer == [] and checked.current is False
    assert trust.version == 1  # unchanged


def test_check_state_follows_the_root_chain_the_bundle_carries() -> None:
    trust = trusted()
    new_state_keys = [ROOT_KEYS[0]]
    root2 = sign_root(make_root(2, ROOT_KEYS, new_state_keys), ROOT_KEYS).to_json()
    envelope = sign_state(make_state(version=3), new_state_keys).to_json()
    with pytest.raises(BundleError, match="SignatureError"):
        check_state(trust, [(1, root_bytes(1))], envelope, NOW)
    checked = check_state(trust, [(1, root_bytes(1)), (2, root2)], envelope, NOW)
    assert checked.doc.version == 3 and checked.newer == [root2]
    assert checked.root.version == 2 and trust.root.version == 1
    # the ack list of that bundle is signed by the new root's state keys
    acks = Acks(SAT, 4, frozenset(), 3)
    assert check_acks(sign_acks(acks, new_state_keys).to_json(), checked, SAT) == acks
    old_keys = [k for k in STATE_KEYS if k not in new_state_keys]
    with pytest.raises(BundleError, match="SignatureError"):
        check_acks(sign_acks(acks, old_keys).to_json(), checked, SAT)


def test_check_state_names_the_reason() -> None:
    trust = trusted()
    assert check_state(trust, [], state_bytes(1), NOW).current is True  # the applied one
    with pytest.raises(BundleError, match="WrongSatelliteError"):
        check_state(trust, [], state_bytes(2, satellite="other"), NOW)
    trust.update_state(state_bytes(3), NOW)
    with pytest.raises(BundleError, match="RollbackError"):
        check_state(trust, [], state_bytes(2), NOW)
    assert STATE_KEYS  # the fixtures' keys signed all of the above


def test_check_acks_takes_only_a_signed_list_for_this_satellite_and_state() -> None:
    checked = check_state(trusted(), [], state_bytes(2), NOW)
    acks = Acks(SAT, 5, frozenset({7}), 2)
    signed = sign_acks(acks, STATE_KEYS).to_json()
    assert check_acks(signed, checked, SAT) == acks
    assert check_acks(None, checked, SAT) is None
    # a forged list: its payload changed (more check-ins cleared), the signature kept
    envelope = json.loads(signed)
    forged = Acks(SAT, 99, frozenset(), 2)
    envelope["payload"] = base64.b64encode(canonical_json(forged.to_dict())).decode()
    with pytest.raises(BundleError, match="SignatureError"):
        check_acks(json.dumps(envelope).encode(), checked, SAT)
    cases = [
        (acks.to_bytes(), "MalformedDocument"),  # unsigned
        (sign_acks(acks, [generate_key()]).to_json(), "SignatureError"),  # an unknown key
        (sign_acks(Acks("other", 5, frozenset(), 2), STATE_KEYS).to_json(), "WrongSatellite"),
        (sign_acks(Acks(SAT, 5, frozenset(), 1), STATE_KEYS).to_json(), "version 1"),
        (state_bytes(2), "MalformedDocument"),  # a state envelope passed as an ack list
    ]
    for data, reason in cases:
        with pytest.raises(BundleError, match=reason):
            check_acks(data, checked, SAT)


def test_walk_yields_children_before_parents() -> None:
    def blob(data: bytes) -> dict[str, object]:
        return {
            "mediaType": "application/octet-stream",
            "digest": str(Digest.of(data)),
            "size": len(data),
        }

    config = {**blob(b"{}"), "mediaType": "application/vnd.oci.image.config.v1+json"}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [blob(b"one"), blob(b"two")],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": str(Digest.of(manifest)),
                    "size": len(manifest),
                }
            ],
        }
    ).encode()
    docs = {Digest.of(manifest): manifest, Digest.of(index): index}

    async def fetch(repository: str, digest: Digest) -> bytes:
        return docs[digest]

    async def collect() -> list[tuple[str, bool]]:
        media = "application/vnd.oci.image.index.v1+json"
        return [
            (str(node.digest), node.is_manifest)
            async for node in walk("r", Digest.of(index), media, len(index), fetch)
        ]

    order = asyncio.run(collect())
    assert order == [
        (config["digest"], False),
        (str(Digest.of(b"one")), False),
        (str(Digest.of(b"two")), False),
        (str(Digest.of(manifest)), True),
        (str(Digest.of(index)), True),
    ]
    named = json.loads(index_document([("r:v1", str(Digest.of(index)), "x", 1)]))
    assert named["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "r:v1"}


def test_referrer_entries_are_the_named_entries_beside_the_images() -> None:
    image = ImageDescriptor("library/app", "v1", str(Digest.of(b"app")), MANIFEST, 3)
    other = ImageDescriptor("library/app2", None, str(Digest.of(b"app2")), MANIFEST, 4)
    sig, sbom, stray = Digest.of(b"sig"), Digest.of(b"sbom"), Digest.of(b"stray")
    tag = referrer_tags(Digest.parse(image.digest))[1]
    index = index_document(
        [
            ("library/app:v1", image.digest, MANIFEST, 3),
            (f"library/app2@{other.digest}", other.digest, MANIFEST, 4),
            (f"library/app:{tag}", str(sig), MANIFEST, 5),
            (f"library/app2@{sbom}", str(sbom), MANIFEST, 6),
            (f"library/app@{sig}", str(stray), MANIFEST, 7),  # names another digest
            (f"elsewhere/app:{tag}", str(stray), MANIFEST, 7),  # a repository not named
            ("library/app:", str(stray), MANIFEST, 7),
        ]
    )
    found = referrer_entries(index, (image, other))
    assert [(r, str(d.digest), t) for r, d, t in found] == [
        ("library/app", str(sig), tag),
        ("library/app2", str(sbom), None),
    ]
    assert referrer_entries(None, (image,)) == []
    assert referrer_entries(b"{not json", (image,)) == []  # the images do not depend on it


def test_referrer_tags_are_the_schema_then_cosign() -> None:
    digest = Digest.of(b"x")
    base = f"sha256-{digest.encoded}"
    assert referrer_tags(digest) == (base, f"{base}.sig", f"{base}.att", f"{base}.sbom")
    assert is_referrer_tag(f"{base}.att", {digest})
    assert not is_referrer_tag(f"{base}.att", {Digest.of(b"y")})
    assert not is_referrer_tag("v1", {digest})


def test_a_tar_export_takes_its_names_only_when_whole(tmp_path: Path) -> None:
    out = PartsWriter(tmp_path / "bundle.tar", 4)
    out.write(b"0123456789")
    # cut here (kill -9): only .partial files, nothing an import would take for a bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bundle.tar.000.partial",
        "bundle.tar.001.partial",
        "bundle.tar.002.partial",
    ]
    out.close()
    assert [p.read_bytes() for p in sorted(tmp_path.iterdir())] == [b"0123", b"4567", b"89"]
    (tmp_path / "other.tar.partial").write_bytes(b"cut")
    with pytest.raises(BundleError, match="cut short"):
        part_files(tmp_path / "other.tar")
    with pytest.raises(BundleError, match="no such file"):
        part_files(tmp_path / "none.tar")

"""TrustedState (roots first, then states, no rollback), key checks and integer bounds."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from groundcontrol.contract import (
    CHECKIN_PAYLOAD_TYPE,
    ExpiredError,
    MalformedDocument,
    RollbackError,
    RotationError,
    SignatureError,
    TrustedState,
    WrongSatelliteError,
    canonical_json,
    keyid,
    load_public_key_b64,
    sign_checkin,
    sign_envelope,
    sign_root,
    sign_state,
    verify_checkin,
)
from groundcontrol.contract.keys import check_public_key_bytes
from tests.groundcontrol.test_contract import NOW, SAT, key, make_checkin, make_root, make_state

ROOT_KEYS = [key(1)]
STATE_KEYS = [key(2)]

# The eight small-order points (libsodium's blocklist) and two non-canonical encodings.
SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
]
NON_CANONICAL = [
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1
    "0100000000000000000000000000000000000000000000000000000000000080",  # x = -0
]


def root_bytes(version: int = 1, root_keys=ROOT_KEYS, state_keys=STATE_KEYS, signers=None):
    root = make_root(version, root_keys, state_keys)
    return sign_root(root, signers or root_keys).to_json()


def state_bytes(version: int, **changes: object) -> bytes:
    return sign_state(make_state(version=version, **changes), STATE_KEYS).to_json()


def trusted() -> TrustedState:
    return TrustedState.first_use(SAT, root_bytes(), NOW)


@pytest.mark.parametrize("hex_key", SMALL_ORDER + NON_CANONICAL)
def test_low_order_and_non_canonical_keys_are_refused(hex_key: str) -> None:
    b64 = base64.b64encode(bytes.fromhex(hex_key)).decode()
    with pytest.raises(MalformedDocument, match="public key"):
        load_public_key_b64(b64)


def test_a_key_with_a_torsion_component_is_refused() -> None:
    from groundcontrol.contract.keys import _add, _decode_point

    honest = key(7).public_key().public_bytes_raw()
    point = _decode_point(honest)
    torsion = _decode_point(bytes.fromhex(SMALL_ORDER[4]))
    assert point is not None and torsion is not None
    x, y, z, _ = _add(point, torsion)
    p = 2**255 - 19
    zinv = pow(z, p - 2, p)
    ax, ay = x * zinv % p, y * zinv % p
    encoded = (ay | ((ax & 1) << 255)).to_bytes(32, "little")
    check_public_key_bytes(honest)
    with pytest.raises(MalformedDocument, match="prime-order subgroup"):
        check_public_key_bytes(encoded)


def test_the_identity_key_cannot_sign_a_root_that_verifies() -> None:
    # With the identity as a key, the signature (R=identity, s=0) verifies any message in
    # a lax verifier; the key must be refused before any signature is checked.
    identity = base64.b64encode(bytes.fromhex(SMALL_ORDER[0])).decode()
    fake_kid = "00" * 32
    with pytest.raises(MalformedDocument):
        make_root(1, ROOT_KEYS, STATE_KEYS).__class__(
            version=1,
            expires=NOW + timedelta(days=1),
            root_keys={fake_kid: identity},
            root_threshold=1,
            state_keys={fake_kid: identity},
            state_threshold=1,
        )


def test_a_checkin_with_an_int64_overflowing_seq_is_one_bad_entry() -> None:
    with pytest.raises(MalformedDocument, match="seq: must be <="):
        make_checkin(seq=2**63)
    assert make_checkin(seq=2**63 - 1).seq == 2**63 - 1
    with pytest.raises(MalformedDocument, match="offline_seconds"):
        make_checkin(offline_seconds=10**400)
    # a correctly signed payload carrying such a number is refused as malformed
    body = canonical_json({**make_checkin().to_dict(), "seq": 2**63})
    envelope = sign_envelope(CHECKIN_PAYLOAD_TYPE, body, [key(9)]).to_json()
    with pytest.raises(MalformedDocument, match="seq"):
        verify_checkin(envelope, key(9).public_key(), SAT)
    good = sign_checkin(make_checkin(), key(9)).to_json()
    assert verify_checkin(good, key(9).public_key(), SAT).seq == 17


def test_first_use_and_pinned_root_keyids() -> None:
    state = TrustedState.first_use(SAT, root_bytes(), NOW, [keyid(ROOT_KEYS[0].public_key())])
    assert state.root.version == 1 and state.version == 0 and state.state is None
    with pytest.raises(SignatureError, match="pinned root key"):
        TrustedState.first_use(SAT, root_bytes(), NOW, [keyid(key(99).public_key())])


def test_states_must_increase_and_the_object_keeps_the_bytes() -> None:
    trust = trusted()
    first = state_bytes(3)
    assert trust.update_state(first, NOW).version == 3
    assert trust.state_bytes == first and trust.is_current(first)
    with pytest.raises(RollbackError):
        trust.update_state(first, NOW)  # the same bytes again are no new state
    with pytest.raises(RollbackError):
        trust.update_state(state_bytes(2), NOW)
    assert trust.update_state(state_bytes(4), NOW).version == 4
    assert trust.version == 4


def test_refused_states_change_nothing() -> None:
    trust = trusted()
    trust.update_state(state_bytes(3), NOW)
    before = trust.state_bytes
    other = sign_state(make_state(version=9, satellite="shop-other"), STATE_KEYS).to_json()
    with pytest.raises(WrongSatelliteError):
        trust.update_state(other, NOW)
    unknown = sign_state(make_state(version=9), [key(50)]).to_json()
    with pytest.raises(SignatureError):
        trust.update_state(unknown, NOW)
    with pytest.raises(ExpiredError):
        trust.update_state(state_bytes(9), NOW + timedelta(days=30))
    flipped = bytearray(state_bytes(9))
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises((MalformedDocument, SignatureError)):
        trust.update_state(bytes(flipped), NOW)
    assert trust.state_bytes == before and trust.version == 3


def test_root_rotation_then_state_keys_of_the_new_root() -> None:
    trust = trusted()
    new_state_keys = [key(3)]
    rotated = sign_root(make_root(2, ROOT_KEYS, new_state_keys), ROOT_KEYS).to_json()
    # a state signed by the new state key is unknown before the rotation is followed
    by_new_key = sign_state(make_state(version=7), new_state_keys).to_json()
    with pytest.raises(SignatureError):
        trust.update_state(by_new_key, NOW)
    assert trust.update_roots([rotated], NOW).version == 2
    assert trust.update_state(by_new_key, NOW).version == 7
    assert trust.root_chain == [root_bytes(), rotated]


def test_root_updates_are_all_or_nothing() -> None:
    trust = trusted()
    v2 = sign_root(make_root(2, ROOT_KEYS, STATE_KEYS), ROOT_KEYS).to_json()
    v4 = sign_root(make_root(4, ROOT_KEYS, STATE_KEYS), ROOT_KEYS).to_json()
    with pytest.raises(RotationError):
        trust.update_roots([v2, v4], NOW)
    assert trust.root.version == 1 and len(trust.root_chain) == 1
    forged = sign_root(make_root(2, [key(60)], STATE_KEYS), [key(60)]).to_json()
    with pytest.raises(SignatureError):
        trust.update_roots([forged], NOW)
    assert trust.root.version == 1


def test_load_rechecks_signatures_and_keeps_the_highest_version() -> None:
    trust = trusted()
    rotated = sign_root(make_root(2, ROOT_KEYS, [key(3)]), ROOT_KEYS).to_json()
    applied = state_bytes(5)
    trust.update_state(applied, NOW)
    trust.update_roots([rotated], NOW)
    # a state accepted under root 1 still loads after root 2 rotated the state keys, and
    # loading does not care that it has expired since: the satellite keeps serving it
    loaded = TrustedState.load(SAT, trust.root_chain, applied, 6)
    assert loaded.state is not None and loaded.state.version == 5
    assert loaded.version == 6 and loaded.state_expired(NOW + timedelta(days=30))
    with pytest.raises(RollbackError):
        loaded.update_state(sign_state(make_state(version=6), [key(3)]).to_json(), NOW)
    tampered = applied.replace(b'"signatures":[{"keyid":"', b'"signatures":[{"keyid":"0', 1)
    with pytest.raises((MalformedDocument, SignatureError)):
        TrustedState.load(SAT, trust.root_chain, tampered, 5)
    with pytest.raises(SignatureError):
        TrustedState.load(
            SAT,
            [root_bytes(), sign_root(make_root(2, [key(61)], STATE_KEYS), [key(61)]).to_json()],
            None,
            0,
        )

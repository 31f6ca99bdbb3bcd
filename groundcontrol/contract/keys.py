"""Ed25519 public keys: encoding, keyids, and refusal of keys that cannot be trusted."""

import functools
import hashlib
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from groundcontrol.contract.encoding import _b64decode, _b64encode
from groundcontrol.contract.errors import MalformedDocument


def _raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(pub: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, standard base64."""
    return _b64encode(_raw_public(pub))


# Curve25519 in twisted Edwards form: -x^2 + y^2 = 1 + d x^2 y^2 over GF(p); the prime
# subgroup has order L. A public key is refused unless it decodes canonically to a point
# of order exactly L (RFC 8032 5.1.3, plus the subgroup check libsodium makes).
_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, _P - 2, _P)) % _P
_L: Final = 2**252 + 27742317777372353535851937790883648493
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _decode_point(raw: bytes) -> _Point | None:
    """The point ``raw`` encodes, or None when it is not a canonical encoding of one."""
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None  # non-canonical y
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    if (v * x * x - u) % _P != 0:
        x = (x * _SQRT_M1) % _P
        if (v * x * x - u) % _P != 0:
            return None  # not on the curve
    if x == 0 and sign:
        return None  # "negative zero": a second encoding of the same point
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, (x * y) % _P)


def _add(a: _Point, b: _Point) -> _Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * _D * t1 * t2 % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _multiply(point: _Point, scalar: int) -> _Point:
    result: _Point = (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _is_identity(point: _Point) -> bool:
    x, y, z, _ = point
    return x % _P == 0 and (y - z) % _P == 0


def check_public_key_bytes(raw: bytes) -> None:
    """Refuse a raw public key that is not a canonical point of prime order.

    A small-order key (the identity, all zeros, the eight torsion points) makes a fixed
    signature verify for every message, and a key with a torsion component or a
    non-canonical encoding has several names for one key; none of them can come from an
    honest key generator, so all are ``MalformedDocument``.
    """
    if len(raw) != 32:
        raise MalformedDocument(f"public key: expected 32 raw bytes, got {len(raw)}")
    point = _decode_point(raw)
    if point is None:
        raise MalformedDocument("public key: not a canonical encoding of a curve point")
    if _is_identity(_multiply(point, 8)):
        raise MalformedDocument("public key: a point of small order, refused")
    if not _is_identity(_multiply(point, _L)):
        raise MalformedDocument("public key: not in the prime-order subgroup, refused")


@functools.lru_cache(maxsize=1024)
def load_public_key_b64(s: str) -> Ed25519PublicKey:
    """Inverse of ``public_key_b64``; ``MalformedDocument`` if ``s`` is not a usable key.

    Cached: the point checks cost about a millisecond, and roots are checked often.
    """
    raw = _b64decode(s, "public key")
    check_public_key_bytes(raw)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:  # pragma: no cover - every checked key loads
        raise MalformedDocument(f"public key: {exc}") from exc


def keyid(pub: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw public key bytes: the key's name in roots and signatures."""
    return hashlib.sha256(_raw_public(pub)).hexdigest()

"""Secrets that Ground Control must hand out again (upstream registry passwords, Harbor
robot secrets) are sealed at rest with AES-256-GCM under a key kept beside the signing keys
(``<data_dir>/keys/secrets.key``, 0600), so a database dump alone does not leak them.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from groundcontrol.errors import Unavailable
from registry_proxy.durable import create_once

PREFIX = "v1:"


def _load_or_create_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # never replaces a key another process created first
        create_once(path, AESGCM.generate_key(bit_length=256), mode=0o600)
        key = path.read_bytes()
    if len(key) != 32:
        raise Unavailable(f"{path}: not a 256-bit key", code="bad_secrets_key")
    return key


class Sealer:
    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._aead: AESGCM | None = None

    def _get(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(_load_or_create_key(self.key_path))
        return self._aead

    def seal(self, plaintext: str, context: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._get().encrypt(nonce, plaintext.encode(), context.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, context: str) -> str:
        if not sealed.startswith(PREFIX):
            raise Unavailable("sealed secret in an unknown format", code="bad_sealed_secret")
        raw = base64.b64decode(sealed[len(PREFIX) :])
        try:
            return self._get().decrypt(raw[:12], raw[12:], context.encode()).decode()
        except InvalidTag:
            raise Unavailable(
                f"cannot open a sealed secret with {self.key_path}", code="bad_sealed_secret"
            ) from None

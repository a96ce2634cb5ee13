"""Signing keys for the TUF roles: PEM files in a keys folder, or PEM text in env variables.

A key is found by its key id, so files may be named freely and a role's keys can live in
different places (root offline on a laptop, timestamp online on the fleet server).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

ENV_PREFIX = "EDGECLOUD_TUF_KEY_"


def generate_key() -> CryptoSigner:
    """A new ed25519 signing key."""
    return CryptoSigner.generate_ed25519()


def write_key(signer: CryptoSigner, keys_dir: Path, role: str) -> Path:
    """Store a private key as PEM (mode 0600), named after its role and key id."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    path = keys_dir / f"{role}-{signer.public_key.keyid[:12]}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
    return path


def _signer_from_pem(pem: bytes) -> CryptoSigner:
    private = load_pem_private_key(pem, None)
    public = SSlibKey.from_crypto(private.public_key())
    return CryptoSigner(private, public)


def load_signers(
    keys_dir: Path | None, env: Mapping[str, str] | None = None
) -> dict[str, CryptoSigner]:
    """Every private key available here, by key id (files in `keys_dir`, then env)."""
    found: dict[str, CryptoSigner] = {}
    if keys_dir is not None and keys_dir.is_dir():
        for path in sorted(keys_dir.glob("*.pem")):
            signer = _signer_from_pem(path.read_bytes())
            found[signer.public_key.keyid] = signer
    for name, value in (env if env is not None else os.environ).items():
        if name.startswith(ENV_PREFIX) and value.strip():
            signer = _signer_from_pem(value.encode())
            found[signer.public_key.keyid] = signer
    return found

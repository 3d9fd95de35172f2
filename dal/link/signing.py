"""Ed25519 signatures for published models: the agent runs only what the trainer's key signed.

The trainer keeps the private key (PEM, file mode 0600); every agent gets a copy of the public key
and trusts nothing else. The signature covers the manifest (version, size, sha256, ...), and the
sha256 covers the file, so one signature check plus one hash check proves the whole download.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dal.errors import ConfigError, LinkError
from dal.fileio import atomic_write_bytes, sha256_file
from dal.link.messages import ModelManifest


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint (16 hex) of a public key, so a manifest names the key it needs."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str],
    overwrite: bool = False,
) -> str:
    """Write a new key pair as PEM files (private 0600, public 0644); return the key id."""
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise ConfigError(
                f"{path} exists; refusing to replace a signing key",
                hint="agents trust the old public key; pass overwrite only when rotating keys",
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The mode is set before any byte lands: the private key is never readable by others.
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem, mode=0o644)
    return key_id(key.public_key())


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(
            f"cannot read the {what} {path}: {err.strerror}",
            hint="create one with `dal keys generate` or fix the path",
        ) from err


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    data = _read_pem(path, "private signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path} is not a PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{path} is not an Ed25519 key", hint="create one with `dal keys generate`"
        )
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    data = _read_pem(path, "trusted public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path} is not a PEM public key: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def sign_bytes(private_key: Ed25519PrivateKey, data: bytes) -> str:
    """Base64 Ed25519 signature of `data`."""
    return base64.b64encode(private_key.sign(data)).decode("ascii")


def verify_bytes(public_key: Ed25519PublicKey, data: bytes, signature: str) -> None:
    """Raise LinkError unless `signature` (base64) is the trusted key's signature of `data`."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        public_key.verify(raw, data)
    except (InvalidSignature, binascii.Error, ValueError, UnicodeEncodeError) as err:
        raise LinkError(
            "signature check failed: not signed by the trusted key",
            hint="refusing the model; check the agent's trusted public key matches the trainer's",
        ) from err


def sign_manifest(manifest: ModelManifest, private_key: Ed25519PrivateKey) -> ModelManifest:
    """Return `manifest` with key_id and signature set."""
    unsigned = dataclasses.replace(manifest, key_id=key_id(private_key.public_key()), signature="")
    return dataclasses.replace(unsigned, signature=sign_bytes(private_key, unsigned.signed_bytes()))


def verify_manifest(manifest: ModelManifest, public_key: Ed25519PublicKey) -> None:
    """Raise LinkError unless the trusted key signed this exact manifest."""
    if manifest.key_id and manifest.key_id != key_id(public_key):
        raise LinkError(
            f"model {manifest.version} is signed by key {manifest.key_id}, "
            f"the agent trusts {key_id(public_key)}",
            hint="copy the trainer's current public key to the agent",
        )
    verify_bytes(public_key, manifest.signed_bytes(), manifest.signature)


def verify_model_file(
    manifest: ModelManifest, path: str | os.PathLike[str], public_key: Ed25519PublicKey
) -> None:
    """Raise LinkError unless the trusted key signed `manifest` and the file at `path` is the
    one it names (sha256): the whole check a model file passes before anyone runs it."""
    verify_manifest(manifest, public_key)
    digest = sha256_file(path)
    if digest != manifest.sha256:
        raise LinkError(
            f"sha256 of {Path(path).name} is {digest}, the manifest says {manifest.sha256}"
        )

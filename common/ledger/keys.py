"""A node's ledger signing key (Ed25519): create, save 0600, load, and name it in hex.

Not Flower's node authentication key (ECDSA, `certs.node_keys`): this one signs privacy
records, and only the node holds it.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from common.errors import LedgerError
from common.files import write_atomic

PUBLIC_KEY_SUFFIXES = (".pub", ".pem")


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: str | Path, *, force: bool = False,
                     password: bytes | None = None) -> Path:
    """Write `key` as PKCS#8 PEM readable by its owner only (0600).

    An existing file is never replaced unless `force`: losing a node's key means its
    ledger chain cannot be continued under the same identity.
    """
    path = Path(path)
    if path.exists() and not force:
        raise LedgerError(f"signing key {path} already exists: keep it, or pass force to "
                          "replace it (the node's ledger then continues under a new key)")
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            encryption)
    write_atomic(path, pem, mode=0o600)
    return path


def save_public_key(key: Ed25519PublicKey | Ed25519PrivateKey, path: str | Path, *,
                    force: bool = False) -> Path:
    """Write the public half as SubjectPublicKeyInfo PEM: the file an auditor trusts.

    Name it `<node name>.pub`; the auditor's keys folder maps that name to the key.
    """
    path = Path(path)
    if path.exists() and not force:
        raise LedgerError(f"public key {path} already exists: pass force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_public(key).public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def create_signing_key(private_path: str | Path, public_path: str | Path | None = None, *,
                    force: bool = False) -> Ed25519PrivateKey:
    """Generate a node's ledger signing key (Ed25519) and save it (0600).

    Its public half goes to `public_path` (default: `.pub` beside it).
    """
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    if public_path.exists() and not force:
        raise LedgerError(f"public key {public_path} already exists: pass force to replace it")
    key = generate_signing_key()
    save_private_key(key, private_path, force=force)
    save_public_key(key, public_path, force=True)
    return key


def load_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    path = Path(path)
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:  # encrypted without a password, or a password it does not need
        raise LedgerError(f"signing key {path}: {exc}") from None
    except ValueError:
        raise LedgerError(f"signing key {path} is not a PEM private key (or the password "
                          "is wrong)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError(f"signing key {path} is a {type(key).__name__}, not Ed25519")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        raise LedgerError(f"public key {path} holds a PRIVATE key: give auditors only the "
                          "public half (save_public_key), and keep this file on the node")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise LedgerError(f"public key {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LedgerError(f"public key {path} is a {type(key).__name__}, not Ed25519")
    return key


def load_trusted_keys(keys_dir: str | Path) -> dict[str, Ed25519PublicKey]:
    """The node name (file stem) -> public key of every `*.pub`/`*.pem` in `keys_dir`."""
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise LedgerError(f"keys folder {keys_dir} not found: give a folder of "
                          "<node>.pub Ed25519 public keys (PEM)")
    keys: dict[str, Ed25519PublicKey] = {}
    seen: dict[str, str] = {}
    for path in sorted(keys_dir.iterdir()):
        if path.suffix not in PUBLIC_KEY_SUFFIXES or not path.is_file():
            continue
        if path.stem in keys:
            raise LedgerError(f"keys folder {keys_dir} has two keys named {path.stem!r}: "
                              "keep one file per node")
        key = load_public_key(path)
        hexkey = public_key_hex(key)
        if hexkey in seen:
            raise LedgerError(f"keys {path} and {seen[hexkey]} are the same key: one node, "
                              "one file")
        keys[path.stem] = key
        seen[hexkey] = str(path)
    if not keys:
        raise LedgerError(f"keys folder {keys_dir} holds no *.pub or *.pem public keys")
    return keys


def public_key_hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Hex of the raw 32-byte public key: how an entry names its signer."""
    return _public(key).public_bytes(serialization.Encoding.Raw,
                                     serialization.PublicFormat.Raw).hex()


def _public(key: Ed25519PublicKey | Ed25519PrivateKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise LedgerError(f"{what} {path} not found") from None
    except OSError as exc:
        raise LedgerError(f"{what} {path} cannot be read: {exc.strerror}") from None

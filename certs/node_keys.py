"""A partner node's two key pairs: the partner makes them, the coordinator admits the
public halves.

* SuperNode authentication: EC P-384 in OpenSSH format, what Flower 1.42 loads on both
  sides (``node-NAME.key``/``.pub``). The coordinator registers the public half with
  ``flwr supernode register``.
* Ledger signing: Ed25519 in PEM (``node-NAME.ledger.key``/``.pub``). The node signs its
  privacy records with it; the coordinator accepts records from that node only under
  this key, and auditors check the ledger against it (``ledger-keys/NAME.pub``).

Partner and coordinator compare both fingerprints over a second channel before the
coordinator admits the node.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from certs.files import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    CertError,
    Issued,
    admitted_ledger_key_path,
    check_dir,
    ledger_key_paths,
    node_key_paths,
    refuse_existing,
    write_file,
)
from certs.verify import check_node_public_key
from common.errors import LedgerError
from common.ledger.keys import generate_signing_key, load_public_key, public_key_hex


def ssh_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key's ``SHA256:...`` fingerprint, as ``ssh-keygen -lf`` prints it.

    Coordinator and partner compare it over a second channel (a call) before the
    coordinator registers the key, so a swapped key in transit is caught.
    """
    blob = public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _public_line(key: ec.EllipticCurvePublicKey, name: str) -> bytes:
    """One ``authorized_keys``-style line, commented with the node's name."""
    public = key.public_bytes(serialization.Encoding.OpenSSH,
                              serialization.PublicFormat.OpenSSH)
    return public + f" fedpriv-node-{name}\n".encode()


def create_node_keys(directory: Path, name: str, *, force: bool = False) -> Issued:
    """Create a node's authentication pair (EC P-384, OpenSSH) and ledger pair (Ed25519).

    The first is what ``flower-supernode --auth-supernode-private-key`` loads
    (``load_ssh_private_key``, unencrypted) and what ``flwr supernode register`` reads
    (``load_ssh_public_key``, NIST curve). The files come in the order: authentication
    key, its public half, ledger key, its public half.
    """
    key_path, pub_path = node_key_paths(directory, name)
    ledger_path, ledger_pub_path = ledger_key_paths(directory, name)
    check_dir(directory)
    refuse_existing((key_path, pub_path, ledger_path, ledger_pub_path), force)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    ledger = generate_signing_key()
    write_file(key_path, private, PRIVATE_MODE, force)
    write_file(pub_path, _public_line(key.public_key(), name), PUBLIC_MODE, force)
    write_file(ledger_path, ledger.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), PRIVATE_MODE, force)
    write_file(ledger_pub_path, _ledger_pem(ledger.public_key()), PUBLIC_MODE, force)
    return Issued((key_path, pub_path, ledger_path, ledger_pub_path),
                  fingerprint=ssh_fingerprint(key.public_key()),
                  ledger_key=public_key_hex(ledger))


def admit_node_key(directory: Path, name: str, public_key_file: Path, ledger_key_file: Path,
                   *, force: bool = False) -> Issued:
    """Check a partner's two public keys and keep copies on the coordinator.

    ``node-NAME.pub`` is the input to ``flwr supernode register`` (Flower 1.42 has no key
    list file any more); ``ledger-keys/NAME.pub`` is the one key the server accepts that
    node's privacy records under, and what auditors pass to ``fedpriv audit --keys``.
    """
    _, pub_path = node_key_paths(directory, name)
    ledger_pub_path = admitted_ledger_key_path(directory, name)
    check_dir(directory)
    key = check_node_public_key(public_key_file)
    ledger = check_ledger_public_key(ledger_key_file)
    refuse_existing((pub_path, ledger_pub_path), force)
    write_file(pub_path, _public_line(key, name), PUBLIC_MODE, force)
    write_file(ledger_pub_path, _ledger_pem(ledger), PUBLIC_MODE, force)
    return Issued((pub_path, ledger_pub_path), fingerprint=ssh_fingerprint(key),
                  ledger_key=public_key_hex(ledger))


def check_ledger_public_key(path: Path) -> Ed25519PublicKey:
    """A partner's ledger public key (Ed25519 PEM), or a one-line CertError naming it."""
    try:
        return load_public_key(path)
    except LedgerError as exc:
        raise CertError(f"ledger key: {exc}") from None


def _ledger_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)

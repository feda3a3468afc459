"""SuperNode authentication keys: a partner makes its pair, the coordinator admits the
public half.

The pair is EC P-384 in OpenSSH format, what Flower 1.42 loads on both sides. Partner
and coordinator compare the ``ssh_fingerprint`` over a second channel before the
coordinator registers the key with ``flwr supernode register``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.files import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    Issued,
    check_dir,
    node_key_paths,
    refuse_existing,
    write_file,
)
from certs.verify import check_node_public_key


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


def create_node_auth_key(directory: Path, name: str, *, force: bool = False) -> Issued:
    """Create a SuperNode's authentication key pair: EC P-384 in OpenSSH format.

    That is what ``flower-supernode --auth-supernode-private-key`` loads
    (``load_ssh_private_key``, unencrypted) and what ``flwr supernode register`` reads
    (``load_ssh_public_key``, NIST curve).
    """
    key_path, pub_path = node_key_paths(directory, name)
    check_dir(directory)
    refuse_existing((key_path, pub_path), force)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    write_file(key_path, private, PRIVATE_MODE, force)
    write_file(pub_path, _public_line(key.public_key(), name), PUBLIC_MODE, force)
    return Issued((key_path, pub_path), fingerprint=ssh_fingerprint(key.public_key()))


def admit_node_key(directory: Path, name: str, public_key_file: Path, *,
                   force: bool = False) -> Issued:
    """Check a partner's public key and keep a copy as ``node-NAME.pub`` on the coordinator.

    Flower 1.42 has no key list file any more (``--auth-list-public-keys`` is refused);
    the copy is the coordinator's record of whom it admitted, and the input to
    ``flwr supernode register``.
    """
    _, pub_path = node_key_paths(directory, name)
    check_dir(directory)
    key = check_node_public_key(public_key_file)
    refuse_existing((pub_path,), force)
    write_file(pub_path, _public_line(key, name), PUBLIC_MODE, force)
    return Issued((pub_path,), fingerprint=ssh_fingerprint(key))

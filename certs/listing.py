"""What ``fedpriv certs list`` shows: the certificates and node key pairs in a folder.

Listing never fails on a bad file: a certificate that does not parse is skipped, and a
node key that does not load is listed with its problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from certs.files import DEFAULT_DIR, CertError, node_names
from certs.node_keys import ssh_fingerprint
from certs.verify import certificate_names, check_node_key, check_node_public_key, is_ca


@dataclass(frozen=True)
class CertInfo:
    """What ``list`` shows about one certificate."""

    path: Path
    subject: str
    issuer: str
    is_ca: bool
    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime

    def days_left(self, now: datetime) -> int:
        return (self.not_after - now).days

    def status(self, now: datetime) -> str:
        if now < self.not_before:
            return "NOT YET VALID"
        return "EXPIRED" if now > self.not_after else "ok"


@dataclass(frozen=True)
class NodeKeyInfo:
    """What ``list`` shows about one SuperNode key pair."""

    name: str
    public_key: Path | None
    private_key: Path | None
    fingerprint: str | None
    problem: str | None = None


def _cert_info(path: Path) -> CertInfo | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return CertInfo(path, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                    is_ca(cert), certificate_names(cert), cert.not_valid_before_utc,
                    cert.not_valid_after_utc)


def list_certificates(directory: Path = DEFAULT_DIR) -> list[CertInfo]:
    """The certificates (``*.pem``) in ``directory``; files that do not parse are skipped."""
    if not directory.is_dir():
        return []
    infos = (_cert_info(path) for path in sorted(directory.glob("*.pem")))
    return [info for info in infos if info is not None]


def _node_key_info(directory: Path, name: str) -> NodeKeyInfo:
    """One pair, either half possibly missing; a half that does not load is its problem."""
    key_path, pub_path = directory / f"node-{name}.key", directory / f"node-{name}.pub"
    fingerprint, problem = None, None
    try:
        if pub_path.exists():
            fingerprint = ssh_fingerprint(check_node_public_key(pub_path))
        if key_path.exists():
            key = check_node_key(key_path)
            own = ssh_fingerprint(key.public_key())
            if fingerprint is not None and own != fingerprint:
                problem = f"{pub_path.name} does not match {key_path.name}"
            fingerprint = fingerprint or own
    except CertError as err:
        problem = str(err)
    return NodeKeyInfo(name, pub_path if pub_path.exists() else None,
                       key_path if key_path.exists() else None, fingerprint, problem)


def list_node_keys(directory: Path = DEFAULT_DIR) -> list[NodeKeyInfo]:
    """The SuperNode key pairs (``node-NAME.key``/``.pub``) in ``directory``."""
    return [_node_key_info(directory, name) for name in node_names(directory)]

"""Certificates and keys for a deployment: the TLS CA, the SuperLink's server certificate,
and the SuperNodes' authentication keys, made with ``cryptography`` alone.

Two kinds of material, because Flower 1.42 uses two mechanisms:

* TLS (Fleet, Control and runtime APIs): a CA (``ca.pem``/``ca.key``) signs the
  coordinator's server certificate (``server.pem``/``server.key``). Partners get
  ``ca.pem`` and pass it to ``flower-supernode --root-certificates``. The SuperLink
  never asks clients for a certificate, so there is no mutual TLS and no client
  certificates.
* SuperNode authentication: each partner makes an EC P-384 key pair in OpenSSH format
  (``node-NAME.key``/``node-NAME.pub``); the SuperNode signs its requests with the
  private key and the coordinator registers the public key with
  ``flwr supernode register``.

Every file is written atomically (temporary file, fsync, rename) and never replaces an
existing one unless ``force`` is set; private keys are created with mode 0600.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import FedPrivError
from common.files import blocking_file, write_atomic

KeyType = Literal["ec", "rsa"]
KEY_TYPES: tuple[KeyType, ...] = ("ec", "rsa")

DEFAULT_DIR = Path("certs/generated")
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CA_DAYS = 3650
SERVER_DAYS = 825
MAX_DAYS = 36500  # a century: far beyond any sane validity, well inside X.509's year 9999
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
LOOPBACK_DNS = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)

# Certificates start an hour in the past so a partner whose clock runs a little behind
# the coordinator's does not reject a certificate made minutes ago as "not yet valid".
_BACKDATE = timedelta(hours=1)
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class CertError(FedPrivError):
    """A certificate or key file is missing, malformed, expired or does not fit."""


@dataclass(frozen=True)
class Issued:
    """The files one command wrote, and until when the certificate is valid (if any)."""

    files: tuple[Path, ...]
    not_after: datetime | None = None
    fingerprint: str | None = None


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


def node_key_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """The private and public key files of node ``name`` in ``directory``."""
    _check_node_name(name)
    return directory / f"node-{name}.key", directory / f"node-{name}.pub"


# --------------------------------------------------------------------------- writing


def _now() -> datetime:
    return datetime.now(UTC)


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise CertError(f"invalid --days {days}: must be between 1 and {MAX_DAYS}")


def _check_dir(directory: Path) -> None:
    """``--dir`` is a folder or can become one: checked before any key is made."""
    directory = Path(directory)
    if (blocker := blocking_file(directory)) is not None:
        raise CertError(f"invalid --dir {directory}: {blocker} is a file, not a folder")


def _check_node_name(name: str) -> None:
    if not _NODE_NAME.fullmatch(name):
        raise CertError(
            f"invalid node name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """Fail before writing anything if any target exists, so a refusal changes nothing."""
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise CertError(f"{path} already exists; pass --force to replace it")


# Write failures a user fixes by choosing another --dir (or fixing its permissions).
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS,
                errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG}


def _write_atomic(path: Path, data: bytes, mode: int, force: bool) -> None:
    """All or nothing, private from the first byte, never a silent overwrite."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, data, mode=mode, replace=force)
    except FileExistsError:
        if not path.parent.is_dir():
            raise CertError(f"cannot write {path}: {path.parent} is not a folder") from None
        raise CertError(f"{path} already exists; pass --force to replace it") from None
    except OSError as err:
        if err.errno not in _PATH_ERRNOS:
            raise  # the disk failing is not a mistake in the command line
        raise CertError(f"cannot write {path}: {err.strerror}") from None


def _new_key(key_type: KeyType) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise CertError(f"invalid --key-type {key_type!r}: choose one of {', '.join(KEY_TYPES)}")


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    # Unencrypted PKCS#8: the SuperLink cannot read a passphrase-protected key.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity(days: int, not_before: datetime | None) -> tuple[datetime, datetime]:
    if not_before is not None:
        return not_before, not_before + timedelta(days=days)
    now = _now()
    return now - _BACKDATE, now + timedelta(days=days)


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def create_ca(
    directory: Path = DEFAULT_DIR,
    *,
    days: int = CA_DAYS,
    key_type: KeyType = "ec",
    common_name: str = "fedpriv federation CA",
    force: bool = False,
    not_before: datetime | None = None,
) -> Issued:
    """Create a self-signed CA (``ca.pem``, ``ca.key``) that signs the server certificate.

    ``not_before`` defaults to an hour ago; tests set it to make expired certificates.
    """
    _check_days(days)
    _check_dir(directory)
    if not 1 <= len(common_name) <= 64:  # X.509 upper bound for a common name
        raise CertError(f"invalid --common-name {common_name!r}: must be 1-64 characters")
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    _refuse_existing((cert_path, key_path), force)
    key = _new_key(key_type)
    start, end = _validity(days, not_before)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpriv"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        # path_length=0: this CA signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    # Key first: a crash between the two leaves a key without a certificate, never a
    # certificate whose key is lost.
    _write_atomic(key_path, _pem_key(key), PRIVATE_MODE, force)
    _write_atomic(cert_path, _pem_cert(cert), PUBLIC_MODE, force)
    return Issued((cert_path, key_path), cert.not_valid_after_utc)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey
                                        | rsa.RSAPrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise CertError(f"CA file {path} not found; create the CA first with "
                            f"`fedpriv certs ca --dir {directory}`")
    cert = check_certificate(cert_path)
    if not _is_ca(cert):
        raise CertError(f"{cert_path} is not a CA certificate (basicConstraints CA is not set); "
                        f"create the CA with `fedpriv certs ca --dir {directory}`")
    key = check_private_key(key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"{key_path} is not an EC or RSA key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertError(f"CA key {key_path} is not the private key of {cert_path}")
    return cert, key


def _parse_ips(ip_addresses: Sequence[str]) -> list[ipaddress.IPv4Address |
                                                       ipaddress.IPv6Address]:
    parsed = []
    for text in ip_addresses:
        try:
            parsed.append(ipaddress.ip_address(text))
        except ValueError:
            raise CertError(f"invalid --ip {text!r}: not an IPv4 or IPv6 address") from None
    return parsed


def _check_dns(dns_names: Sequence[str]) -> None:
    label = r"(\*|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    pattern = re.compile(rf"{label}(\.[A-Za-z0-9]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?)*")
    for name in dns_names:
        if not pattern.fullmatch(name) or len(name) > 253:
            raise CertError(f"invalid --dns {name!r}: not a host name (use --ip for addresses)")


def issue_server_cert(
    directory: Path = DEFAULT_DIR,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    days: int = SERVER_DAYS,
    key_type: KeyType = "ec",
    include_loopback: bool = True,
    force: bool = False,
    not_before: datetime | None = None,
) -> Issued:
    """Issue the SuperLink's TLS certificate (``server.pem``, ``server.key``) from the CA.

    The names partners dial (``--superlink HOST:PORT``) must be among ``dns_names`` or
    ``ip_addresses``; their TLS client checks them against the subjectAltName.
    ``include_loopback`` adds localhost and 127.0.0.1: the SuperLink starts its own
    SuperExec, which dials it on 127.0.0.1 (also when it listens on 0.0.0.0) and checks
    the certificate like any client. The validity is cut to the CA's own end date.
    """
    _check_days(days)
    _check_dir(directory)
    if include_loopback:
        dns_names = [*dns_names, *(n for n in LOOPBACK_DNS if n not in dns_names)]
        ip_addresses = [*ip_addresses, *(a for a in LOOPBACK_IPS if a not in ip_addresses)]
    if not dns_names and not ip_addresses:
        raise CertError("the server certificate needs at least one --dns or --ip name")
    _check_dns(dns_names)
    ips = _parse_ips(ip_addresses)
    cert_path, key_path = directory / SERVER_CERT, directory / SERVER_KEY
    _refuse_existing((cert_path, key_path), force)
    ca_cert, ca_key = _load_ca(directory)
    key = _new_key(key_type)
    start, end = _validity(days, not_before)
    end = min(end, ca_cert.not_valid_after_utc)
    if end <= start:
        raise CertError(f"the CA {directory / CA_CERT} expires before the server certificate "
                        "would start; create a new CA")
    common_name = dns_names[0] if dns_names else str(ips[0])
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpriv"),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_atomic(key_path, _pem_key(key), PRIVATE_MODE, force)
    _write_atomic(cert_path, _pem_cert(cert), PUBLIC_MODE, force)
    return Issued((cert_path, key_path), cert.not_valid_after_utc)


def ssh_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key's ``SHA256:...`` fingerprint, as ``ssh-keygen -lf`` prints it.

    Coordinator and partner compare it over a second channel (a call) before the
    coordinator registers the key, so a swapped key in transit is caught.
    """
    blob = public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def create_node_auth_key(directory: Path, name: str, *, force: bool = False) -> Issued:
    """Create a SuperNode's authentication key pair: EC P-384 in OpenSSH format.

    That is what ``flower-supernode --auth-supernode-private-key`` loads
    (``load_ssh_private_key``, unencrypted) and what ``flwr supernode register`` reads
    (``load_ssh_public_key``, NIST curve).
    """
    key_path, pub_path = node_key_paths(directory, name)
    _check_dir(directory)
    _refuse_existing((key_path, pub_path), force)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    _write_atomic(key_path, private, PRIVATE_MODE, force)
    _write_atomic(pub_path, public + f" fedpriv-node-{name}\n".encode(), PUBLIC_MODE, force)
    return Issued((key_path, pub_path), fingerprint=ssh_fingerprint(key.public_key()))


def admit_node_key(directory: Path, name: str, public_key_file: Path, *,
                   force: bool = False) -> Issued:
    """Check a partner's public key and keep a copy as ``node-NAME.pub`` on the coordinator.

    Flower 1.42 has no key list file any more (``--auth-list-public-keys`` is refused);
    the copy is the coordinator's record of whom it admitted, and the input to
    ``flwr supernode register``.
    """
    _, pub_path = node_key_paths(directory, name)
    _check_dir(directory)
    key = check_node_public_key(public_key_file)
    _refuse_existing((pub_path,), force)
    public = key.public_bytes(serialization.Encoding.OpenSSH,
                              serialization.PublicFormat.OpenSSH)
    _write_atomic(pub_path, public + f" fedpriv-node-{name}\n".encode(), PUBLIC_MODE, force)
    return Issued((pub_path,), fingerprint=ssh_fingerprint(key))


# --------------------------------------------------------------------------- checking


def _read(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.exists():
        raise CertError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise CertError(f"{what} file {path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise CertError(f"cannot read {what} file {path}: {err.strerror}") from None


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses in the subjectAltName, in order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def _dns_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        # A wildcard covers exactly one leftmost label (RFC 6125), never the bare domain.
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def host_matches(cert: x509.Certificate, host: str) -> bool:
    """Whether TLS clients dialling ``host`` would accept ``cert`` (subjectAltName only)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False  # TLS clients ignore the CN; a certificate without SANs fits no host
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return any(_dns_matches(p, host) for p in san.get_values_for_type(x509.DNSName))
    return ip in san.get_values_for_type(x509.IPAddress)


def check_certificate(path: Path | str, *, expect_host: str | None = None,
                      now: datetime | None = None) -> x509.Certificate:
    """Load a PEM certificate and fail with a one-line message if it cannot be used now.

    Checks: the file exists and is readable, holds a PEM certificate, is inside its
    validity period, and (if ``expect_host`` is given) names that host or IP address in
    its subjectAltName.
    """
    path = Path(path)
    data = _read(path, "certificate")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{path} is not a PEM certificate") from None
    now = now or _now()
    if now < cert.not_valid_before_utc:
        raise CertError(f"certificate {path} is not valid before "
                        f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check the clock")
    if now > cert.not_valid_after_utc:
        raise CertError(f"certificate {path} expired on "
                        f"{cert.not_valid_after_utc:%Y-%m-%d}; issue a new one with --force")
    if expect_host is not None and not host_matches(cert, expect_host):
        names = ", ".join(certificate_names(cert)) or "no subjectAltName"
        raise CertError(f"certificate {path} is not valid for host {expect_host!r} "
                        f"(it names: {names}); reissue it with --dns/--ip {expect_host}")
    return cert


# How public material starts: OpenSSH public keys, PEM public keys and certificates.
_PUBLIC_STARTS = (b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-", b"-----BEGIN PUBLIC KEY",
                  b"-----BEGIN RSA PUBLIC KEY", b"-----BEGIN CERTIFICATE",
                  b"-----BEGIN SSH2 PUBLIC KEY")


def _read_private(path: Path, what: str, form: str, require_private_mode: bool) -> bytes:
    """Read a private key, refusing (as ssh does) one that others could read and copy.

    Public material is named as such first: asking to chmod a public key would mislead.
    """
    data = _read(path, what)
    if data.lstrip().startswith(_PUBLIC_STARTS):
        raise CertError(f"{path} is not {form}: it holds a public key or certificate; pass "
                        "the private key file (.key)")
    if require_private_mode and os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CertError(f"private key {path} is accessible by other users "
                            f"(mode {mode:04o}); run `chmod 600 {path}`")
    return data


def check_private_key(path: Path | str, *,
                      require_private_mode: bool = True) -> PrivateKeyTypes:
    """Load an unencrypted PEM private key (what gRPC reads) or fail with one line.

    With ``require_private_mode`` a key readable by group or others is refused, as ssh
    does: a key that others could copy no longer proves who holds it.
    """
    path = Path(path)
    data = _read_private(path, "private key", "a PEM private key", require_private_mode)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertError(f"private key {path} is passphrase-protected; "
                        "Flower needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{path} is not a PEM private key") from None


def check_key_pair(cert_path: Path | str, key_path: Path | str) -> None:
    """Fail unless the private key in ``key_path`` belongs to the certificate."""
    cert = check_certificate(cert_path)
    key = check_private_key(key_path)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertError(f"private key {key_path} does not belong to certificate {cert_path}")


def check_chain(cert_path: Path | str, ca_path: Path | str,
                now: datetime | None = None) -> None:
    """Fail unless ``cert_path`` is signed by the CA in ``ca_path`` and both are valid now."""
    cert = check_certificate(cert_path, now=now)
    ca = check_certificate(ca_path, now=now)
    if not _is_ca(ca):
        raise CertError(f"{ca_path} is not a CA certificate (basicConstraints CA is not set)")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"certificate {cert_path} is not signed by the CA in {ca_path}; "
                        "partners need the ca.pem that issued the server certificate") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def check_node_key(path: Path | str, *, require_private_mode: bool = True
                   ) -> ec.EllipticCurvePrivateKey:
    """Load a SuperNode authentication private key the way flower-supernode does, or fail."""
    path = Path(path)
    data = _read_private(path, "node private key", "an OpenSSH private key",
                         require_private_mode)
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except TypeError:
        raise CertError(f"node private key {path} is passphrase-protected; "
                        "flower-supernode needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{path} is not an OpenSSH private key "
                        "(make one with `fedpriv certs node NAME`)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve,
                                                                         _NIST_CURVES):
        raise CertError(f"node private key {path} is not a NIST EC key (use P-384)")
    return key


def check_node_public_key(path: Path | str) -> ec.EllipticCurvePublicKey:
    """Load a SuperNode public key the way ``flwr supernode register`` does, or fail."""
    path = Path(path)
    data = _read(path, "node public key")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{path} is not an OpenSSH public key "
                        "(send the node-NAME.pub file, not the .key)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                        _NIST_CURVES):
        raise CertError(f"node public key {path} is not a NIST EC key (use P-384)")
    return key


# --------------------------------------------------------------------------- listing


def _cert_info(path: Path) -> CertInfo | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return CertInfo(path, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                    _is_ca(cert), certificate_names(cert), cert.not_valid_before_utc,
                    cert.not_valid_after_utc)


def list_certificates(directory: Path = DEFAULT_DIR) -> list[CertInfo]:
    """The certificates (``*.pem``) in ``directory``; files that do not parse are skipped."""
    if not directory.is_dir():
        return []
    infos = (_cert_info(path) for path in sorted(directory.glob("*.pem")))
    return [info for info in infos if info is not None]


def list_node_keys(directory: Path = DEFAULT_DIR) -> list[NodeKeyInfo]:
    """The SuperNode key pairs (``node-NAME.key``/``.pub``) in ``directory``."""
    if not directory.is_dir():
        return []
    names = sorted({p.stem[len("node-"):] for p in directory.glob("node-*.key")}
                   | {p.stem[len("node-"):] for p in directory.glob("node-*.pub")})
    infos = []
    for name in names:
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
        infos.append(NodeKeyInfo(name, pub_path if pub_path.exists() else None,
                                 key_path if key_path.exists() else None, fingerprint, problem))
    return infos

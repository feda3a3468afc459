"""The TLS material: a private CA and the SuperLink's server certificate it signs.

Made with ``cryptography`` alone. Partners trust the CA (``ca.pem``); the SuperLink
presents ``server.pem``/``server.key``. See ``certs.files`` for how files are written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.files import (
    CA_CERT,
    CA_KEY,
    DEFAULT_DIR,
    PRIVATE_MODE,
    PUBLIC_MODE,
    SERVER_CERT,
    SERVER_KEY,
    CertError,
    Issued,
    ca_private_dir,
    check_dir,
    refuse_existing,
    write_file,
)
from certs.verify import check_certificate, check_private_key, is_ca, same_public_key

KeyType = Literal["ec", "rsa"]
KEY_TYPES: tuple[KeyType, ...] = ("ec", "rsa")
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CA_DAYS = 3650
SERVER_DAYS = 825
MAX_DAYS = 36500  # a century: far beyond any sane validity, well inside X.509's year 9999
LOOPBACK_DNS = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)

# Certificates start an hour in the past so a partner whose clock runs a little behind
# the coordinator's does not reject a certificate made minutes ago as "not yet valid".
_BACKDATE = timedelta(hours=1)


# --------------------------------------------------------------------------- shared steps


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise CertError(f"invalid --days {days}: must be between 1 and {MAX_DAYS}")


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise CertError(f"invalid --key-type {key_type!r}: choose one of {', '.join(KEY_TYPES)}")


def _validity(days: int, not_before: datetime | None) -> tuple[datetime, datetime]:
    if not_before is not None:
        return not_before, not_before + timedelta(days=days)
    now = datetime.now(UTC)
    return now - _BACKDATE, now + timedelta(days=days)


def _subject(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpriv"),
    ])


def _key_usage(*, key_cert_sign: bool, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign, encipher_only=False, decipher_only=False,
    )


def _write_pair(cert_path: Path, cert: x509.Certificate, key_path: Path, key: PrivateKey,
                force: bool) -> Issued:
    """Write the key, then its certificate.

    Key first: a crash between the two leaves a key without a certificate, never a
    certificate whose key is lost.
    """
    # Unencrypted PKCS#8: the SuperLink cannot read a passphrase-protected key.
    pem_key = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_file(key_path, pem_key, PRIVATE_MODE, force)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE, force)
    return Issued((cert_path, key_path), cert.not_valid_after_utc)


# --------------------------------------------------------------------------- the CA


def _build_ca_cert(key: PrivateKey, common_name: str, start: datetime,
                   end: datetime) -> x509.Certificate:
    name = _subject(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        # path_length=0: this CA signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, key_encipherment=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def create_ca(
    directory: Path = DEFAULT_DIR,
    *,
    days: int = CA_DAYS,
    key_type: KeyType = "ec",
    common_name: str = "fedpriv federation CA",
    force: bool = False,
    not_before: datetime | None = None,
    key_dir: Path | None = None,
) -> Issued:
    """Create a self-signed CA that signs the server certificate.

    ``ca.pem`` goes to ``directory`` (it is public); ``ca.key`` to a folder of its own
    (``certs.files.ca_private_dir``), never where the running coordinator reads its files.
    ``not_before`` defaults to an hour ago; tests set it to make expired certificates.
    """
    _check_days(days)
    check_dir(directory)
    if not 1 <= len(common_name) <= 64:  # X.509 upper bound for a common name
        raise CertError(f"invalid --common-name {common_name!r}: must be 1-64 characters")
    private_dir = ca_private_dir(directory, key_dir)
    check_dir(private_dir)
    cert_path, key_path = directory / CA_CERT, private_dir / CA_KEY
    refuse_existing((cert_path, key_path), force)
    key = _new_key(key_type)
    start, end = _validity(days, not_before)
    cert = _build_ca_cert(key, common_name, start, end)
    return _write_pair(cert_path, cert, key_path, key, force)


def _load_ca(directory: Path, key_dir: Path | None) -> tuple[x509.Certificate, PrivateKey]:
    cert_path, key_path = directory / CA_CERT, ca_private_dir(directory, key_dir) / CA_KEY
    for path in (cert_path, key_path):
        if not path.is_file():
            raise CertError(f"CA file {path} not found; create the CA first with "
                            f"`fedpriv certs ca --dir {directory}` (or pass --ca-key-dir)")
    cert = check_certificate(cert_path)
    if not is_ca(cert):
        raise CertError(f"{cert_path} is not a CA certificate (basicConstraints CA is not set); "
                        f"create the CA with `fedpriv certs ca --dir {directory}`")
    key = check_private_key(key_path)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"{key_path} is not an EC or RSA key")
    if not same_public_key(key.public_key(), cert.public_key()):
        raise CertError(f"CA key {key_path} is not the private key of {cert_path}")
    return cert, key


# --------------------------------------------------------------------------- the server


def _check_dns(dns_names: Sequence[str]) -> None:
    label = r"(\*|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    pattern = re.compile(rf"{label}(\.[A-Za-z0-9]([A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?)*")
    for name in dns_names:
        if not pattern.fullmatch(name) or len(name) > 253:
            raise CertError(f"invalid --dns {name!r}: not a host name (use --ip for addresses)")


def _parse_ips(ip_addresses: Sequence[str]) -> list[IpAddress]:
    parsed = []
    for text in ip_addresses:
        try:
            parsed.append(ipaddress.ip_address(text))
        except ValueError:
            raise CertError(f"invalid --ip {text!r}: not an IPv4 or IPv6 address") from None
    return parsed


def _server_names(dns_names: Sequence[str], ip_addresses: Sequence[str],
                  include_loopback: bool) -> tuple[list[str], list[IpAddress]]:
    """The checked subjectAltNames: the names given, plus loopback if asked for."""
    dns, ips = list(dns_names), list(ip_addresses)
    if include_loopback:
        dns += [n for n in LOOPBACK_DNS if n not in dns_names]
        ips += [a for a in LOOPBACK_IPS if a not in ip_addresses]
    if not dns and not ips:
        raise CertError("the server certificate needs at least one --dns or --ip name")
    _check_dns(dns)
    return dns, _parse_ips(ips)


def _server_validity(directory: Path, ca_cert: x509.Certificate, days: int,
                     not_before: datetime | None) -> tuple[datetime, datetime]:
    """The requested validity, cut to the CA's own end date."""
    start, end = _validity(days, not_before)
    end = min(end, ca_cert.not_valid_after_utc)
    if end <= start:
        raise CertError(f"the CA {directory / CA_CERT} expires before the server certificate "
                        "would start; create a new CA")
    return start, end


def _build_server_cert(key: PrivateKey, *, ca_cert: x509.Certificate, ca_key: PrivateKey,
                       dns_names: list[str], ips: list[IpAddress], start: datetime,
                       end: datetime) -> x509.Certificate:
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    # RSA key exchange encrypts with the server's key; ECDHE with an EC key only signs.
    usage = _key_usage(key_cert_sign=False, key_encipherment=isinstance(key, rsa.RSAPrivateKey))
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(dns_names[0] if dns_names else str(ips[0])))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
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
    ca_key_dir: Path | None = None,
) -> Issued:
    """Issue the SuperLink's TLS certificate (``server.pem``, ``server.key``) from the CA.

    The names partners dial (``--superlink HOST:PORT``) must be among ``dns_names`` or
    ``ip_addresses``; their TLS client checks them against the subjectAltName.
    ``include_loopback`` adds localhost and 127.0.0.1: the SuperLink starts its own
    SuperExec, which dials it on 127.0.0.1 (also when it listens on 0.0.0.0) and checks
    the certificate like any client. The validity is cut to the CA's own end date.
    """
    _check_days(days)
    check_dir(directory)
    dns, ips = _server_names(dns_names, ip_addresses, include_loopback)
    cert_path, key_path = directory / SERVER_CERT, directory / SERVER_KEY
    refuse_existing((cert_path, key_path), force)
    ca_cert, ca_key = _load_ca(directory, ca_key_dir)
    key = _new_key(key_type)
    start, end = _server_validity(directory, ca_cert, days, not_before)
    cert = _build_server_cert(key, ca_cert=ca_cert, ca_key=ca_key, dns_names=dns, ips=ips,
                              start=start, end=end)
    return _write_pair(cert_path, cert, key_path, key, force)

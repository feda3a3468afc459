"""Checks that certificates and keys are usable before Flower is started with them.

``fedpriv server`` and ``fedpriv client`` run these first, so a wrong, expired or
world-readable file is named in one line instead of surfacing as a TLS failure inside
Flower. The node key checks load keys exactly the way Flower does.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from certs.files import CertError, read_file

NistKey = TypeVar("NistKey", ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)
_NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

# How public material starts: OpenSSH public keys, PEM public keys and certificates.
_PUBLIC_STARTS = (b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-", b"-----BEGIN PUBLIC KEY",
                  b"-----BEGIN RSA PUBLIC KEY", b"-----BEGIN CERTIFICATE",
                  b"-----BEGIN SSH2 PUBLIC KEY")


# --------------------------------------------------------------------------- certificates


def is_ca(cert: x509.Certificate) -> bool:
    """Whether the certificate's basicConstraints allow it to sign others."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    """Whether two public keys are the same key (compared as SubjectPublicKeyInfo)."""
    def spki(key: PublicKeyTypes) -> bytes:
        return key.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return spki(a) == spki(b)


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
    data = read_file(path, "certificate")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{path} is not a PEM certificate") from None
    now = now or datetime.now(UTC)
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


def check_chain(cert_path: Path | str, ca_path: Path | str,
                now: datetime | None = None) -> None:
    """Fail unless ``cert_path`` is signed by the CA in ``ca_path`` and both are valid now."""
    cert = check_certificate(cert_path, now=now)
    ca = check_certificate(ca_path, now=now)
    if not is_ca(ca):
        raise CertError(f"{ca_path} is not a CA certificate (basicConstraints CA is not set)")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"certificate {cert_path} is not signed by the CA in {ca_path}; "
                        "partners need the ca.pem that issued the server certificate") from None


# --------------------------------------------------------------------------- private keys


def _read_private(path: Path, what: str, form: str, require_private_mode: bool) -> bytes:
    """Read a private key, refusing (as ssh does) one that others could read and copy.

    Public material is named as such first: asking to chmod a public key would mislead.
    """
    data = read_file(path, what)
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
    if not same_public_key(key.public_key(), cert.public_key()):
        raise CertError(f"private key {key_path} does not belong to certificate {cert_path}")


# --------------------------------------------------------------------------- node keys


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
    return _nist_ec(key, ec.EllipticCurvePrivateKey, f"node private key {path}")


def check_node_public_key(path: Path | str) -> ec.EllipticCurvePublicKey:
    """Load a SuperNode public key the way ``flwr supernode register`` does, or fail."""
    path = Path(path)
    data = read_file(path, "node public key")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{path} is not an OpenSSH public key "
                        "(send the node-NAME.pub file, not the .key)") from None
    return _nist_ec(key, ec.EllipticCurvePublicKey, f"node public key {path}")


def _nist_ec(key: object, kind: type[NistKey], what: str) -> NistKey:
    """`key` if it is a `kind` on a NIST curve (what Flower's node authentication takes)."""
    if not isinstance(key, kind) or not isinstance(key.curve, _NIST_CURVES):
        raise CertError(f"{what} is not a NIST EC key (use P-384)")
    return key

"""Throw-away TLS material and SuperNode keys for a local Flower deployment.

A deployment on 127.0.0.1 (``fedamole deploy-local``, the loopback test) runs with TLS and
SuperNode authentication, as a real one does, so it needs:

- a certificate authority and a SuperLink certificate signed by it, whose subject alternative
  names list the addresses the nodes dial (:func:`make_tls`);
- one ECDSA P-384 key pair per SuperNode, in the OpenSSH format Flower expects
  (:func:`make_node_key`).

Both are made on the spot with ``cryptography`` (imported lazily: it comes with the ``flower``
extra) and written as files, because Flower's processes take paths. They are public so tests can
build other topologies, e.g. a node whose key was never registered.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles", "make_node_key", "make_tls"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA and the SuperLink certificate it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(folder: Path, *, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A self-signed CA and a server certificate for ``hosts`` (IPs and DNS names as SANs).

    Args:
        folder: where to write ``ca.crt``, ``server.pem`` and ``server.key`` (created if needed).
        hosts: the addresses the certificate is valid for; the first is its common name.

    Returns:
        The paths of the written files; the server key is readable by its owner only.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedamole local CA"))
        .issuer_name(name("fedamole local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    files = TlsFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair for SuperNode authentication.

    Args:
        folder: where to write the pair (created if needed).
        name: file name of the private key; the public key gets ``.pub`` appended.

    Returns:
        ``(private, public)`` paths, OpenSSH format; the private key is readable by its owner only.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public

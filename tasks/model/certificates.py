"""The etcd peers' certificates, made and checked: the cluster's own CA, and one certificate per
member issued by it (``cryptography``; no key ever reaches argv or a log). Pure: bytes in, bytes
out; where they are kept and delivered is ``tasks.runbooks.etcd_peers``.
"""
from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Validity. The CA's key stays on the operator's machine and a new CA means every member restarted
# at once with new trust: ten years. A member's key lies on its machine, where a compromise is
# likelier, and no revocation list is configured (--peer-crl-file): a stolen member key is good
# until it expires. A year bounds that, and `fab etcd.certificates --renew` replaces them all
# without downtime; a member's never outlives the CA.
CA_DAYS, MEMBER_DAYS = 3650, 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(cluster_name: str, now: datetime.datetime) -> tuple:
    """(certificate PEM, key PEM) of a new CA for ``cluster_name``'s etcd peers."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"air {cluster_name} etcd peer CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_member(address: str, ca_cert_pem: bytes, ca_key_pem: bytes, now: datetime.datetime) -> tuple:
    """(certificate PEM, key PEM) for the member at ``address``, issued by the CA: the address is
    its subject alternative name, and it serves both ways (peers are servers and clients). Its subject
    is empty: etcd's grpc-proxy refuses a client certificate with a common name (etcd would take that
    name for an etcd user), and a worker's proxy shows this certificate to the members; the
    alternative name is then critical, as RFC 5280 asks."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(min(now + datetime.timedelta(days=MEMBER_DAYS), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """Whether certificate ``cert_pem`` was issued (signed) by the CA of ``ca_cert_pem``."""
    try:
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert_pem))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def validity(cert_pem: bytes) -> tuple:
    """(serial number in hex, not valid after) of a certificate: what a renewal changes."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return format(cert.serial_number, "x"), cert.not_valid_after_utc

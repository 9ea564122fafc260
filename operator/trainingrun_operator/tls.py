"""A private certificate authority per run, so only the run's own pods speak to its Dask cluster.

Dask schedulers accept any client that can reach them, and a client may run code on the
scheduler and every worker, which hold the run's credentials. With mutual TLS (distributed's
``tls://`` and ``require-encryption``) the scheduler and workers accept only peers that show
a certificate signed by the run's CA, and the CA's key is thrown away once the certificate
is signed: nothing can issue another. The CA certificate and the one key pair the run's
scheduler, workers and driver share go in a Secret owned by the run, mounted by its pods.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Where the run's pods mount the Secret, and its keys (the kubernetes.io/tls names).
MOUNT_PATH = "/etc/pulse/dask-tls"
CA_KEY = "ca.crt"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"
# Long enough for any run; the CA cannot sign again, so a long life adds no exposure.
VALIDITY = datetime.timedelta(days=3650)


def _name(common_name: str) -> x509.Name:
    """A subject or issuer naming the run."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(run_name: str, hosts: list[str], now: datetime.datetime) -> dict[str, bytes]:
    """A fresh CA for `run_name` and one certificate it signed for `hosts`, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_name = _name(f"pulse run {run_name} CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"pulse run {run_name}")).issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    return {
        CA_KEY: ca.public_bytes(pem),
        CERT_KEY: cert.public_bytes(pem),
        KEY_KEY: key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }


def secret_data(files: dict[str, bytes]) -> dict[str, str]:
    """The files as a Secret's base64 `data`."""
    return {name: base64.b64encode(content).decode() for name, content in files.items()}


def dask_env(mount_path: str = MOUNT_PATH) -> list[dict[str, Any]]:
    """distributed's settings that make every connection of a pod mutual TLS with these files:
    the scheduler, worker and client roles all present the run's certificate and require
    the peer's to be signed by the run's CA."""
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{mount_path}/{CA_KEY}",
    }
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = f"{mount_path}/{CERT_KEY}"
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = f"{mount_path}/{KEY_KEY}"
    return [{"name": name, "value": value} for name, value in env.items()]

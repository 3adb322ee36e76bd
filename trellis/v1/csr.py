"""Certificate signing requests as both sides build them (the agent for itself, the controller for
its own TLS and admin keys), and the subject DN every Trellis leaf carries."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from trellis.v1.identity import Identity


def subject_of(identity: Identity) -> x509.Name:
    """O=<trust domain>, OU=<kind>, CN=<name>: what IKE peers match as ID_DER_ASN1_DN."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.trust_domain),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.kind.value),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ]
    )


def make_csr(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, identity: Identity | None
) -> x509.CertificateSigningRequest:
    """A CSR over ``key``; it asks for ``identity`` (URI SAN) when given, as renewals must."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject_of(identity) if identity else x509.Name([])
    )
    if identity is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)

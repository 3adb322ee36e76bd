"""IKE_AUTH authentication for both roles: our ID, CERT, CERTREQ and AUTH payloads, and the
checks a peer must pass (RFC 7296 sections 2.15 and 3.5-3.8, RFC 7427, RFC 8420).

A peer is accepted only if its chain verifies to the configured CA bundle at ``now``, its ID
payload is named by its certificate, it is the identity we expect, it is not revoked, and its
AUTH payload verifies; otherwise ``AuthenticationFailed`` says which check failed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from trellis.agent.ike.config import CertificateAuth, PeerConfig, PskAuth
from trellis.agent.ike.constants import AuthMethod, CertEncoding, IdType
from trellis.agent.ike.crypto.auth import (
    choose_signature_hash,
    shared_key_auth,
    sign,
    sign_rfc4754,
    signed_octets,
    verify,
    verify_shared_key_auth,
)
from trellis.agent.ike.crypto.certs import REASON_UNEXPECTED_IDENTITY, ca_key_hash, verify_peer_certificate
from trellis.agent.ike.errors import AuthenticationFailed, IkeLocalError
from trellis.agent.ike.ids import IkeId, describe_id, parse_ike_id, same_id
from trellis.agent.ike.payloads import Authentication, Certificate, CertificateRequest, Identification
from trellis.agent.ike.sa import IkeSa, PeerAuth, SaHost

REASON_WRONG_METHOD = "wrong authentication method"
REASON_NO_PEER = "no matching peer configuration"
REASON_CANNOT_SIGN = "cannot sign for this peer"
REASON_SUITE = "IKE suite not allowed for this peer"


def check_suite_allowed(sa: IkeSa, peer: PeerConfig) -> None:
    """A responder chose the IKE suite before it knew who the peer was (from every configuration
    that matched the address): the configuration finally selected must allow it too."""
    suite, _ = sa.require_keys()
    for proposal in peer.ike_proposals:
        if (
            (suite.encr, suite.key_bits) in proposal.encryption
            and suite.prf in proposal.prf
            and suite.dh in proposal.dh
        ):
            return
    raise AuthenticationFailed(f"{REASON_SUITE}: {suite}")


def local_id(host: SaHost, peer: PeerConfig) -> IkeId:
    """Our ID: as configured, else our certificate's subject (ID_DER_ASN1_DN, which strongSwan
    matches against the certificate)."""
    if peer.local_id is not None:
        return peer.local_id
    if isinstance(peer.auth, CertificateAuth):
        leaf = host.credentials(peer.auth.credential).chain[0]
        return IkeId(id_type=IdType.ID_DER_ASN1_DN, data=leaf.subject.public_bytes())
    raise IkeLocalError(f"peer {peer.name!r}: no local id")


def cert_payloads(host: SaHost, peer: PeerConfig) -> tuple[Certificate, ...]:
    """Our certificate path, leaf first (RFC 7296 section 3.6)."""
    if not isinstance(peer.auth, CertificateAuth):
        return ()
    chain = host.credentials(peer.auth.credential).chain
    return tuple(
        Certificate(encoding=CertEncoding.X509_SIGNATURE, data=c.public_bytes(serialization.Encoding.DER))
        for c in chain
    )


def certreq_payloads(peers: Sequence[PeerConfig]) -> tuple[CertificateRequest, ...]:
    """One CERTREQ naming every CA the given peers trust: strongSwan only sends its certificate
    when asked (send_cert = ifasked)."""
    hashes: list[bytes] = []
    for peer in peers:
        if isinstance(peer.auth, CertificateAuth):
            for anchor in peer.auth.trust_anchors:
                digest = ca_key_hash(anchor)
                if digest not in hashes:
                    hashes.append(digest)
    if not hashes:
        return ()
    return (CertificateRequest(encoding=CertEncoding.X509_SIGNATURE, authorities=tuple(hashes)),)


def check_can_sign(host: SaHost, peer: PeerConfig, peer_hash_algorithms: Collection[int]) -> None:
    """Whether we can authenticate to a peer with what it announced in IKE_SA_INIT."""
    if not isinstance(peer.auth, CertificateAuth):
        return
    key = host.credentials(peer.auth.credential).key
    if peer_hash_algorithms:
        choose_signature_hash(key, peer_hash_algorithms)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raise AuthenticationFailed(
            f"{REASON_CANNOT_SIGN}: Ed25519 needs SIGNATURE_HASH_ALGORITHMS (RFC 8420)"
        )


def our_octets(sa: IkeSa, my_id: IkeId) -> bytes:
    """What we sign: our IKE_SA_INIT message, the peer's nonce, prf(SK_p, our ID)."""
    suite, keys = sa.require_keys()
    return signed_octets(
        real_message=sa.init_request if sa.initiator else sa.init_response,
        peer_nonce=sa.nr if sa.initiator else sa.ni,
        prf_id=suite.prf,
        sk_p=keys.sk_pi if sa.initiator else keys.sk_pr,
        id_type=my_id.id_type,
        id_data=my_id.data,
    )


def peer_octets(sa: IkeSa, peer_id: Identification) -> bytes:
    """What the peer signed: its IKE_SA_INIT message, our nonce, prf(SK_p of the peer, its ID)."""
    suite, keys = sa.require_keys()
    return signed_octets(
        real_message=sa.init_response if sa.initiator else sa.init_request,
        peer_nonce=sa.ni if sa.initiator else sa.nr,
        prf_id=suite.prf,
        sk_p=keys.sk_pr if sa.initiator else keys.sk_pi,
        id_type=int(peer_id.id_type),
        id_data=peer_id.data,
    )


def auth_payload(sa: IkeSa, peer: PeerConfig, octets: bytes) -> Authentication:
    suite, _ = sa.require_keys()
    if isinstance(peer.auth, PskAuth):
        return Authentication(
            method=AuthMethod.SHARED_KEY_MIC, data=shared_key_auth(suite.prf, peer.auth.secret, octets)
        )
    key = sa.host.credentials(peer.auth.credential).key
    if sa.peer_hash_algorithms:
        digest = choose_signature_hash(key, sa.peer_hash_algorithms)
        return Authentication(method=AuthMethod.DIGITAL_SIGNATURE, data=sign(key, octets, digest))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        method, data = sign_rfc4754(key, octets)
        return Authentication(method=method, data=data)
    raise AuthenticationFailed(f"{REASON_CANNOT_SIGN}: Ed25519 needs SIGNATURE_HASH_ALGORITHMS (RFC 8420)")


def _admits(peer: PeerConfig, id_payload: Identification) -> bool:
    """Whether a peer configuration could be the sender of this ID (the full check follows)."""
    expected = peer.remote_id
    if expected is None:
        return True
    if isinstance(peer.auth, PskAuth):
        return same_id(parse_ike_id(expected), int(id_payload.id_type), id_payload.data)
    if "=" in expected and id_payload.id_type == IdType.ID_DER_ASN1_DN:
        return same_id(parse_ike_id(expected), int(id_payload.id_type), id_payload.data)
    return True  # spiffe:// or a DNS name: the certificate decides


def select_peer(candidates: Sequence[PeerConfig], id_payload: Identification, method: int) -> PeerConfig:
    """The configuration a responder authenticates the initiator against."""
    psk = method == AuthMethod.SHARED_KEY_MIC
    for peer in candidates:
        if isinstance(peer.auth, PskAuth) == psk and _admits(peer, id_payload):
            return peer
    shown = describe_id(int(id_payload.id_type), id_payload.data)
    raise AuthenticationFailed(f"{REASON_NO_PEER}: {shown} with AUTH method {method}")


def verify_peer(
    sa: IkeSa,
    peer: PeerConfig,
    *,
    id_payload: Identification,
    certificates: Sequence[Certificate],
    auth: Authentication,
    now: float,
) -> PeerAuth:
    suite, _ = sa.require_keys()
    shown = describe_id(int(id_payload.id_type), id_payload.data)
    octets = peer_octets(sa, id_payload)
    if isinstance(peer.auth, PskAuth):
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            raise AuthenticationFailed(f"{REASON_WRONG_METHOD}: {auth.method}, we use a pre-shared key")
        if peer.remote_id is not None and not same_id(
            parse_ike_id(peer.remote_id), int(id_payload.id_type), id_payload.data
        ):
            raise AuthenticationFailed(f"{REASON_UNEXPECTED_IDENTITY}: wanted {peer.remote_id}, got {shown}")
        verify_shared_key_auth(suite.prf, peer.auth.secret, octets, auth.data)
        return PeerAuth(remote_id=shown, identity=None, serial=None, not_after=None)
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        raise AuthenticationFailed(f"{REASON_WRONG_METHOD}: pre-shared key, we require a certificate")
    chain = [c.data for c in certificates if c.encoding == CertEncoding.X509_SIGNATURE]
    verified = verify_peer_certificate(
        chain,
        peer.auth.trust_anchors,
        now=now,
        id_type=int(id_payload.id_type),
        id_data=id_payload.data,
        expected=peer.remote_id,
        is_revoked=sa.host.is_revoked,
    )
    verify(int(auth.method), auth.data, verified.public_key, octets)
    return PeerAuth(
        remote_id=shown,
        identity=verified.identity,
        serial=verified.serial,
        not_after=verified.not_after.timestamp(),
    )


def credential_expiry(host: SaHost, peer: PeerConfig) -> float | None:
    if isinstance(peer.auth, CertificateAuth):
        return host.credentials(peer.auth.credential).not_after
    return None

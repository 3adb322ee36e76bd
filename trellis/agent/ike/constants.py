"""IANA numbers of IKEv2 (RFC 7296 and the registries it points to).

Only values we send, accept or must recognise are named; decoding keeps unknown numbers as
plain ints where the protocol allows them (e.g. unknown transforms are skipped, unknown
non-critical payloads ignored).
"""

from __future__ import annotations

import enum

IKE_MAJOR_VERSION = 2
IKE_MINOR_VERSION = 0
IKE_HEADER_LENGTH = 28
GENERIC_PAYLOAD_HEADER_LENGTH = 4
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 section 2.2: IKE on port 4500
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
IKE_PORT = 500
NAT_T_PORT = 4500


class ExchangeType(enum.IntEnum):
    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class HeaderFlag(enum.IntFlag):
    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class PayloadType(enum.IntEnum):
    NONE = 0
    SA = 33
    KE = 34
    IDi = 35
    IDr = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSi = 44
    TSr = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53  # RFC 7383


class ProtocolId(enum.IntEnum):
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(enum.IntEnum):
    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4  # "Key Exchange Method" since RFC 9370
    ESN = 5


class EncrId(enum.IntEnum):
    AES_CBC = 12
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = 20
    NULL_AUTH_AES_GMAC = 21  # RFC 4543, ESP only
    CHACHA20_POLY1305 = 28  # RFC 7634


class PrfId(enum.IntEnum):
    HMAC_SHA1 = 2
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class IntegId(enum.IntEnum):
    NONE = 0
    HMAC_SHA1_96 = 2
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhId(enum.IntEnum):
    NONE = 0
    MODP_2048 = 14
    ECP_256 = 19  # RFC 5903
    ECP_384 = 20
    ECP_521 = 21
    CURVE25519 = 31  # RFC 8031
    CURVE448 = 32


class EsnId(enum.IntEnum):
    NO_ESN = 0
    ESN = 1


class TransformAttributeType(enum.IntEnum):
    KEY_LENGTH = 14  # TV format (AF bit set)


class IdType(enum.IntEnum):
    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11


class CertEncoding(enum.IntEnum):
    X509_SIGNATURE = 4  # CERT: DER certificate; CERTREQ: SHA-1 hashes of CA SPKIs
    HASH_AND_URL_X509_CERT = 12  # CERTREQ authorities are SHA-1 hashes here too (RFC 7296 3.7)
    HASH_AND_URL_X509_BUNDLE = 13


class AuthMethod(enum.IntEnum):
    RSA_DIGITAL_SIGNATURE = 1
    SHARED_KEY_MIC = 2
    DSS_DIGITAL_SIGNATURE = 3
    ECDSA_SHA256_P256 = 9
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    DIGITAL_SIGNATURE = 14  # RFC 7427


class HashAlgorithm(enum.IntEnum):
    """RFC 7427 section 4 SIGNATURE_HASH_ALGORITHMS values."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5  # RFC 8420, for Ed25519/Ed448


class TsType(enum.IntEnum):
    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


class NotifyType(enum.IntEnum):
    # Error types (< 16384)
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # Status types (>= 16384)
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396
    MULTIPLE_AUTH_SUPPORTED = 16404
    REDIRECT_SUPPORTED = 16406
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427

    @property
    def is_error(self) -> bool:
        return self.value < 16384

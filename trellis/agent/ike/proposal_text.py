"""Proposals written the strongSwan way: ``aes256gcm16-prfsha256-x25519-ecp256`` for IKE,
``aes256gcm16-x25519-noesn`` for ESP (the DH group there is the PFS group for rekeys)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from trellis.agent.ike.config import EspProposal, IkeProposal
from trellis.agent.ike.constants import DhId, EncrId, PrfId
from trellis.agent.ike.errors import IkeLocalError

_ENCRYPTION: Mapping[str, tuple[EncrId, int]] = MappingProxyType(
    {
        "aes128gcm16": (EncrId.AES_GCM_16, 128),
        "aes128gcm": (EncrId.AES_GCM_16, 128),
        "aes256gcm16": (EncrId.AES_GCM_16, 256),
        "aes256gcm": (EncrId.AES_GCM_16, 256),
        "chacha20poly1305": (EncrId.CHACHA20_POLY1305, 256),
    }
)
_ESP_ONLY: Mapping[str, tuple[EncrId, int]] = MappingProxyType(
    {"aes128gmac": (EncrId.NULL_AUTH_AES_GMAC, 128), "aes256gmac": (EncrId.NULL_AUTH_AES_GMAC, 256)}
)
_PRF: Mapping[str, PrfId] = MappingProxyType(
    {"prfsha256": PrfId.HMAC_SHA2_256, "prfsha384": PrfId.HMAC_SHA2_384, "prfsha512": PrfId.HMAC_SHA2_512}
)
_DH: Mapping[str, DhId] = MappingProxyType(
    {"x25519": DhId.CURVE25519, "curve25519": DhId.CURVE25519, "ecp256": DhId.ECP_256, "ecp384": DhId.ECP_384}
)
_ESN: Mapping[str, bool] = MappingProxyType({"esn": True, "noesn": False})


def _tokens(text: str) -> list[str]:
    tokens = [t.strip().lower() for t in text.split("-")]
    if not text.strip() or any(not t for t in tokens):
        raise IkeLocalError(f"{text!r} is not a proposal: algorithms joined by '-'")
    return tokens


def parse_ike_proposal(text: str) -> IkeProposal:
    encryption: list[tuple[EncrId, int]] = []
    prfs: list[PrfId] = []
    groups: list[DhId] = []
    for token in _tokens(text):
        if token in _ENCRYPTION:
            encryption.append(_ENCRYPTION[token])
        elif token in _PRF:
            prfs.append(_PRF[token])
        elif token in _DH:
            groups.append(_DH[token])
        else:
            raise IkeLocalError(f"unknown or unsupported IKE algorithm {token!r} in {text!r}")
    if not encryption or not prfs or not groups:
        raise IkeLocalError(
            f"IKE proposal {text!r} needs an AEAD, a PRF and a DH group (e.g. aes256gcm16-prfsha256-x25519)"
        )
    return IkeProposal(encryption=tuple(encryption), prf=tuple(prfs), dh=tuple(groups))


def parse_esp_proposal(text: str) -> EspProposal:
    encryption: list[tuple[EncrId, int]] = []
    groups: list[DhId] = []
    esn: list[bool] = []
    for token in _tokens(text):
        if token in _ENCRYPTION or token in _ESP_ONLY:
            encryption.append(_ENCRYPTION.get(token) or _ESP_ONLY[token])
        elif token in _DH:
            groups.append(_DH[token])
        elif token in _ESN:
            esn.append(_ESN[token])
        else:
            raise IkeLocalError(f"unknown or unsupported ESP algorithm {token!r} in {text!r}")
    if not encryption:
        raise IkeLocalError(f"ESP proposal {text!r} needs an AEAD (e.g. aes256gcm16)")
    return EspProposal(encryption=tuple(encryption), dh=tuple(groups), esn=tuple(esn) or (False,))

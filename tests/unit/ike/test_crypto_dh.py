"""Key exchange against RFC 7748 (X25519) and RFC 5903 (ECP) vectors, and refusal of bad peer data."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.agent.ike.constants import DhId, NotifyType
from trellis.agent.ike.crypto.dh import KeyExchange, ke_data_length
from trellis.agent.ike.errors import IkeLocalError, IkePeerError, InvalidKeyExchangeData

h = bytes.fromhex

# RFC 7748 section 5.2: X25519(scalar, u) test vectors
RFC7748_SCALAR_MULT = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]

# RFC 7748 section 6.1: Alice and Bob
ALICE_PRIVATE = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
X25519_SHARED = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 5903 section 8.1: 256-bit random ECP group
P256_I = h("c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433")
P256_GI = h(
    "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"  # x
    "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3"  # y
)
P256_R = h("c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53")
P256_GR = h(
    "d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63"
    "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab"
)
P256_GIR_X = h("d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de")

# RFC 5903 section 8.2: 384-bit random ECP group
P384_I = h("099f3c7034d4a2c699884d73a375a67f7624ef7c6b3c0f160647b67414dce655e35b538041e649ee3faef896783ab194")
P384_GR = h(
    "e558dbef53eecde3d3fccfc1aea08a89a987475d12fd950d83cfa41732bc509d0d1ac43a0336def96fda41d0774a3571"
    "dcfbec7aacf3196472169e838430367f66eebe3c6e70c416dd5f0c68759dd1fff83fa40142209dff5eaad96db9e6386c"
)
P384_GIR_X = h(
    "11187331c279962d93d604243fd592cb9d0a926f422e47187521287e7156c5c4d603135569b9e9d09cf5d4a270f59746"
)


@pytest.mark.parametrize(("scalar", "u", "out"), RFC7748_SCALAR_MULT)
def test_x25519_rfc7748_section_5_2(scalar: str, u: str, out: str) -> None:
    ke = KeyExchange.from_private_value(DhId.CURVE25519, h(scalar))
    assert ke.shared_secret(h(u)) == h(out)


def test_x25519_rfc7748_section_6_1() -> None:
    alice = KeyExchange.from_private_value(DhId.CURVE25519, ALICE_PRIVATE)
    bob = KeyExchange.from_private_value(DhId.CURVE25519, BOB_PRIVATE)
    assert alice.public_data == ALICE_PUBLIC
    assert bob.public_data == BOB_PUBLIC
    assert alice.shared_secret(BOB_PUBLIC) == X25519_SHARED
    assert bob.shared_secret(ALICE_PUBLIC) == X25519_SHARED


def test_ecp256_rfc5903_section_8_1() -> None:
    initiator = KeyExchange.from_private_value(DhId.ECP_256, P256_I)
    responder = KeyExchange.from_private_value(DhId.ECP_256, P256_R)
    assert initiator.public_data == P256_GI  # x | y, no 0x04 octet
    assert responder.public_data == P256_GR
    assert initiator.shared_secret(P256_GR) == P256_GIR_X  # only the x coordinate
    assert responder.shared_secret(P256_GI) == P256_GIR_X


def test_ecp384_rfc5903_section_8_2() -> None:
    initiator = KeyExchange.from_private_value(DhId.ECP_384, P384_I)
    assert len(initiator.public_data) == 96
    assert initiator.shared_secret(P384_GR) == P384_GIR_X


@pytest.mark.parametrize(("group", "length"), [(DhId.CURVE25519, 32), (DhId.ECP_256, 64), (DhId.ECP_384, 96)])
def test_generated_exchanges_agree(group: DhId, length: int) -> None:
    ours, theirs = KeyExchange.generate(group), KeyExchange.generate(group)
    assert ke_data_length(group) == length == len(ours.public_data)
    assert ours.shared_secret(theirs.public_data) == theirs.shared_secret(ours.public_data)
    assert "KeyExchange(group=" in repr(ours)


@pytest.mark.parametrize(
    ("group", "peer_data", "why"),
    [
        (DhId.CURVE25519, ALICE_PUBLIC[:31], "32 bytes"),
        (DhId.CURVE25519, ALICE_PUBLIC + b"\x00", "32 bytes"),
        (DhId.CURVE25519, bytes(32), "all-zero"),  # u = 0: low order
        (DhId.CURVE25519, b"\x01" + bytes(31), "all-zero"),  # u = 1: low order
        (DhId.ECP_256, P256_GR[:63], "64 bytes"),
        (DhId.ECP_256, b"\x04" + P256_GR, "64 bytes"),  # the SEC1 prefix is not on the IKE wire
        (DhId.ECP_256, P256_GR[:32] + bytes(31) + b"\x01", "not a point on the curve"),
        (DhId.ECP_256, bytes(64), "not a point on the curve"),
        (DhId.ECP_384, P256_GR + bytes(32), "not a point on the curve"),
    ],
)
def test_invalid_peer_data_is_invalid_syntax(group: DhId, peer_data: bytes, why: str) -> None:
    ke = KeyExchange.generate(group)
    with pytest.raises(InvalidKeyExchangeData, match=why) as caught:
        ke.shared_secret(peer_data)
    assert caught.value.notify == NotifyType.INVALID_SYNTAX


def test_unsupported_group_is_local_error() -> None:
    with pytest.raises(IkeLocalError):
        KeyExchange.generate(DhId.MODP_2048)
    with pytest.raises(IkeLocalError):
        ke_data_length(DhId.CURVE448)


KEYS = {group: KeyExchange.generate(group) for group in (DhId.CURVE25519, DhId.ECP_256, DhId.ECP_384)}


@settings(max_examples=150, deadline=None)
@given(group=st.sampled_from([DhId.CURVE25519, DhId.ECP_256, DhId.ECP_384]), data=st.binary(max_size=130))
def test_fuzz_peer_data_gives_secret_or_peer_error(group: DhId, data: bytes) -> None:
    ke = KEYS[group]
    try:
        secret = ke.shared_secret(data)
    except IkePeerError as e:
        assert e.notify == NotifyType.INVALID_SYNTAX
    else:
        assert len(secret) == {DhId.CURVE25519: 32, DhId.ECP_256: 32, DhId.ECP_384: 48}[group]

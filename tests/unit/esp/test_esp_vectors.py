"""Published ESP packet vectors: draft-mcgrew-gcm-test-01 section 4 (AES-GCM and AES-GMAC in
ESP, the packet-level companion of RFC 4106/4543) and RFC 7634 Appendix A (ChaCha20-Poly1305).

Each vector is a complete ESP packet: SPI, sequence number, IV, ciphertext and ICV. We open it
(the ICV must verify, the trailer must parse) and seal its plaintext again with the same
sequence number and IV, which must give back the same bytes: that pins the AAD (with and
without ESN), the nonce and the default padding.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from trellis.agent.esp import Cipher, Direction, InboundSa, SaParams, TrafficSelector
from trellis.agent.esp.codec import open_esp, seal_esp
from trellis.agent.esp.errors import AuthenticationFailed
from trellis.agent.esp.transforms import AeadTransform


@dataclass(frozen=True)
class Vector:
    name: str
    cipher: Cipher
    keymat: str  # key || salt
    spi: int
    seq: int  # full 64-bit value; ``esn`` says whether the AAD carries the high half
    esn: bool
    iv: str
    plaintext: str  # payload || padding || pad length || next header
    sealed: str  # what follows the IV: ciphertext || ICV (GMAC: plaintext || ICV)

    @property
    def packet(self) -> bytes:
        header = self.spi.to_bytes(4, "big") + (self.seq & 0xFFFFFFFF).to_bytes(4, "big")
        return header + bytes.fromhex(self.iv) + bytes.fromhex(self.sealed)

    @property
    def payload_and_next_header(self) -> tuple[bytes, int]:
        plain = bytes.fromhex(self.plaintext)
        return plain[: len(plain) - 2 - plain[-2]], plain[-1]


GCM = Cipher.AES_GCM_16
MCGREW_PING = (
    "45000030da3a00008001df3bc0a80005c0a800010800c6cd020007006162636465666768696a6b6c6d6e6f707172737401020201"
)

VECTORS = [
    Vector(
        "mcgrew-1 AES-128 ESN (UDP/DNS)",
        GCM,
        "4c80cdefbb5d10da906ac73c3613a6342e443b68",
        0x4321,
        0x8765432100000000,
        True,
        "4956ed7e3b244cfe",
        "45000048699a000080114db7c0a80102c0a801010a9bf15638d3010000010000"
        "00000000045f736970045f756470037369700963796265726369747902646b00"
        "0021000101020201",
        "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34"
        "cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce"
        "61bc17d768fd9732459018148f6cbe722fd04796562dfdb4",
    ),
    Vector(
        "mcgrew AES-128 ESN (ICMP echo, 2 pad bytes)",
        GCM,
        "3de09874b388e6491988d0c3607eae1f57690e43",
        0x42F67E3F,
        0x1010101010101010,
        True,
        "4e280000a2fca1a3",
        "4500003c99c300008001cb7c40679318010101010800085c0200430061626364"
        "65666768696a6b6c6d6e6f70717273747576776162636465666768690102 0201".replace(" ", ""),
        "fba2caa4853cf9f0f22cb10d86dd83b0fec75691cf1a04b00d1138ec9c357917"
        "65acbd8701ad79845bf9fe3fba487bc91755e6662b4c8d0d1f5e22739530320a"
        "e0d731cc978ecafaeae88f00e80d6e48",
    ),
    Vector(
        "mcgrew AES-128 ESN (short ICMP)",
        GCM,
        "3de09874b388e6491988d0c3607eae1f57690e43",
        0x42F67E3F,
        0x1010101010101010,
        True,
        "4e280000a2fca1a3",
        "4500001c42a200008001441f406793b6e00000020a00f5ff01020201",
        "fba2ca845e5df9f0f22c3e6e86dd831e1fc65792cd1af9130e1379ed369f071f35e034be95f112e4e7d05d35",
    ),
    Vector(
        "mcgrew AES-128 ESN seq 1 (UDP, 1 pad byte)",
        GCM,
        "abbccddef00112233445566778899aabdecaf888",
        0x100,
        1,
        True,
        "cafedebaceface74",
        "4500004933ba00007f119106c3fb1d10c2b1d326c02831ce0035dd7b800302d5"
        "00004e20001e8c18d75b81dc91baa0476b91b924b280389d92c963bac046ec95"
        "9b6266c04722b14923010101",
        "18a6fd42f72cbf4ab2a2ea901f73d814e3e7f243d95412e1c349c1d2fbec168f"
        "9190feebaf2cb01984e65863965d7472b79da345e0e780191f0d2f0e0f496c22"
        "6f2127b27db35724e7845d68651f57e65f354f75ff17015769623436",
    ),
    Vector(
        "mcgrew AES-128 ESN (UDP, other payload)",
        GCM,
        "3de09874b388e6491988d0c3607eae1f57690e43",
        0x42F67E3F,
        0x1010101010101010,
        True,
        "4e280000a2fca1a3",
        "45000049333e00007f119182c3fb1d10c2b1d326c02831ce0035cb458003025b"
        "000001e0001e8c18d65759d52284a0352c71475c8880391c764d6e5ee0496b32"
        "5ae270c03899493915010101",
        "fba2cad12fc1f9f00d3cebf305410db83d7784b607323d220f24b0a97d541828"
        "00cadb0f68d99ef0e0c0c89ae9bea8884e52d65bc1afd0740f742444747b5b39"
        "ab533163aad4550ee5160975cdb608c5769189609763b8e18caa81e2",
    ),
    Vector(
        "mcgrew AES-128 ESN (no padding)",
        GCM,
        "abbccddef00112233445566778899aabdecaf888",
        0x100,
        1,
        True,
        "cafedebaceface74",
        "746f016265016f72016e6f7401746f0162650001",
        "29c9fc69a197d038ccdd14e2ddfcaa0543332164412503524303ed3c6c5f283843af8c3e",
    ),
    Vector(
        "mcgrew AES-128 ESN (ICMP echo, other SPI)",
        GCM,
        "3de09874b388e6491988d0c3607eae1f57690e43",
        0x3F7EF642,
        0x1010101010101010,
        True,
        "4e280000a2fca1a3",
        MCGREW_PING,
        "fba2caa8c6c5f9f0f22ca54a061210ad3f6e5791cf1aca210d117cec9c357917"
        "65acbd8701ad79845bf9fe3fba487bc96321930684eecadb56912546e7a95c97"
        "40d7cb05",
    ),
    Vector(
        "mcgrew AES-128 ESN transport mode (ICMP payload)",
        GCM,
        "4c80cdefbb5d10da906ac73c3613a63422433c64",
        0x4321,
        0x8765432100000007,
        True,
        "4855ec7d3a234bfd",
        "0800c6cd020007006162636465666768696a6b6c6d6e6f707172737401020201",
        "74752e8aeb5d873cd7c0f4acc36c4bff84b7d7b98f0ca8b6acda6894bc619069ef9cbc28fe1b56a7c4e0d58c86cd2bc0",
    ),
    Vector(
        "mcgrew AES-256 ESN (TCP)",
        GCM,
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab73616c74",
        0x17405E67,
        0x156F3126DD0DB99B,
        True,
        "616e640169766563",
        "45080028732c00004006e9f90a0106120a01038f06b88023dd6bafbecb71260250101f646d540001",
        "f2d69ecdbd5a0d5b8d5ef38bad4da58d1f278fde98ef67549d524a3018d9a57f"
        "f4d3a31ce673119e451626c2415771e3b7eebca614c89b35",
    ),
    Vector(
        "mcgrew AES-256 ESN (text payload)",
        GCM,
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab73616c74",
        0x17405E67,
        0x156F3126DD0DB99B,
        True,
        "616e640169766563",
        "636973636f0172756c65730174686501"
        "6e6574776501646566696e6501746865"
        "746563686e6f6c6f6769657301746861"
        "7477696c6c01646566696e65746f6d6f"
        "72726f7701020201",
        "d4b7ed86a1777f2ea13d6973d324c69e7b43f826fb56831226508bebd2dceb18"
        "d0a6df10e5487df074113e14c641024e3e6773d91a62ee429b043a10e3efe6b0"
        "12a49363412364f8c0cac587f249e56b11e24f30e44ccc76",
    ),
    Vector(
        "mcgrew AES-256 ESN sequence number 2^64-1",
        GCM,
        "6c6567616c697a656d6172696a75616e61616e64646f69746265666f726569617475726e",
        0x796B6963,
        0xFFFFFFFFFFFFFFFF,
        True,
        "333021696765746d",
        MCGREW_PING,
        "f97ab2aa356d8edce17644ac8c78e25dd24dedbb29ebf1b64a274b39b49c3a86"
        "4cd3d78ca4ae68a32b42458fb57dbe821dcc63b9d0937ba2945f669368661a32"
        "9fb4c053",
    ),
    Vector(
        "mcgrew case 7 AES-192 without ESN (TCP)",
        GCM,
        "feffe9928665731c6d6a8f9467308308feffe9928665731ccafebabe",
        0xA5F8,
        0x0A,
        False,
        "facedbaddecaf888",
        "45000028a4ad4000400678800a01038f0a010612802306b8cb712602dd6bb03e501016d075680001",
        "a5b1f8066029aea40e598b8122de02420938b3ab33f828e687b8858b5bfbdbd0"
        "315b27452144cc7795457b9652037f5318027b5b4cd7a636",
    ),
    Vector(
        "mcgrew ENCR_NULL_AUTH_AES_GMAC AES-128 (ICMP echo in clear)",
        Cipher.NULL_AUTH_AES_GMAC,
        "4c80cdefbb5d10da906ac73c3613a63422433c64",
        0x4321,
        7,
        False,
        "0000000000000000",
        MCGREW_PING,
        MCGREW_PING + "f2a9a836e155106aa8dcd618e4099aaa",
    ),
    Vector(
        "RFC 7634 Appendix A ChaCha20-Poly1305 (ICMP echo, tunnel mode)",
        Cipher.CHACHA20_POLY1305,
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3",
        0x01020304,
        5,
        False,
        "1011121314151617",
        "45000054a6f200004001e778c6336405c000020508005b7a3a080000553bec10"
        "0007362708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223"
        "2425262728292a2b2c2d2e2f303132333435363701020204",
        "24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6"
        "14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3"
        "cbec163fac469b502773f6fb94e664da9165b82829f641e076aaa8266b7fb0f7"
        "b11b369907e1ad43",
    ),
]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_open_vector(vector: Vector) -> None:
    transform = AeadTransform(vector.cipher, bytes.fromhex(vector.keymat))
    assert open_esp(transform, vector.packet, seq=vector.seq, esn=vector.esn) == (
        vector.payload_and_next_header[1],
        vector.payload_and_next_header[0],
    )


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_seal_vector(vector: Vector) -> None:
    transform = AeadTransform(vector.cipher, bytes.fromhex(vector.keymat))
    payload, next_header = vector.payload_and_next_header
    sealed = seal_esp(
        transform,
        spi=vector.spi,
        seq=vector.seq,
        iv=bytes.fromhex(vector.iv),
        payload=payload,
        next_header=next_header,
        esn=vector.esn,
    )
    assert sealed.hex() == vector.packet.hex()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_with_wrong_high_sequence_bits_fails(vector: Vector) -> None:
    """With ESN the high half is authenticated though never sent; without ESN it is unused."""
    transform = AeadTransform(vector.cipher, bytes.fromhex(vector.keymat))
    other = vector.seq ^ (1 << 40)
    if vector.esn:
        with pytest.raises(AuthenticationFailed):
            open_esp(transform, vector.packet, seq=other, esn=True)
    else:
        payload, next_header = vector.payload_and_next_header
        assert open_esp(transform, vector.packet, seq=other, esn=False) == (next_header, payload)


def test_rfc7634_through_an_inbound_sa() -> None:
    """The RFC 7634 packet through the stateful path: window, ICV, trailer, selectors."""
    vector = VECTORS[-1]
    params = SaParams(
        spi=vector.spi,
        direction=Direction.INBOUND,
        cipher=vector.cipher,
        key=bytes.fromhex(vector.keymat),
        local_ts=(TrafficSelector.from_network("192.0.2.0/24"),),
        remote_ts=(TrafficSelector.from_network("198.51.100.0/24"),),
        local_address=ipaddress.ip_address("203.0.113.1"),
        remote_address=ipaddress.ip_address("203.0.113.2"),
    )
    sa = InboundSa(params, now=0.0)
    inner = sa.open_packet(vector.packet, now=1.0)
    assert inner == vector.payload_and_next_header[0]
    assert inner is not None and inner[12:16] == bytes([198, 51, 100, 5])
    assert sa.packets == 1 and sa.bytes == 84

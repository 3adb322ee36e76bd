"""Named bounds on everything a peer can make the codec allocate or loop over.

The wire format alone would allow far more (counts are 8 or 16 bits wide, messages up to 4 GiB);
anything beyond these bounds is refused with ``MalformedMessage`` (or, for fragments,
``InvalidFragment``) before it costs us memory or time.
"""

from __future__ import annotations

# A datagram cannot be larger than this over UDP; a reassembled message neither (RFC 7383 does
# not raise the 64 KiB ceiling of IKEv2's 16-bit payload lengths).
MAX_MESSAGE_BYTES = 65_535
# Payloads in one chain (the outer message, or the inner payloads of SK / reassembled SKF).
# A large IKE_AUTH has IDi, CERT x chain, CERTREQ, AUTH, SA, TSi, TSr and a handful of notifies.
MAX_PAYLOADS = 64
MAX_PROPOSALS = 32
# strongSwan's "default" IKE proposal lists ~40 transforms; leave room for long custom lists.
MAX_TRANSFORMS_PER_PROPOSAL = 128
MAX_ATTRIBUTES_PER_TRANSFORM = 8
MAX_SPI_BYTES = 32  # IKE uses 8, AH/ESP 4; unknown protocols are tolerated up to this
MAX_TRAFFIC_SELECTORS = 32
MAX_CERTREQ_AUTHORITIES = 64
MAX_DELETE_SPIS = 1024
MIN_NONCE_BYTES = 16  # RFC 7296 section 2.10
MAX_NONCE_BYTES = 256
# RFC 7383 reassembly: fragments held for one message and the bytes of their decrypted content.
MAX_FRAGMENTS = 64
MAX_REASSEMBLED_BYTES = 65_535

"""NetworkMaps as bytes, assembled from pieces encoded once.

A change reaches every connected agent at once, and each agent's map differs from the next only
in which peers it lists, its own entry and its policy view. Building hundreds of protobuf objects
of hundreds of peers each, per change, is what made fan-out slow; here each site's ``Peer``, each
(site, peer) policy and the parts every map shares are encoded once, and a map is a join of byte
strings. Protobuf allows a message's fields in any order and repeated fields as separate entries,
so the concatenation is the same message the protobuf library would read (tests check that).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from trellis.v1 import common_pb2

_MAP = common_pb2.NetworkMap.DESCRIPTOR.fields_by_name
_VIEW = common_pb2.PolicyView.DESCRIPTOR.fields_by_name
VERSION = _MAP["version"].number
GENERATED_AT = _MAP["generated_at"].number
TRUST_DOMAIN = _MAP["trust_domain"].number
SELF = _MAP["self"].number
PEERS = _MAP["peers"].number
REVOKED_IDENTITIES = _MAP["revoked_identities"].number
REVOKED_SERIALS = _MAP["revoked_serials"].number
CA_BUNDLE = _MAP["ca_bundle_der"].number
POLICY = _MAP["policy"].number
POLICY_VERSION = _VIEW["policy_version"].number
POLICY_PEERS = _VIEW["peers"].number
NEXT_CHANGE = _VIEW["next_change"].number

_VARINT = 0
_LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints here are never negative")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    return varint(number << 3 | _VARINT) + varint(value)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | _LENGTH_DELIMITED) + varint(len(payload)) + payload


def text_field(number: int, text: str) -> bytes:
    return length_delimited(number, text.encode())


@dataclass(frozen=True, slots=True)
class EncodedMap:
    """One agent's map without its version, timestamp and policy version: two of these compare
    equal exactly when the agent would learn nothing new."""

    head: bytes  # trust domain, revocations, CA bundle, self, peers
    policy: bytes  # the PolicyView's fields, without policy_version

    def encode(self, *, version: int, generated_at: Timestamp, policy_version: int) -> bytes:
        policy = self.policy + (varint_field(POLICY_VERSION, policy_version) if policy_version else b"")
        return b"".join(
            (
                self.head,
                length_delimited(POLICY, policy),
                varint_field(VERSION, version) if version else b"",
                length_delimited(GENERATED_AT, generated_at.SerializeToString()),
            )
        )

"""Regenerate the strongSwan vectors of test_codec_strongswan.py (run by hand, as root).

    .venv/bin/python tests/unit/ike/capture_strongswan_vectors.py

Two network namespaces joined by a veth pair (192.0.2.1 here, 192.0.2.2 for charon, names
unique to this run, removed at the end). We send charon an IKE_SA_INIT request encoded by our
codec and record its response, then let charon initiate to us and record its request.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from trellis.agent.ike.constants import (
    DhId,
    EncrId,
    ExchangeType,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from trellis.agent.ike.message import IkeHeader, Message, decode_message, encode_message
from trellis.agent.ike.payloads import KeyExchange, Nonce, Notify, Proposal, SecurityAssociation, Transform

STRONGSWAN_CONF = """charon {
  port = 500
  port_nat_t = 4500
  install_routes = no
  retransmit_tries = 1
  plugins {
    vici {
      socket = unix:///run/trellis-codec.vici
    }
    kernel-libipsec {
      load = no
    }
    forecast {
      load = no
    }
    ha {
      load = no
    }
  }
}
"""
SWANCTL_CONF = """connections {
  test {
    version = 2
    local_addrs = 192.0.2.2
    remote_addrs = 192.0.2.1
    proposals = aes256gcm16-prfsha256-x25519-ecp256
    local {
      auth = psk
      id = b.example
    }
    remote {
      auth = psk
      id = a.example
    }
    children {
      net {
        local_ts = 10.2.0.0/24
        remote_ts = 10.1.0.0/24
        esp_proposals = aes256gcm16
      }
    }
  }
}
secrets {
  ike-1 {
    id-1 = a.example
    secret = 0sdGVzdHRlc3R0ZXN0dGVzdA==
  }
}
"""


def our_request() -> bytes:
    public = x25519.X25519PrivateKey.generate().public_key()
    key = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    proposal = Proposal(
        number=1,
        protocol=ProtocolId.IKE,
        transforms=(
            Transform(type=TransformType.ENCR, id=EncrId.AES_GCM_16, key_length=256),
            Transform(type=TransformType.PRF, id=PrfId.HMAC_SHA2_256),
            Transform(type=TransformType.DH, id=DhId.CURVE25519),
        ),
    )
    header = IkeHeader(
        spi_i=os.urandom(8), exchange=ExchangeType.IKE_SA_INIT, initiator=True, response=False, message_id=0
    )
    payloads = (
        SecurityAssociation(proposals=(proposal,)),
        KeyExchange(group=DhId.CURVE25519, data=key),
        Nonce(data=os.urandom(32)),
        Notify(notify_type=NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
        Notify(notify_type=NotifyType.SIGNATURE_HASH_ALGORITHMS, data=bytes.fromhex("000200030004")),
    )
    return encode_message(Message(header=header, payloads=payloads))


def run(*command: str) -> None:
    subprocess.run(command, check=True)


def capture(theirs: str, workdir: Path) -> None:
    """Runs inside our namespace: start charon in its own, talk to it, print the vectors."""
    vici = "unix:///run/trellis-codec.vici"
    script = (
        f"mount -t tmpfs none /run && (STRONGSWAN_CONF={workdir}/strongswan.conf /usr/lib/ipsec/charon"
        f" >{workdir}/charon.log 2>&1 &) && sleep 2 && swanctl --load-all --file {workdir}/swanctl.conf"
        f" --uri {vici} >/dev/null && sleep 2 && swanctl --initiate --child net --uri {vici} --timeout 3"
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("192.0.2.1", 500))
    sock.settimeout(1)
    charon = subprocess.Popen(["ip", "netns", "exec", theirs, "unshare", "-m", "sh", "-c", script])
    request, response = b"", b""
    for _ in range(8):  # until charon is up and has its configuration (else: NO_PROPOSAL_CHOSEN)
        request = our_request()
        sock.sendto(request, ("192.0.2.2", 500))
        try:
            response, _ = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if decode_message(response).find(SecurityAssociation) is not None:
            break
        time.sleep(0.5)
    sock.settimeout(10)
    strongswan_request, _ = sock.recvfrom(65535)
    charon.wait(timeout=15)
    print(f"OUR_REQUEST = {request.hex()!r}")
    print(f"STRONGSWAN_RESPONSE = {response.hex()!r}")
    print(f"STRONGSWAN_REQUEST = {strongswan_request.hex()!r}")


def main() -> None:
    if sys.argv[1:2] == ["--capture"]:
        capture(sys.argv[2], Path(sys.argv[3]))
        return
    prefix = f"tc{os.getpid()}"
    ours, theirs = f"{prefix}a", f"{prefix}b"
    workdir = Path(tempfile.mkdtemp(prefix="trellis-ssw-"))
    (workdir / "strongswan.conf").write_text(STRONGSWAN_CONF)
    (workdir / "swanctl.conf").write_text(SWANCTL_CONF)
    try:
        run("ip", "netns", "add", ours)
        run("ip", "netns", "add", theirs)
        run("ip", "link", "add", f"{prefix}va", "type", "veth", "peer", "name", f"{prefix}vb")
        for ns, dev, address in (
            (ours, f"{prefix}va", "192.0.2.1/24"),
            (theirs, f"{prefix}vb", "192.0.2.2/24"),
        ):
            run("ip", "link", "set", dev, "netns", ns)
            run("ip", "-n", ns, "addr", "add", address, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "netns", "exec", ours, sys.executable, __file__, "--capture", theirs, str(workdir))
    finally:
        pids = subprocess.run(["ip", "netns", "pids", theirs], capture_output=True, text=True, check=False)
        for pid in pids.stdout.split():
            os.kill(int(pid), 15)
        time.sleep(0.5)
        subprocess.run(["ip", "netns", "del", ours], check=False)
        subprocess.run(["ip", "netns", "del", theirs], check=False)


if __name__ == "__main__":
    main()

"""The data plane's policy filter across its two workers, in one process: the flow channel over
real pipes, the policy hook of each worker (the opener publishes before forwarding, a reply that
beats its record drains and re-checks, a full channel drops the new flow and counts it), the
engines with the hook, and the worker's SetPolicy handling (a view in parts, updates that keep
flows). Views come from the controller's real compiler."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.unit.esp.esp_support import TCP_ACK, TCP_SYN, pair, tcp4, udp4
from trellis.agent.dataplane.control import (
    POLICY_PART_BYTES,
    Configure,
    Counters,
    Request,
    SetFilter,
    SetPolicy,
    Snapshot,
    control_pair,
    receive_message,
    send_message,
)
from trellis.agent.dataplane.engine import EngineConfig, InboundEngine, OutboundEngine
from trellis.agent.dataplane.flowsync import (
    FLOW_CHANNEL_BYTES,
    MAX_RECORDS_PER_WRITE,
    FlowChannel,
    flow_pipe,
)
from trellis.agent.dataplane.hooks import ALLOW, Verdict
from trellis.agent.dataplane.policy import FLOW_CHANNEL_FULL, PolicyHook
from trellis.agent.dataplane.worker import Worker
from trellis.agent.esp.constants import Direction, DropReason
from trellis.agent.filter.packet import push_icmp, push_ipv4
from trellis.agent.filter.records import FLOW_RECORD_SIZE, FlowRecord, RecordKind
from trellis.agent.filter.rules import Direction as FilterDirection
from trellis.agent.filter.rules import peer_tag
from trellis.controller.policy import Inventory, Site, compile_view, parse_policy
from trellis.controller.policy.wire import view_to_proto
from trellis.v1 import common_pb2

A = "spiffe://test.example/site/site-a"
B = "spiffe://test.example/site/site-b"
A_HOST, B_HOST = "10.1.0.5", "10.2.0.7"
OUT, IN = Direction.OUTBOUND, Direction.INBOUND
T0 = 1_000.0  # the engines' (monotonic) clock in these tests

POLICY = """
apiVersion: trellis/v1
kind: Policy
rules:
  - name: a-to-b
    from: site-a
    to: site-b
    ports: [tcp/5201, icmp]
"""
ICMP_ONLY = POLICY.replace("[tcp/5201, icmp]", "[icmp]")


def site_view(text: str = POLICY, *, of: str = A, version: int = 1) -> common_pb2.PolicyView:
    inventory = Inventory(
        [
            Site.build(name="site-a", identity=A, subnets=["10.1.0.0/24", "fd00:a::/64"]),
            Site.build(name="site-b", identity=B, subnets=["10.2.0.0/24", "fd00:b::/64"]),
        ]
    )
    view = compile_view(parse_policy(text), inventory, of, dt.datetime.now(dt.UTC))
    return view_to_proto(view, policy_version=version)


@pytest.fixture
def pipes() -> Iterator[tuple[FlowChannel, FlowChannel]]:
    """The two workers' channels: outbound -> inbound, inbound -> outbound."""
    to_inbound, to_outbound = flow_pipe(), flow_pipe()
    out = FlowChannel(send_fd=to_inbound[1], receive_fd=to_outbound[0])
    inbound = FlowChannel(send_fd=to_outbound[1], receive_fd=to_inbound[0])
    yield out, inbound
    out.close()
    inbound.close()


def hooks(
    pipes: tuple[FlowChannel, FlowChannel], view: common_pb2.PolicyView
) -> tuple[PolicyHook, PolicyHook]:
    out, inbound = PolicyHook(view, pipes[0]), PolicyHook(view, pipes[1])
    out.wall_offset = inbound.wall_offset = time.time() - T0
    return out, inbound


def ping(src: str, dst: str, *, ident: int, reply: bool = False) -> bytes:
    source, destination = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
    message = push_icmp(src=source, dst=destination, icmp_type=0 if reply else 8, ident=ident, seq=1)
    return push_ipv4(src=source, dst=destination, protocol=1, payload=message)


def record(port: int) -> FlowRecord:
    return FlowRecord(
        kind=RecordKind.NEW,
        key=(4, 6, 0x0A010005, port, 0x0A020007, 5201),
        opened=FilterDirection.OUTBOUND,
        peer_tag=peer_tag(B),
        bits=0,
        expires=time.time() + 30,
    )


# --- the channel ---------------------------------------------------------------------------------


def test_records_cross_the_pipe_whole_and_in_order(pipes: tuple[FlowChannel, FlowChannel]) -> None:
    out, inbound = pipes
    sent = [record(port) for port in range(1000, 1000 + 3 * MAX_RECORDS_PER_WRITE + 1)]
    assert out.send(sent) == []
    assert inbound.receive() == sent
    assert inbound.receive() == []
    assert (out.sent, inbound.received, out.dropped_full) == (len(sent), len(sent), 0)


def test_a_full_channel_refuses_without_blocking(pipes: tuple[FlowChannel, FlowChannel]) -> None:
    out, inbound = pipes
    capacity = FLOW_CHANNEL_BYTES // FLOW_RECORD_SIZE
    batch = [record(port) for port in range(MAX_RECORDS_PER_WRITE)]
    written = 0
    while not out.send(batch):  # non-blocking: a full pipe refuses, it never waits for the reader
        written += len(batch)
        assert written <= capacity + len(batch)
    assert capacity - 2 * len(batch) <= written <= capacity
    assert out.dropped_full == len(batch)
    # the reader drains at most one channel's worth per call, and gets whole records only
    drained = inbound.receive()
    assert len(drained) == written and all(r.kind is RecordKind.NEW for r in drained)
    assert out.send(batch) == []  # room again


def test_records_that_do_not_parse_are_counted_and_dropped(pipes: tuple[FlowChannel, FlowChannel]) -> None:
    out, inbound = pipes
    os.write(out.send_fd, b"\xee" * FLOW_RECORD_SIZE)
    assert inbound.receive() == [] and inbound.malformed == 1
    good = record(7)
    assert out.send([good]) == [] and inbound.receive() == [good]


# --- the hooks of the two workers --------------------------------------------------------------------


def test_a_reply_that_beats_its_record_drains_and_passes(pipes: tuple[FlowChannel, FlowChannel]) -> None:
    out, inbound = hooks(pipes, site_view())
    syn = tcp4(A_HOST, B_HOST, 40000, 5201, flags=TCP_SYN)
    assert out.check(syn, OUT, T0) is ALLOW
    # the record was published before check() returned, i.e. before the SYN could be sealed;
    # the inbound worker has not read it yet when the SYN-ACK arrives
    synack = tcp4(B_HOST, A_HOST, 5201, 40000, flags=TCP_SYN | TCP_ACK)
    assert inbound.check(synack, IN, T0 + 0.001) is ALLOW
    assert inbound.counters()["flow_rechecks_allowed"] == 1
    # the reply seen goes back the same way, and the data flows both ways
    assert out.drain(time.time()) == 1
    for i in range(5):
        assert out.check(tcp4(A_HOST, B_HOST, 40000, 5201, payload=b"x" * 100), OUT, T0 + 1 + i) is ALLOW
        assert inbound.check(tcp4(B_HOST, A_HOST, 5201, 40000), IN, T0 + 1 + i) is ALLOW
    counters = out.counters()
    assert counters["flow_records_published"] == 1 and counters["flow_records_imported"] == 1
    assert counters["policy_flows"] == 1 and inbound.counters()["policy_flows"] == 1
    # the filter's own verdict counters do not count the drop that the re-check undid
    assert inbound.filter.counters().verdicts == {"established": 6}


def test_what_the_policy_forbids_stays_dropped_with_its_reason(
    pipes: tuple[FlowChannel, FlowChannel],
) -> None:
    out, inbound = hooks(pipes, site_view())
    # the peer may not open flows towards this site: not TCP, not ping
    assert inbound.check(tcp4(B_HOST, A_HOST, 40000, 5201, flags=TCP_SYN), IN, T0) == Verdict(
        allowed=False, reason="no-rule"
    )
    assert inbound.check(ping(B_HOST, A_HOST, ident=1), IN, T0).reason == "no-rule"
    # nor other ports from here
    assert out.check(tcp4(A_HOST, B_HOST, 40000, 22, flags=TCP_SYN), OUT, T0).reason == "no-rule"
    assert out.check(b"\x45garbage", OUT, T0).reason == "truncated"
    assert out.counters().get("flow_records_published", 0) == 0


def test_a_full_channel_drops_the_new_flow_until_there_is_room(
    pipes: tuple[FlowChannel, FlowChannel],
) -> None:
    out_channel, in_channel = pipes
    out, inbound = hooks(pipes, site_view())
    while not out_channel.send([record(1)] * MAX_RECORDS_PER_WRITE):
        pass  # the inbound worker is not reading: the channel fills
    syn = tcp4(A_HOST, B_HOST, 40001, 5201, flags=TCP_SYN)
    assert out.check(syn, OUT, T0) == Verdict(allowed=False, reason=FLOW_CHANNEL_FULL)
    assert out.filter.counters().flows == 0  # not opened: its replies could not have passed
    assert out.counters()["flow_records_dropped_full"] > MAX_RECORDS_PER_WRITE
    in_channel.receive()  # it reads again
    assert out.check(syn, OUT, T0 + 1) is ALLOW  # the retransmission
    assert inbound.check(tcp4(B_HOST, A_HOST, 5201, 40001, flags=TCP_SYN | TCP_ACK), IN, T0 + 1) is ALLOW


def test_an_update_keeps_allowed_flows_and_ends_the_others(pipes: tuple[FlowChannel, FlowChannel]) -> None:
    out, inbound = hooks(pipes, site_view())
    assert out.check(tcp4(A_HOST, B_HOST, 40000, 5201, flags=TCP_SYN), OUT, T0) is ALLOW
    assert out.check(ping(A_HOST, B_HOST, ident=3), OUT, T0) is ALLOW
    inbound.drain(time.time())
    renamed = POLICY.replace("a-to-b", "iperf-and-ping")
    for hook in (out, inbound):
        assert hook.update(site_view(renamed, version=2), time.time()) == 0
    reply = tcp4(B_HOST, A_HOST, 5201, 40000, flags=TCP_SYN | TCP_ACK)
    assert inbound.check(reply, IN, T0 + 1) is ALLOW
    for hook in (out, inbound):
        assert hook.update(site_view(ICMP_ONLY, version=3), time.time()) == 1  # the TCP flow
        assert hook.policy_version == 3
    assert inbound.check(tcp4(B_HOST, A_HOST, 5201, 40000), IN, T0 + 2).reason == "no-rule"
    assert out.check(tcp4(A_HOST, B_HOST, 40000, 5201), OUT, T0 + 2).reason == "no-rule"
    assert inbound.check(ping(B_HOST, A_HOST, ident=3, reply=True), IN, T0 + 2) is ALLOW
    assert out.counters()["policy_flows_ended"] == 1


# --- through the engines -----------------------------------------------------------------------------


def test_engines_with_the_policy_hook(pipes: tuple[FlowChannel, FlowChannel]) -> None:
    a_out_sa, _ = pair()  # site A's outbound SA ...
    b_out_sa, a_in_sa = pair(local=("10.2.0.0/24",), remote=("10.1.0.0/24",))  # ... and B's towards A
    a_out, a_in = OutboundEngine(EngineConfig()), InboundEngine(EngineConfig())
    b_out = OutboundEngine(EngineConfig())  # the peer, without a filter
    a_out.install(a_out_sa, T0)
    a_in.install(a_in_sa, T0)
    b_out.install(b_out_sa, T0)
    a_out.filter, a_in.filter = hooks(pipes, site_view())

    def a_sends(packet: bytes) -> int:
        a_out.handle_frame(packet, T0)
        return sum(len(batch) for _, batch in a_out.take_datagrams())

    def a_receives(packet: bytes) -> int:
        b_out.handle_frame(packet, T0)
        for _, batch in b_out.take_datagrams():
            for datagram in batch:
                a_in.handle_datagram(datagram, ("198.51.100.1", 4500), T0)
        return len(a_in.take_tun_writes())

    assert a_sends(tcp4(A_HOST, B_HOST, 40000, 5201, flags=TCP_SYN)) == 1
    assert a_receives(tcp4(B_HOST, A_HOST, 5201, 40000, flags=TCP_SYN | TCP_ACK)) == 1
    assert a_sends(ping(A_HOST, B_HOST, ident=9)) == 1
    assert a_receives(ping(B_HOST, A_HOST, ident=9, reply=True)) == 1
    assert a_receives(ping(B_HOST, A_HOST, ident=10)) == 0  # B may not ping A
    assert a_receives(tcp4(B_HOST, A_HOST, 40001, 5201, flags=TCP_SYN)) == 0
    assert a_sends(udp4(A_HOST, B_HOST)) == 0
    assert a_in.stats.policy_reasons == {"no-rule": 2} and a_in.stats.drops == {DropReason.POLICY: 2}
    assert a_out.stats.policy_reasons == {"no-rule": 1}


# --- the worker's commands ---------------------------------------------------------------------------


@pytest.fixture
def worker(pipes: tuple[FlowChannel, FlowChannel]) -> Iterator[tuple[Worker, socket.socket]]:
    ours, theirs = control_pair()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    worker = Worker(-1, udp, theirs, pipes[0])
    yield worker, ours
    for sock in (ours, theirs, udp):
        sock.close()


def ask(worker: tuple[Worker, socket.socket], command: object, request_id: int = 1) -> object:
    handle, ours = worker
    send_message(ours, Request(request_id=request_id, command=command))  # type: ignore[arg-type]
    handle.handle_control()
    reply = receive_message(ours)
    assert reply is not None
    return reply


def test_the_worker_builds_its_filter_from_a_view_in_parts(worker: tuple[Worker, socket.socket]) -> None:
    handle, _ = worker
    assert ask(worker, Configure(role="inbound", config=EngineConfig())).error is None  # type: ignore[attr-defined]
    view = site_view()
    # a view larger than one control message: many peers
    for index in range(3000):
        view.peers.add(identity=f"spiffe://test.example/site/extra-{index}").inbound.add(
            rule=f"r{index}", src_prefixes=["10.9.0.0/24"], dst_prefixes=["10.1.0.0/24"], protocol=17
        )
    data = view.SerializeToString()
    parts = [data[i : i + POLICY_PART_BYTES] for i in range(0, len(data), POLICY_PART_BYTES)]
    assert len(parts) >= 2
    for index, part in enumerate(parts):
        assert handle.policy is None or index == 0
        reply = ask(worker, SetPolicy(data=part, part=index, parts=len(parts)), index + 2)
        assert reply.error is None  # type: ignore[attr-defined]
    assert handle.policy is not None and handle.inbound is not None and handle.inbound.filter is handle.policy
    assert handle.policy.filter.peers >= {B, "spiffe://test.example/site/extra-2999"}
    # parts out of order are refused and leave the filter as it was
    reply = ask(worker, SetPolicy(data=parts[1], part=1, parts=len(parts)), 99)
    assert "out of order" in (reply.error or "")  # type: ignore[attr-defined]
    assert handle.policy.filter.peers >= {"spiffe://test.example/site/extra-2999"}
    reply = ask(worker, SetPolicy(data=b"\xff\xff\xff", part=0, parts=1), 100)
    assert "does not parse" in (reply.error or "")  # type: ignore[attr-defined]
    # counters in the snapshot, under this worker's role
    reply = ask(worker, Snapshot(), 101)
    counters = reply.counters  # type: ignore[attr-defined]
    assert isinstance(counters, Counters)
    assert counters.traffic["policy_flows_inbound"] == 0 and counters.traffic["flow_records_published"] == 0
    # an update keeps the hook (and its flows); None removes it; a filter of one's own replaces it
    policy = handle.policy
    assert ask(worker, SetPolicy(data=site_view(version=2).SerializeToString()), 102).error is None  # type: ignore[attr-defined]
    assert handle.policy is policy and policy.policy_version == 2
    assert ask(worker, SetPolicy(data=None), 103).error is None  # type: ignore[attr-defined]
    assert handle.policy is None and handle.inbound.filter is None
    ask(worker, SetPolicy(data=site_view().SerializeToString()), 104)
    ask(worker, SetFilter(filter=None), 105)
    assert handle.policy is None and handle.inbound.filter is None


def test_records_that_come_before_the_workers_view_are_kept_for_it(
    pipes: tuple[FlowChannel, FlowChannel], worker: tuple[Worker, socket.socket]
) -> None:
    handle, _ = worker  # the outbound worker of site B
    ask(worker, Configure(role="outbound", config=EngineConfig()))
    # B's inbound worker got the view first and let site A open a connection
    inbound = PolicyHook(site_view(of=B), pipes[1])
    inbound.wall_offset = time.time() - T0
    assert inbound.check(tcp4(A_HOST, B_HOST, 40000, 5201, flags=TCP_SYN), IN, T0) is ALLOW
    handle.receive_flows(time.monotonic())  # no filter here yet: kept
    assert handle.policy is None
    ask(worker, SetPolicy(data=site_view(of=B).SerializeToString()), 2)
    assert handle.policy is not None and handle.outbound is not None
    assert handle.policy.filter.counters().flows == 1
    synack = tcp4(B_HOST, A_HOST, 5201, 40000, flags=TCP_SYN | TCP_ACK)
    assert handle.outbound.filter is not None
    assert handle.outbound.filter.check(synack, OUT, time.monotonic()) is ALLOW
    # B itself may not open connections towards A
    syn = tcp4(B_HOST, A_HOST, 40001, 5201, flags=TCP_SYN)
    assert handle.outbound.filter.check(syn, OUT, time.monotonic()).reason == "no-rule"

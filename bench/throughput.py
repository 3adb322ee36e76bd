"""LAN-to-LAN throughput and RTT: Trellis<->Trellis against strongSwan<->strongSwan.

    python -m bench.throughput [--seconds 10] [--rounds 1] [--keying ike|manual] [--profile DIR] [--json]

Both tunnels join the same standard lab topology (two sites on a 1500-byte underlay, one LAN
host each; trellis.lab.topology), are measured with the same iperf3 TCP test (10 s, host of
site 1 -> host of site 2) and ping, in the same run. strongSwan runs with kernel-libipsec (ESP in
UDP, aes256gcm16). Trellis runs as it is deployed: ``trellis-agent run --config`` in each site,
the tunnel negotiated by IKE (aes256gcm16-prfsha256-x25519, ESP aes256gcm16) and carried by the
userspace data plane; ``--keying manual`` runs the data plane alone with manually keyed SAs
instead. The ratio is Trellis / strongSwan throughput.

With ``--rounds N`` the two alternate N times and the medians are compared: the machine is
shared, and alternating spreads other load over both. ``--profile DIR`` records py-spy
profiles of the four Trellis worker processes during the first Trellis round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.throughput_ike import start_ike_tunnel
from bench.throughput_profile import CpuMeter, CpuReport, Profiler, children
from bench.throughput_trellis import start_trellis_tunnel
from trellis.lab.anchor import AnchorMeasurement, measure_lan_to_lan, strongswan_pair
from trellis.lab.topology import standard_lab

UNDERLAY_MTU = 1500
TARGET_RATIO = 1.0
GOAL_RATIO = 2.0


@dataclass(frozen=True, slots=True)
class Round:
    name: str
    measurement: AnchorMeasurement
    cpu: CpuReport | None = None
    profile: list[str] | None = None

    @property
    def mbit(self) -> float:
        return self.measurement.throughput.mbit_per_s


def measure_strongswan(seconds: float, ping_count: int) -> Round:
    with strongswan_pair() as pair:
        return Round("strongswan", measure_lan_to_lan(pair.topology, seconds=seconds, ping_count=ping_count))


def measure_trellis(
    seconds: float, ping_count: int, profile: Path | None, options: dict[str, Any], keying: str
) -> Round:
    with standard_lab(sites=2, underlay_mtu=UNDERLAY_MTU) as topology:
        tunnel = (
            start_ike_tunnel(topology, **options)
            if keying == "ike"
            else start_trellis_tunnel(topology, **options)
        )
        workers = {}
        for side in (tunnel.a, tunnel.b):
            if side.process is None:
                raise RuntimeError(f"Trellis in {side.site.name} is not running")
            for index, pid in enumerate(children(side.process.pid)):
                workers[f"{side.site.name}-worker{index}"] = pid
        meter = CpuMeter(workers)
        profiler = Profiler(workers, profile, seconds) if profile else None
        meter.start()
        measurement = measure_lan_to_lan(topology, seconds=seconds, ping_count=ping_count)
        cpu = meter.stop()
        status = tunnel.a.fresh_status(), tunnel.b.fresh_status()
        if any(s["failed"] for s in status):
            raise RuntimeError(f"Trellis data plane failed: {[s['failed'] for s in status]}")
        return Round("trellis", measurement, cpu, profiler.summary() if profiler else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ping-count", type=int, default=20)
    parser.add_argument("--profile", type=Path, help="py-spy profiles of the Trellis workers into DIR")
    parser.add_argument("--tso", action="store_true", help="Trellis with TSO on the TUN device")
    parser.add_argument("--no-gro", action="store_true", help="Trellis without GRO on the TUN device")
    parser.add_argument(
        "--keying",
        choices=("ike", "manual"),
        default="ike",
        help="Trellis tunnel negotiated by IKE (trellis-agent run --config, the default) or manually keyed",
    )
    parser.add_argument(
        "--policy",
        action="store_true",
        help="with IKE keying: each agent enforces an allow-all policy view (the packet filter's cost)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.policy and args.keying != "ike":
        parser.error("--policy needs --keying ike")
    options: dict[str, Any] = {"tso": args.tso, "gro": not args.no_gro}
    if args.policy:
        options["policy"] = True
    rounds: list[Round] = []
    for i in range(args.rounds):
        rounds.append(measure_strongswan(args.seconds, args.ping_count))
        rounds.append(
            measure_trellis(
                args.seconds, args.ping_count, args.profile if i == 0 else None, options, args.keying
            )
        )
        print(
            f"round {i + 1}: strongswan {rounds[-2].mbit:.0f} Mbit/s, trellis {rounds[-1].mbit:.0f} Mbit/s",
            file=sys.stderr,
        )
    strongswan = [r for r in rounds if r.name == "strongswan"]
    trellis = [r for r in rounds if r.name == "trellis"]
    ss_mbit = statistics.median(r.mbit for r in strongswan)
    tr_mbit = statistics.median(r.mbit for r in trellis)
    ratio = tr_mbit / ss_mbit if ss_mbit else float("inf")
    result = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "underlay_mtu": UNDERLAY_MTU,
        "strongswan_mbit_per_s": round(ss_mbit, 1),
        "trellis_mbit_per_s": round(tr_mbit, 1),
        "ratio": round(ratio, 2),
        "strongswan_rtt_ms": statistics.median(r.measurement.rtt.rtt_avg_ms or 0.0 for r in strongswan),
        "trellis_rtt_ms": statistics.median(r.measurement.rtt.rtt_avg_ms or 0.0 for r in trellis),
        "strongswan_retransmits": [r.measurement.throughput.retransmits for r in strongswan],
        "trellis_retransmits": [r.measurement.throughput.retransmits for r in trellis],
        "trellis_options": options,
        "trellis_keying": args.keying,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"LAN-to-LAN TCP, {args.seconds:.0f} s iperf3, {UNDERLAY_MTU}-byte underlay, {args.rounds} round(s)"
    )
    keyed = "IKE" if args.keying == "ike" else "manual keys"
    if args.policy:
        keyed += ", allow-all policy filter"
    for label, mbit, rtt in (
        ("strongSwan (kernel-libipsec)", ss_mbit, result["strongswan_rtt_ms"]),
        (f"Trellis (userspace, {keyed})", tr_mbit, result["trellis_rtt_ms"]),
    ):
        print(f"  {label + ':':<34}{mbit:8.1f} Mbit/s   RTT {rtt:.3f} ms")
    verdict = "goal met" if ratio >= GOAL_RATIO else "target met" if ratio >= TARGET_RATIO else "below target"
    print(f"  ratio Trellis/strongSwan: {ratio:.2f}  ({verdict}; target {TARGET_RATIO}, goal {GOAL_RATIO})")
    for r in trellis[:1]:
        if r.cpu:
            print("  Trellis CPU during the test:")
            print("\n".join(r.cpu.lines()))
        if r.profile:
            print("  Trellis worker profiles:")
            print("\n".join(r.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Policy compile time for 1,000 sites and 500 rules.

Prints:
  1. all views at once (PolicyCompiler), against the naive evaluation: check() of every ordered
     site pair (one question per pair: may it open tcp/443?), measured in the same run on a
     random sample of pairs and scaled to all of them (--naive-all checks every pair: minutes);
  2. one view after a one-rule change (PolicyCompiler.update_policy + view), against a full
     recompile of every view with the changed policy; for a broad rule (branches to data
     centres, about 17,000 site pairs) and for a one-pair rule;
  3. for reference: one view cold (compile_view) and the conversion of all views to protobuf.

Usage: python -m bench.policy [--sites 1000] [--rules 500] [--seed 1] [--naive-sample N | --naive-all]
                              [--agents 500]

  4. apply-to-all-agents latency: AGENTS agents hold Sync streams with a controller process; a
     policy that changes every view is applied and each agent's delivery is timed, against a
     revocation's fan-out on the same streams (a push without policy work) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.controller import (
    ControllerProcess,
    StreamFleet,
    add_and_enroll,
    apply_policy,
    fanout,
    percentile,
)
from trellis.controller.policy import (
    Inventory,
    Policy,
    PolicyCompiler,
    Site,
    check,
    compile_all,
    compile_view,
    parse_policy,
)
from trellis.controller.policy.selection import SiteIndex
from trellis.controller.policy.wire import views_to_proto
from trellis.v1 import common_pb2

NOW = dt.datetime(2025, 6, 4, 10, 30, tzinfo=dt.UTC)  # a Wednesday morning
DOMAIN = "bench.example"
ROLES = (("branch", 0.85), ("cloud", 0.10), ("dc", 0.02), ("hub", 0.03))
REGIONS = ("eu", "us", "apac", "latam", "africa")
SERVICES = ("tcp/443", "tcp/22", "udp/53", "icmp", "tcp/8000-8100", "udp/5000-5010", "tcp/5432", "any")

_T = TypeVar("_T")


@dataclass(frozen=True)
class World:
    inventory: Inventory
    text: str
    policy: Policy


def make_inventory(sites: int, rng: random.Random) -> Inventory:
    out: list[Site] = []
    for i in range(sites):
        role = rng.choices([r for r, _ in ROLES], weights=[w for _, w in ROLES])[0]
        subnets = [f"10.{i // 250}.{i % 250}.0/24"]
        if rng.random() < 0.4:
            subnets.append(f"fd00:{i:x}::/64")
        name = f"{role}-{i:04d}"
        out.append(
            Site.build(
                name=name,
                identity=f"spiffe://{DOMAIN}/site/{name}",
                labels={"role": role, "region": rng.choice(REGIONS), "tier": str(rng.randint(1, 3))},
                subnets=subnets,
            )
        )
    return Inventory(out)


def make_rules(count: int, inventory: Inventory, rng: random.Random) -> list[str]:
    names = [s.name for s in inventory.sites]
    by_role: dict[str, list[str]] = {}
    for site in inventory.sites:
        by_role.setdefault(site.labels["role"], []).append(site.name)
    rules: list[str] = [
        '  - {name: hubs-ping, from: {role: hub}, to: "*", ports: icmp}\n',
        "  - {name: branches-to-dc, from: {role: branch}, to: {role: dc}, ports: [tcp/443, udp/53]}\n",
        "  - {name: cloud-to-dc, from: {role: cloud}, to: {role: dc}}\n",
    ]
    for i in range(count - len(rules)):
        kind = rng.random()
        services = ", ".join(rng.sample(SERVICES, rng.randint(1, 2)))
        if kind < 0.10:  # regional label rules
            region = rng.choice(REGIONS)
            rules.append(
                f"  - {{name: regional-{i}, from: {{role: branch, region: {region}}}, "
                f'to: "role in [cloud, hub]", ports: [{services}]}}\n'
            )
        elif kind < 0.16:  # just-in-time access, some already open, some later, some expired
            start = NOW + dt.timedelta(hours=rng.randint(-6, 6))
            end = start + dt.timedelta(hours=rng.randint(1, 8))
            rules.append(
                f"  - name: jit-{i}\n    from: {rng.choice(names)}\n    to: {rng.choice(by_role['dc'])}\n"
                f"    ports: [{services}]\n    not_before: {_stamp(start)}\n    not_after: {_stamp(end)}\n"
            )
        elif kind < 0.20:  # office hours
            rules.append(
                f"  - name: office-{i}\n    from: {rng.choice(by_role['dc'])}\n"
                f"    to: {{tier: '{rng.randint(1, 3)}'}}\n"
                "    ports: tcp/22\n    schedule: mon-fri 08:00-18:00\n"
            )
        elif kind < 0.60:  # one site to a role
            role = rng.choice(["dc", "cloud"])
            rules.append(
                f"  - {{name: site-{i}, from: {rng.choice(names)}, to: {{role: {role}}}, "
                f"ports: [{services}]}}\n"
            )
        else:  # one site to one site, sometimes narrowed to a part of it
            target = rng.randrange(len(inventory.sites))
            narrowed = (
                f", to_prefixes: [10.{target // 250}.{target % 250}.0/25]" if rng.random() < 0.3 else ""
            )
            rules.append(
                f"  - {{name: pair-{i}, from: {rng.choice(names)}, to: {inventory.sites[target].name}, "
                f"ports: [{services}]{narrowed}}}\n"
            )
    return rules


def make_world(sites: int = 1000, rules: int = 500, seed: int = 1) -> World:
    rng = random.Random(seed)
    inventory = make_inventory(sites, rng)
    text = "apiVersion: trellis/v1\nkind: Policy\nrules:\n" + "".join(make_rules(rules, inventory, rng))
    return World(inventory=inventory, text=text, policy=parse_policy(text))


def _stamp(at: dt.datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def timed(fn: Callable[[], _T], repeat: int = 1) -> tuple[float, _T]:
    """Median wall time of ``repeat`` runs (seconds) and the last result."""
    times: list[float] = []
    result: _T | None = None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return statistics.median(times), result


def naive_all_pairs(world: World, sample: int | None, rng: random.Random) -> tuple[float, int]:
    """check() of every ordered pair (one question each: may it open tcp/443?). Returns the time
    for all pairs (extrapolated from ``sample`` pairs if given) and how many were measured."""
    sites = world.inventory.sites
    pairs = [(a.name, b.name) for a in sites for b in sites if a is not b]
    measured = pairs if sample is None else rng.sample(pairs, min(sample, len(pairs)))
    index = SiteIndex(world.inventory)

    def run() -> int:
        allowed = 0
        for source, destination in measured:
            decision = check(
                world.policy,
                world.inventory,
                source=source,
                destination=destination,
                protocol="tcp",
                port=443,
                at=NOW,
                index=index,
            )
            allowed += decision.allowed
        return allowed

    seconds, _ = timed(run)
    return seconds * len(pairs) / len(measured), len(measured)


def broad_rule_changed(world: World) -> Policy:
    """The policy with the branches-to-dc rule (every branch to every data centre) widened."""
    old = "name: branches-to-dc, from: {role: branch}, to: {role: dc}, ports: [tcp/443, udp/53]}"
    assert old in world.text
    return parse_policy(world.text.replace(old, old.replace("udp/53]", "udp/53, tcp/8443]")))


def narrow_rule_changed(world: World) -> Policy:
    """The policy with one site-to-site rule's ports changed (the first between distinct sites)."""
    rule = next(
        r
        for r in world.policy.rules
        if r.name.startswith("pair-") and r.to_prefixes is None and str(r.source) != str(r.destination)
    )
    start = world.text.index(f"{{name: {rule.name},")
    end = world.text.index("\n", start)
    line = world.text[start:end]
    changed = line.replace("ports: [", "ports: [tcp/9999, ", 1)
    assert changed != line
    return parse_policy(world.text[:start] + changed + world.text[end:])


def incremental(world: World, changed: Policy, repeat: int = 3) -> tuple[float, int]:
    """Median time of update_policy + one affected view on a warm compiler, and views changed."""
    times: list[float] = []
    affected: frozenset[str] = frozenset()
    for _ in range(repeat):
        compiler = _compiled(world.policy, world.inventory)
        gc.collect()
        start = time.perf_counter()
        affected = compiler.update_policy(changed)
        compiler.view(min(affected))
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(affected)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--naive-sample", type=int, default=20_000, help="pairs checked for the anchor")
    parser.add_argument("--naive-all", action="store_true", help="check every pair for the anchor")
    parser.add_argument(
        "--agents", type=int, default=500, help="connected agents for the apply latency (0: skip it)"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    world = make_world(args.sites, args.rules, args.seed)
    size = f"{len(world.inventory)} sites, {len(world.policy.rules)} rules"
    print(f"world: {size}, {len(world.text)} bytes of YAML")

    parse_s, _ = timed(lambda: parse_policy(world.text), repeat=3)
    print(f"parse + validate:                    {parse_s * 1000:9.1f} ms")

    full_s, compiler = timed(lambda: _compiled(world.policy, world.inventory), repeat=3)
    views = compiler.views()
    peers = sum(len(v.peers) for v in views.values())
    rules = sum(len(p.outbound) for v in views.values() for p in v.peers)
    exact = sum(p.selectors_exact for v in views.values() for p in v.peers)
    print(f"all views (PolicyCompiler):          {full_s * 1000:9.1f} ms")
    print(f"  {peers} peer entries ({exact} with exact selectors), {rules} filter rules each way")

    naive_s, measured = naive_all_pairs(world, None if args.naive_all else args.naive_sample, rng)
    how = "every pair" if args.naive_all else f"{measured} pairs measured, scaled to all"
    print(f"anchor: check() of every pair:       {naive_s * 1000:9.1f} ms   ({how})")
    print(f"  ratio naive / all views:           {naive_s / full_s:9.1f} x")

    for label, changed in (("broad", broad_rule_changed(world)), ("one-pair", narrow_rule_changed(world))):
        incremental_s, affected = incremental(world, changed)

        def recompile(policy: Policy = changed) -> object:
            return compile_all(policy, world.inventory, NOW)

        recompile_s, _ = timed(recompile, repeat=3)
        title = f"{label} rule changed, incremental:"
        print(f"{title:37}{incremental_s * 1000:9.1f} ms   ({affected} views changed)")
        print(f"  anchor: full recompile:            {recompile_s * 1000:9.1f} ms")
        print(f"  ratio recompile / incremental:     {recompile_s / incremental_s:9.1f} x")

    identity = next(iter(views))
    cold_s, _ = timed(lambda: compile_view(world.policy, world.inventory, identity, NOW), repeat=5)
    print(f"one view cold (compile_view):        {cold_s * 1000:9.1f} ms")
    proto_s, _ = timed(lambda: views_to_proto(views, policy_version=1), repeat=3)
    print(f"all views to protobuf:               {proto_s * 1000:9.1f} ms")
    if args.agents:
        asyncio.run(apply_latency(args.agents))


def _compiled(policy: Policy, inventory: Inventory) -> PolicyCompiler:
    compiler = PolicyCompiler(policy, inventory, NOW)
    compiler.views()
    return compiler


# -- apply-to-all-agents latency over real Sync streams ------------------------------------------

BRANCHES_TO_DCS = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - name: branches-to-dcs
    from: {role: branch}
    to: {role: dc}
    ports: PORTS
"""


async def apply_latency(agents: int) -> None:
    """Apply a policy that changes every view while ``agents`` streams are connected; time, per
    agent, from the ApplyPolicy call to the map with the new version. Anchor: a revocation's
    fan-out on the same streams (a push with no policy work), measured in the same run."""
    directory = Path(tempfile.mkdtemp(prefix="trellis-bench-policy-"))
    controller = ControllerProcess(directory)
    try:
        names = [f"site-{i:04d}" for i in range(agents)]

        def role(i: int) -> dict[str, str]:
            return {"role": "dc" if i % 10 == 0 else "branch"}

        identities = await add_and_enroll(controller, directory, names, role)
        await apply_policy(controller, BRANCHES_TO_DCS.replace("PORTS", "[tcp/443]"))
        fleet = StreamFleet(controller, identities)
        await fleet.open()
        await asyncio.sleep(1.0)
        anchor = await fanout(fleet, controller, names, names[1:2])  # a branch; every other agent hears
        # Every view changes: each branch-to-dc pair gains a port.
        everywhere = BRANCHES_TO_DCS.replace("PORTS", "[tcp/443, tcp/8443]")
        # Two sites' views change: a rule between one branch and one data centre.
        one_pair = everywhere + "  - {name: one-pair, from: site-0002, to: site-0000, ports: [tcp/22]}\n"
        measured = []
        for version, text, listeners in ((2, everywhere, agents - 1), (3, one_pair, 2)):
            await asyncio.sleep(0.5)

            async def apply(text: str = text) -> int:
                return await apply_policy(controller, text)

            def arrived(network_map: common_pb2.NetworkMap, version: int = version) -> bool:
                return network_map.policy.policy_version == version

            measured.append(await fleet.measure(apply, arrived, listeners=listeners))
        await fleet.close()
        anchor_p50, anchor_p99 = percentile(anchor, 0.5), percentile(anchor, 0.99)
        print(
            f"anchor, revocation fan-out to {len(anchor)} agents: p50 {anchor_p50 * 1000:.1f} ms, "
            f"p99 {anchor_p99 * 1000:.1f} ms"
        )
        for label, latencies in (
            ("every view changes", measured[0]),
            ("two sites' views", measured[1]),
        ):
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            print(f"apply, {label} ({len(latencies)} views pushed to {agents} connected agents):")
            print(f"  latency p50: {p50 * 1000:8.1f} ms   p99: {p99 * 1000:8.1f} ms")
            print(f"  ratio apply / revocation (p50): {p50 / anchor_p50:8.2f} x")
    finally:
        controller.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

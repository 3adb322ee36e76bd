"""``trellis-lab up``: the whole story on this machine, in network namespaces.

A controller on the embedded defaults (SQLite), three sites (hq, branch-a, branch-b) with a LAN
host each, a policy (branches may reach hq on tcp/443 and ping it; hq may ping the branches;
branches may not reach each other), agents that enroll with join tokens and build IKEv2/ESP
tunnels through the userspace data plane; then traffic that the policy allows and traffic it
does not, and a revocation that takes a site off the mesh.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from trellis.lab.mesh import MeshLab
from trellis.lab.netns import Lab

SITES = {"hq": {"role": "dc"}, "branch-a": {"role": "branch"}, "branch-b": {"role": "branch"}}
POLICY = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - name: branches-to-dc
    from: {role: branch}
    to: {role: dc}
    ports: [tcp/443, icmp]
  - name: dc-pings-branches
    from: {role: dc}
    to: {role: branch}
    ports: [icmp]
tests:
  - {from: branch-a, to: hq, proto: tcp, port: 443, expect: allow}
  - {from: branch-a, to: branch-b, proto: icmp, expect: deny}
  - {from: hq, to: branch-a, proto: tcp, port: 22, expect: deny}
"""
TUNNELS = {"hq": {"branch-a", "branch-b"}, "branch-a": {"hq"}, "branch-b": {"hq"}}
PINGS = (("branch-a", "hq", True), ("hq", "branch-b", True), ("branch-a", "branch-b", False))


@dataclass(frozen=True, slots=True)
class Check:
    what: str
    expected: bool
    observed: bool

    @property
    def ok(self) -> bool:
        return self.expected == self.observed

    def __str__(self) -> str:
        verdict = "ok " if self.ok else "FAIL"
        observed, expected = ("yes" if x else "no" for x in (self.observed, self.expected))
        return f"  [{verdict}] {self.what}: {observed} (expected {expected})"


def say(text: str) -> None:
    print(text, flush=True)


def run_up(*, keep_running: bool) -> int:
    """The whole scenario; 0 if every check came out as expected."""
    checks: list[Check] = []
    with Lab() as lab:
        mesh = MeshLab.build(lab, list(SITES))
        say(f"lab {lab.prefix}: controller at {mesh.controller_address}, files in {mesh.directory}")
        mesh.start_controller()
        tokens = {name: mesh.add_site(name, labels) for name, labels in SITES.items()}
        say("$ trellisctl policy apply -f policy.yaml")
        say(mesh.apply_policy(POLICY))
        for name, token in tokens.items():
            mesh.start_agent(name, token)
        mesh.wait_for_tunnels(TUNNELS)
        say("tunnels up; what the hq agent says of itself:")
        say(mesh.sites["hq"].status_text())
        say(mesh.trellisctl("site", "list").stdout)
        for source, destination, expected in PINGS:
            checks.append(Check(f"ping {source} -> {destination}", expected, mesh.ping(source, destination)))
        say("\n".join(str(c) for c in checks))

        say("$ trellisctl site revoke branch-b")
        mesh.trellisctl("site", "revoke", "branch-b", "--reason", "lab demo")
        mesh.wait_for_tunnels({"hq": {"branch-a"}, "branch-a": {"hq"}})
        after = [
            Check("ping hq -> branch-b after the revocation", False, mesh.ping("hq", "branch-b", count=1)),
            Check("ping branch-a -> hq after the revocation", True, mesh.ping("branch-a", "hq")),
        ]
        say("\n".join(str(c) for c in after))
        checks += after
        if keep_running:
            say(
                f"\nthe lab keeps running; namespaces start with {lab.prefix}; e.g.\n"
                f"  ip netns exec {mesh.sites['branch-a'].site.hosts[0].netns.name} ping 10.1.0.10\n"
                "press Ctrl-C to tear it down"
            )
            try:
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
            finally:
                mesh.stop()
        else:
            mesh.stop()
    failed = [c for c in checks if not c.ok]
    say("all checks passed" if not failed else f"{len(failed)} checks failed")
    return 0 if not failed else 1

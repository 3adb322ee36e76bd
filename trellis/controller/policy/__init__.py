"""The zero-trust policy engine: pure functions from YAML to each site's view. No I/O.

Default deny: two sites exchange no packet unless a rule allows it. Rules only allow; their
order only decides which rule is reported as the one that allowed a flow.

Grammar (``apiVersion: trellis/v1``, ``kind: Policy``)::

    apiVersion: trellis/v1
    kind: Policy
    metadata:                        # optional
      name: corp-mesh
      description: free text
    rules:                           # required; "rules: []" denies everything
      - name: branches-to-dc         # optional (default rule-N); lowercase, digits, . _ -; unique
        description: free text       # optional
        from: {role: branch}         # selector: who may open flows (required)
        to: "role in [dc, cloud]"    # selector: towards whom (required)
        ports: [tcp/443, udp/5000-5010, icmp]   # optional, default any; a list or one value
        to_prefixes: [10.10.0.0/24]  # optional: only these destinations (within the 'to' subnets)
        not_before: 2025-06-01T08:00:00Z        # optional, inclusive, timezone required
        not_after: 2025-06-01T18:00:00Z         # optional, exclusive (just-in-time access)
        schedule: mon-fri 08:00-18:00           # optional, weekly, UTC; see timing.parse_schedule
    tests:                           # optional; a policy whose tests fail is refused
      - {from: branch-a, to: dc-1, proto: tcp, port: 443, expect: allow}
      - {from: dc-1, to: branch-a, proto: icmp, expect: deny, at: 2025-06-02T09:00:00Z}
      - {from: branch-a, to: dc-1, proto: udp, port: 53, dst: 10.10.0.53, expect: deny}

Selectors: ``"*"`` (every site; quoted, since a bare * is YAML syntax), a site name
(``branch-a``), labels (``{region: eu, role: branch}``: all must match; ``{role: [branch, dc]}``
or the string ``"role in [branch, dc]"``: any of the values), or a list of those (any of them).
Ports: ``any``, ``icmp`` (ICMP and ICMPv6), ``tcp``, ``udp``, ``tcp/443``, ``udp/5000-5010``
(destination ports). Direction: ``from`` opens flows; replies are allowed by state.
Test fields: from, to (site name or identity), proto (tcp, udp, icmp, or 0-255), port (tcp/udp),
expect (allow | deny), and optional at, src, dst (addresses), description.

Pipeline: ``parse_policy`` (or ``review_policy`` for apply) -> ``compile_view`` /
``PolicyCompiler`` -> ``wire.view_to_proto``; ``check`` answers one flow.
"""

from trellis.controller.policy.compiler import PolicyCompiler, compile_all, compile_view
from trellis.controller.policy.decide import Decision, PolicyTestResult, check, run_policy_tests
from trellis.controller.policy.diff import AccessChange, ChangeKind, changed_identities, diff_views
from trellis.controller.policy.errors import Issue, PolicyInvalid, UnknownSite
from trellis.controller.policy.model import Inventory, Mark, Policy, Rule, Site
from trellis.controller.policy.parser import parse_policy, validate_policy
from trellis.controller.policy.review import Review, lint, review_policy
from trellis.controller.policy.view import FlowRule, PeerView, TrafficSelector, View

__all__ = [
    "AccessChange",
    "ChangeKind",
    "Decision",
    "FlowRule",
    "Inventory",
    "Issue",
    "Mark",
    "PeerView",
    "Policy",
    "PolicyCompiler",
    "PolicyInvalid",
    "PolicyTestResult",
    "Review",
    "Rule",
    "Site",
    "TrafficSelector",
    "UnknownSite",
    "View",
    "changed_identities",
    "check",
    "compile_all",
    "compile_view",
    "diff_views",
    "lint",
    "parse_policy",
    "review_policy",
    "run_policy_tests",
    "validate_policy",
]

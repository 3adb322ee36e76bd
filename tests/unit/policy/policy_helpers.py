"""Helpers for the policy tests: an inventory of two branches, a data centre and a cloud VPC."""

from __future__ import annotations

import datetime as dt

from trellis.controller.policy import Inventory, Site

DOMAIN = "example.org"


def uri(name: str) -> str:
    return f"spiffe://{DOMAIN}/site/{name}"


def make_inventory() -> Inventory:
    return Inventory(
        [
            Site.build(
                name="branch-a",
                identity=uri("branch-a"),
                labels={"role": "branch", "region": "eu"},
                subnets=["10.1.0.0/24", "fd00:1::/64"],
            ),
            Site.build(
                name="branch-b",
                identity=uri("branch-b"),
                labels={"role": "branch", "region": "us"},
                subnets=["10.2.0.0/24"],
            ),
            Site.build(
                name="dc-1",
                identity=uri("dc-1"),
                labels={"role": "dc", "region": "eu"},
                subnets=["10.10.0.0/16", "fd00:10::/48"],
            ),
            Site.build(
                name="vpc-1",
                identity=uri("vpc-1"),
                labels={"role": "cloud", "region": "us"},
                subnets=["fd00:20::/48"],
            ),
        ]
    )


# Monday 2 June 2025, 09:00 UTC.
MONDAY_9 = dt.datetime(2025, 6, 2, 9, 0, tzinfo=dt.UTC)


def policy_text(rules: str, tests: str = "") -> str:
    """A document with the given rules block (and tests block), indented as in the YAML."""
    text = "apiVersion: trellis/v1\nkind: Policy\nrules:\n" + rules
    if tests:
        text += "tests:\n" + tests
    return text

"""Root fixtures for tests in network namespaces (logic lives in trellis.lab)."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from trellis.lab.netns import Lab
from trellis.lab.topology import StandardTopology, build_standard_topology


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember each phase's outcome so that the lab fixture keeps its logs when the test failed.
    report = yield
    item.stash.setdefault(_FAILED, False)
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh lab (namespaces with a per-run prefix); deleted after the test, logs kept on failure."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    lab = Lab().__enter__()
    try:
        yield lab
    finally:
        lab.close(failed=request.node.stash.get(_FAILED, False))


@pytest.fixture
def topology(lab: Lab) -> StandardTopology:
    """The standard topology with two sites, one LAN host each."""
    return build_standard_topology(lab, sites=2)

"""The store against real SQLite and PostgreSQL: migrations, sites, tokens, certificates, audit."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import create_engine, inspect, text

from trellis.controller.store import (
    AuditEvent,
    EndpointRecord,
    PolicyConflict,
    SiteExists,
    SiteNotFound,
    SiteRevoked,
    Store,
    TokenRefused,
)
from trellis.controller.store.migrations import HEAD, SchemaTooNew, migrate
from trellis.controller.store.schema import metadata

T0 = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
ISSUED = AuditEvent(actor="test", action="enroll", target="a", outcome="ok")


def clock() -> dt.datetime:
    return T0


@pytest.fixture
def store(store_url: str) -> Store:
    return Store.open(store_url, now=clock)


def test_migrations_create_the_schema_queries_expect(store_url: str) -> None:
    engine = create_engine(store_url)
    assert migrate(engine, now=clock) == list(range(1, HEAD + 1))
    assert migrate(engine, now=clock) == []  # idempotent
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        reflected = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(reflected) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert reflected[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
    engine.dispose()


def test_a_database_from_a_newer_trellis_is_refused(store_url: str) -> None:
    engine = create_engine(store_url)
    migrate(engine, now=clock)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (:v, 'future', :t)"
            ),
            {"v": HEAD + 1, "t": T0.replace(tzinfo=None)},
        )
    with pytest.raises(SchemaTooNew, match="upgrade Trellis"):
        migrate(engine, now=clock)
    engine.dispose()


def test_sites_round_trip_and_names_are_unique(store: Store) -> None:
    site = store.add_site("branch-a", ["10.1.0.0/24"], {"region": "eu", "role": "branch"}, now=T0)
    assert site.labels == (("region", "eu"), ("role", "branch"))
    assert site.created_at == T0
    assert not site.revoked
    with pytest.raises(SiteExists):
        store.add_site("branch-a", ["10.2.0.0/24"], {}, now=T0)
    store.add_site("dc-1", ["10.9.0.0/16", "fd00:9::/64"], {}, now=T0)
    assert [s.name for s in store.list_sites()] == ["branch-a", "dc-1"]
    assert store.get_site("dc-1") is not None
    assert store.get_site("nope") is None


def test_a_token_is_used_once(store: Store) -> None:
    store.add_site("a", ["10.1.0.0/24"], {}, now=T0)
    store.add_token("a", b"h" * 32, created_at=T0, expires_at=T0 + dt.timedelta(hours=1), created_by="admin")
    assert store.consume_token(b"h" * 32, now=T0 + dt.timedelta(minutes=1)) == "a"
    with pytest.raises(TokenRefused, match="already used"):
        store.consume_token(b"h" * 32, now=T0 + dt.timedelta(minutes=2))
    with pytest.raises(TokenRefused, match="unknown"):
        store.consume_token(b"x" * 32, now=T0)


def test_an_expired_token_is_refused(store: Store) -> None:
    store.add_site("a", ["10.1.0.0/24"], {}, now=T0)
    store.add_token("a", b"h" * 32, created_at=T0, expires_at=T0 + dt.timedelta(hours=1), created_by="admin")
    with pytest.raises(TokenRefused, match="expired") as refused:
        store.consume_token(b"h" * 32, now=T0 + dt.timedelta(hours=1))
    assert refused.value.site == "a"


def test_racing_enrollments_claim_a_token_exactly_once(store: Store) -> None:
    store.add_site("a", ["10.1.0.0/24"], {}, now=T0)
    store.add_token("a", b"h" * 32, created_at=T0, expires_at=T0 + dt.timedelta(hours=1), created_by="admin")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        try:
            outcomes.append(store.consume_token(b"h" * 32, now=T0))
        except TokenRefused as e:
            outcomes.append(f"refused: {e.reason}")

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("a") == 1, outcomes


def test_revocation_marks_every_certificate_and_blocks_tokens(store: Store) -> None:
    store.add_site("a", ["10.1.0.0/24"], {}, now=T0)
    store.add_site("b", ["10.2.0.0/24"], {}, now=T0)
    for serial, not_after in (("aa01", T0 + dt.timedelta(hours=1)), ("aa02", T0 - dt.timedelta(minutes=1))):
        store.add_certificate(
            "a", serial, issued_at=T0, not_before=T0, not_after=not_after, reason="enroll", audit=ISSUED
        )
    store.add_certificate(
        "b",
        "bb01",
        issued_at=T0,
        not_before=T0,
        not_after=T0 + dt.timedelta(hours=1),
        reason="enroll",
        audit=ISSUED,
    )
    store.add_token("a", b"t" * 32, created_at=T0, expires_at=T0 + dt.timedelta(hours=1), created_by="admin")
    before = store.generation()

    site, serials = store.revoke_site("a", "laptop stolen", now=T0)
    assert site.revoked and site.revoke_reason == "laptop stolen"
    assert serials == ["aa01", "aa02"]
    assert store.generation() > before
    cert = store.get_certificate("aa01")
    assert cert is not None and cert.revoked
    cert_b = store.get_certificate("bb01")
    assert cert_b is not None and not cert_b.revoked
    # Expired certificates need not be listed: they fail validation anyway.
    assert store.map_inputs(now=T0).revoked_serials == ("aa01",)
    with pytest.raises(TokenRefused, match="revoked"):
        store.consume_token(b"t" * 32, now=T0)
    with pytest.raises(SiteRevoked):
        store.add_token("a", b"u" * 32, created_at=T0, expires_at=T0 + dt.timedelta(hours=1), created_by="x")
    with pytest.raises(SiteRevoked, match="already revoked"):
        store.revoke_site("a", "again", now=T0)
    with pytest.raises(SiteNotFound):
        store.revoke_site("nope", "", now=T0)


def test_reports_bump_the_generation_only_when_endpoints_change(store: Store) -> None:
    store.add_site("a", ["10.1.0.0/24"], {}, now=T0)
    endpoints = [EndpointRecord(address="192.0.2.1", port=500)]
    gen = store.generation()
    assert store.record_report("a", endpoints=endpoints, agent_version="0.1.0", applied_map_version=3, now=T0)
    assert store.generation() == gen + 1
    assert not store.record_report(
        "a", endpoints=endpoints, agent_version="0.1.0", applied_map_version=4, now=T0
    )
    assert store.generation() == gen + 1
    site = store.get_site("a")
    assert site is not None
    assert site.endpoints == tuple(endpoints) and site.applied_map_version == 4 and site.last_seen == T0


def test_audit_pages_newest_first(store: Store) -> None:
    for i in range(5):
        event = AuditEvent(actor="admin", action="site.add", target=f"s{i}", outcome="ok")
        store.append_audit(event, at=T0 + dt.timedelta(seconds=i))
    page = store.list_audit(limit=2)
    assert [e.target for e in page] == ["s4", "s3"]
    assert [e.target for e in store.list_audit(limit=10, before_id=page[-1].id)] == ["s2", "s1", "s0"]
    assert page[0].at == T0 + dt.timedelta(seconds=4)


def test_nothing_is_lost_across_reopening(store_url: str) -> None:
    first = Store.open(store_url, now=clock)
    first.add_site("a", ["10.1.0.0/24"], {"k": "v"}, now=T0)
    first.append_audit(AuditEvent(actor="admin", action="site.add", target="a", outcome="ok"), at=T0)
    first.close()
    second = Store.open(store_url, now=clock)
    site = second.get_site("a")
    assert site is not None and site.label_map == {"k": "v"}
    assert second.count_audit() == 1
    second.close()


def test_policy_versions_grow_and_guard_against_concurrent_applies(store: Store) -> None:
    event = AuditEvent(actor="admin", action="policy.apply", target="", outcome="ok")
    assert store.get_policy() is None
    gen = store.generation()
    first = store.add_policy(
        yaml="a",
        sha256="00",
        applied_by="admin",
        comment="",
        rolled_back_from=None,
        expected_version=0,
        now=T0,
        audit=event,
    )
    second = store.add_policy(
        yaml="b",
        sha256="11",
        applied_by="admin",
        comment="why",
        rolled_back_from=None,
        expected_version=None,
        now=T0,
        audit=event,
    )
    assert (first.version, second.version) == (1, 2)
    assert store.generation() == gen + 2
    with pytest.raises(PolicyConflict, match="running policy is version 2, not 1"):
        store.add_policy(
            yaml="c",
            sha256="22",
            applied_by="admin",
            comment="",
            rolled_back_from=None,
            expected_version=1,
            now=T0,
            audit=event,
        )
    running = store.get_policy()
    assert running is not None and running.yaml == "b" and running.comment == "why"
    older = store.get_policy(1)
    assert older is not None and older.yaml == "a"
    assert [p.version for p in store.list_policies(limit=10)] == [2, 1]
    assert [p.version for p in store.list_policies(limit=10, before_version=2)] == [1]
    inputs = store.map_inputs(now=T0)
    assert inputs.policy is not None and inputs.policy.version == 2
    assert [e.action for e in store.list_audit()] == ["policy.apply", "policy.apply"]


def test_a_version_1_database_upgrades_and_keeps_its_data(store_url: str) -> None:
    engine = create_engine(store_url)
    assert migrate(engine, now=clock, target=1) == [1]
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sites (name, created_at, labels, subnets, revoked_at, revoke_reason,"
                " endpoints, agent_version, applied_map_version, last_seen)"
                " VALUES ('old', :t, '{}', '[\"10.1.0.0/24\"]', NULL, '', '[]', '', 0, NULL)"
            ),
            {"t": T0.replace(tzinfo=None)},
        )
    assert not inspect(engine).has_table("policies")
    engine.dispose()
    upgraded = Store.open(store_url, now=clock)  # migrates to head
    site = upgraded.get_site("old")
    assert site is not None and site.subnets == ("10.1.0.0/24",)
    assert upgraded.get_policy() is None
    upgraded.close()

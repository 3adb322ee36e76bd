"""The committed trellis/v1 code must be what the .proto files generate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    generator = _load_generator()
    generator.generate(tmp_path)  # type: ignore[attr-defined]
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "trellis" / "v1").iterdir()}
    committed = {
        p.relative_to(ROOT): p.read_bytes() for p in (ROOT / "trellis" / "v1").iterdir() if "_pb2" in p.name
    }
    assert fresh, "the generator produced nothing"
    assert sorted(fresh) == sorted(committed), "generated file set differs: run scripts/gen_proto.py"
    stale = [str(name) for name, data in fresh.items() if committed[name] != data]
    assert not stale, f"stale generated code, run scripts/gen_proto.py: {stale}"


def test_contract_imports_as_trellis_v1() -> None:
    from trellis.v1 import admin_pb2_grpc, agent_pb2, agent_pb2_grpc, common_pb2

    network_map = common_pb2.NetworkMap(version=3, trust_domain="example.org")
    assert common_pb2.NetworkMap.FromString(network_map.SerializeToString()).version == 3
    assert hasattr(agent_pb2_grpc, "AgentServiceStub")
    assert hasattr(admin_pb2_grpc, "AdminStub")
    assert agent_pb2.DESCRIPTOR.package == "trellis.v1"

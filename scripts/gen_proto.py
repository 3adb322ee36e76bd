"""Regenerate trellis/v1 from proto/trellis/v1/*.proto (Python, gRPC and mypy stubs).

Usage: python scripts/gen_proto.py [--out DIR]

The generated files are committed; tests/unit/test_proto_fresh.py fails when they are stale.
The generator versions are pinned in pyproject.toml's dev extra so output is reproducible.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "trellis" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write the generated modules for every .proto file under out_dir/trellis/v1."""
    bin_dir = str(Path(sys.executable).parent)
    plugins = {name: shutil.which(name, path=bin_dir) for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc")}
    missing = [name for name, found in plugins.items() if found is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found next to this Python: pip install -e '.[dev]'")
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={include}",
        *(f"--plugin={name}={found}" for name, found in plugins.items()),
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args()
    generate(args.out)


if __name__ == "__main__":
    main()

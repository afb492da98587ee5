"""The generated stubs in searchsvc/v1 are exactly what grpc_tools makes from proto/ (never hand-edited)."""

import importlib.resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_up_to_date(tmp_path):
    well_known = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/timestamp.proto
    rc = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", str(ROOT / "proto/searchsvc/v1/searchsvc.proto")]
    )
    assert rc == 0
    for name in ("searchsvc_pb2.py", "searchsvc_pb2.pyi", "searchsvc_pb2_grpc.py"):
        generated = (tmp_path / "searchsvc/v1" / name).read_text()
        assert generated == (ROOT / "searchsvc/v1" / name).read_text(), f"{name} is stale: run `make proto`"

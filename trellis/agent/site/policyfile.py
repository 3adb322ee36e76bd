"""A PolicyView from a file: the static site's ``policy_view: FILE`` (trellis.agent.site.config).

The file holds one ``trellis.v1.PolicyView``, either binary (what ``SerializeToString`` writes)
or JSON (protobuf's JSON mapping, as ``json_format.MessageToJson`` writes: a file whose first
non-blank character is ``{``). It is checked as the agent's filter will enforce it, so a bad file
is refused with its reason before anything changes.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from trellis.agent.filter import InvalidPolicyView, PacketFilter
from trellis.agent.ikeconfig import ConfigError
from trellis.v1 import common_pb2

# The same bound as a NetworkMap received from the controller (which carries the view).
MAX_POLICY_VIEW_FILE_BYTES = 16 << 20


def parse_policy_view(data: bytes, *, where: str = "policy_view") -> common_pb2.PolicyView:
    """The view in ``data`` (binary or JSON); ConfigError naming ``where`` if it is not one the
    filter can enforce."""
    view = common_pb2.PolicyView()
    try:
        if data.lstrip()[:1] == b"{":
            json_format.Parse(data.decode(), view)
        else:
            view.ParseFromString(data)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: not a PolicyView (binary or JSON): {e}") from None
    try:
        PacketFilter(view)
    except InvalidPolicyView as e:
        raise ConfigError(f"{where}: {e}") from None
    return view


def load_policy_view(path: Path) -> common_pb2.PolicyView:
    try:
        if path.stat().st_size > MAX_POLICY_VIEW_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_POLICY_VIEW_FILE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return parse_policy_view(data, where=str(path))

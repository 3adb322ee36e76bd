"""How trellisctl shows answers to people: aligned tables and short summaries."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from trellis.v1 import admin_pb2
from trellis.v1.duration import format_duration


def when(stamp: Timestamp, *, relative_to: dt.datetime | None = None) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    value = stamp.ToDatetime(tzinfo=dt.UTC)
    text = value.strftime("%Y-%m-%d %H:%M:%SZ")
    if relative_to is not None:
        delta = value - relative_to
        text += f" (in {format_duration(delta)})" if delta.total_seconds() > 0 else " (past)"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def as_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2)


def labels_text(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _site_state(site: admin_pb2.Site) -> str:
    if site.revoked:
        return "revoked"
    return "connected" if site.connected else ("enrolled" if site.last_seen.seconds else "new")


def render_sites(response: admin_pb2.ListSitesResponse) -> str:
    rows = [
        [
            s.name,
            _site_state(s),
            ",".join(s.subnets),
            labels_text(s.labels),
            ",".join(f"{e.address}:{e.port}" for e in s.endpoints) or "-",
            when(s.last_seen),
        ]
        for s in response.sites
    ]
    return table(["name", "state", "subnets", "labels", "endpoints", "last seen"], rows)


def render_site(site: admin_pb2.Site) -> str:
    now = dt.datetime.now(dt.UTC)
    lines = [
        f"name:        {site.name}",
        f"identity:    {site.identity}",
        f"state:       {_site_state(site)}",
        f"subnets:     {', '.join(site.subnets)}",
        f"labels:      {labels_text(site.labels)}",
        f"endpoints:   {', '.join(f'{e.address}:{e.port}' for e in site.endpoints) or '-'}",
        f"created:     {when(site.created_at)}",
        f"last seen:   {when(site.last_seen)}",
        f"agent:       {site.agent_version or '-'} (map version {site.applied_map_version})",
    ]
    if site.revoked:
        lines.append(f"revoked:     {when(site.revoked_at)} ({site.revoke_reason or 'no reason given'})")
    if site.certificates:
        lines.append("certificates:")
        rows = [
            [
                c.serial,
                when(c.not_before),
                when(c.not_after, relative_to=now),
                "revoked" if c.revoked else "",
            ]
            for c in site.certificates
        ]
        lines += ["  " + line for line in table(["serial", "not before", "not after", ""], rows).splitlines()]
    return "\n".join(lines)


def render_token(token: admin_pb2.JoinToken) -> str:
    return (
        f"join token for {token.site} (single use, expires {when(token.expires_at)}):\n{token.token}\n"
        f"on the site: trellis-agent run --controller HOST:PORT --token <token> --state-dir DIR"
    )


def render_audit(response: admin_pb2.ListAuditResponse) -> str:
    rows = [
        [str(e.id), when(e.at), e.actor, e.action, e.target, e.outcome, e.detail] for e in response.entries
    ]
    return table(["id", "at", "actor", "action", "target", "outcome", "detail"], rows)


def render_status(status: admin_pb2.ControllerStatus) -> str:
    return "\n".join(
        [
            f"controller:       trellis {status.version}",
            f"trust domain:     {status.trust_domain}",
            f"store:            {status.store}",
            f"CA valid until:   {when(status.ca_not_after)}",
            f"sites:            {status.sites} ({status.revoked_sites} revoked)",
            f"agents connected: {status.connected_agents}",
            f"map generation:   {status.map_generation}",
            f"certificate TTL:  {format_duration(dt.timedelta(seconds=status.cert_ttl_seconds))}",
        ]
    )

"""trellisctl: the administrator's client for the controller.

Human tables by default, ``--json`` for scripts. Connection settings come from flags or from the
environment (TRELLIS_CONTROLLER, TRELLIS_CREDENTIALS).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from trellis import __version__
from trellis.controller.ca import CONTROLLER_TLS_NAME
from trellis.controller.credentials import AdminCredentials, CredentialsError
from trellis.v1 import admin_pb2, admin_pb2_grpc
from trellis.v1.duration import format_duration, parse_duration

DEFAULT_CONTROLLER = "127.0.0.1:7400"
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


# -- output --------------------------------------------------------------------------------------


def _time(stamp: Timestamp, *, relative_to: dt.datetime | None = None) -> str:
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


def _labels(labels: Any) -> str:
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
            _labels(s.labels),
            ",".join(f"{e.address}:{e.port}" for e in s.endpoints) or "-",
            _time(s.last_seen),
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
        f"labels:      {_labels(site.labels)}",
        f"endpoints:   {', '.join(f'{e.address}:{e.port}' for e in site.endpoints) or '-'}",
        f"created:     {_time(site.created_at)}",
        f"last seen:   {_time(site.last_seen)}",
        f"agent:       {site.agent_version or '-'} (map version {site.applied_map_version})",
    ]
    if site.revoked:
        lines.append(f"revoked:     {_time(site.revoked_at)} ({site.revoke_reason or 'no reason given'})")
    if site.certificates:
        lines.append("certificates:")
        rows = [
            [
                c.serial,
                _time(c.not_before),
                _time(c.not_after, relative_to=now),
                "revoked" if c.revoked else "",
            ]
            for c in site.certificates
        ]
        lines += ["  " + line for line in table(["serial", "not before", "not after", ""], rows).splitlines()]
    return "\n".join(lines)


def render_token(token: admin_pb2.JoinToken) -> str:
    return (
        f"join token for {token.site} (single use, expires {_time(token.expires_at)}):\n{token.token}\n"
        f"on the site: trellis-agent run --controller HOST:PORT --token <token> --state-dir DIR"
    )


def render_audit(response: admin_pb2.ListAuditResponse) -> str:
    rows = [
        [str(e.id), _time(e.at), e.actor, e.action, e.target, e.outcome, e.detail] for e in response.entries
    ]
    return table(["id", "at", "actor", "action", "target", "outcome", "detail"], rows)


def render_status(status: admin_pb2.ControllerStatus) -> str:
    return "\n".join(
        [
            f"controller:       trellis {status.version}",
            f"trust domain:     {status.trust_domain}",
            f"store:            {status.store}",
            f"CA valid until:   {_time(status.ca_not_after)}",
            f"sites:            {status.sites} ({status.revoked_sites} revoked)",
            f"agents connected: {status.connected_agents}",
            f"map generation:   {status.map_generation}",
            f"certificate TTL:  {format_duration(dt.timedelta(seconds=status.cert_ttl_seconds))}",
        ]
    )


# -- connection ----------------------------------------------------------------------------------


def connect(controller: str, credentials_path: Path) -> grpc.Channel:
    try:
        credentials = AdminCredentials.load(credentials_path)
    except CredentialsError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=credentials.ca_pem,
        private_key=credentials.key_pem,
        certificate_chain=credentials.certificate_pem,
    )
    return grpc.secure_channel(
        controller, channel_credentials, options=[("grpc.ssl_target_name_override", CONTROLLER_TLS_NAME)]
    )


def call(method: Callable[..., Any], request: Message, *, controller: str, timeout: float) -> Any:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        details: str = e.details() or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(
                f"cannot reach the controller at {controller}: {details}", EXIT_UNREACHABLE
            ) from None
        raise CliError(f"{details} ({code.name.lower()})") from None


# -- commands ------------------------------------------------------------------------------------


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid label {text!r}: use KEY=VALUE")
    return key, value


def _ttl_seconds(text: str | None) -> int:
    if text is None:
        return 0
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trellisctl",
        description="Administer a Trellis controller: sites, join tokens, revocation, audit.",
        epilog="Connection: --controller or TRELLIS_CONTROLLER (default 127.0.0.1:7400); --credentials or "
        "TRELLIS_CREDENTIALS (the admin.pem that 'trellis-controller init' wrote).",
    )
    parser.add_argument("--version", action="version", version=f"trellisctl {__version__}")
    parser.add_argument("--controller", default=os.environ.get("TRELLIS_CONTROLLER", DEFAULT_CONTROLLER))
    parser.add_argument("--credentials", type=Path, default=os.environ.get("TRELLIS_CREDENTIALS"))
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    site = commands.add_parser("site", help="add, list, show and revoke sites")
    site_commands = site.add_subparsers(dest="site_command", required=True, metavar="SITE_COMMAND")
    add = with_json(site_commands.add_parser("add", help="add a site and print its join token"))
    add.add_argument("name")
    add.add_argument("--subnet", action="append", required=True, help="CIDR behind the site (repeatable)")
    add.add_argument("--label", action="append", type=_label, default=[], help="KEY=VALUE (repeatable)")
    add.add_argument("--token-ttl", help="join token lifetime (default 1h)")
    with_json(site_commands.add_parser("list", help="list sites"))
    show = with_json(site_commands.add_parser("show", help="show one site with its certificates"))
    show.add_argument("name")
    revoke = with_json(
        site_commands.add_parser(
            "revoke",
            help="revoke a site: its certificates, renewals and stream end now; every agent is told",
        )
    )
    revoke.add_argument("name")
    revoke.add_argument("--reason", default="", help="recorded in the audit log")

    token = commands.add_parser("token", help="join tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="TOKEN_COMMAND")
    create = with_json(token_commands.add_parser("create", help="a fresh join token for an existing site"))
    create.add_argument("name")
    create.add_argument("--token-ttl", help="lifetime (default 1h)")

    audit = with_json(commands.add_parser("audit", help="the audit log, newest first"))
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--before", type=int, default=0, help="entries older than this id (paging)")

    with_json(commands.add_parser("status", help="controller status"))
    return parser


Command = Callable[[admin_pb2_grpc.AdminStub, argparse.Namespace, dict[str, Any]], tuple[Message, str]]


def site_add(
    stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace, options: dict[str, Any]
) -> tuple[Message, str]:
    request = admin_pb2.AddSiteRequest(
        name=args.name,
        subnets=args.subnet,
        labels=dict(args.label),
        token_ttl_seconds=_ttl_seconds(args.token_ttl),
    )
    r: admin_pb2.AddSiteResponse = call(stub.AddSite, request, **options)
    return r, f"added site {r.site.name} ({r.site.identity})\n{render_token(r.token)}"


def site_list(
    stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace, options: dict[str, Any]
) -> tuple[Message, str]:
    r: admin_pb2.ListSitesResponse = call(stub.ListSites, admin_pb2.ListSitesRequest(), **options)
    return r, render_sites(r)


def site_show(
    stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace, options: dict[str, Any]
) -> tuple[Message, str]:
    r: admin_pb2.Site = call(stub.GetSite, admin_pb2.GetSiteRequest(name=args.name), **options)
    return r, render_site(r)


def site_revoke(
    stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace, options: dict[str, Any]
) -> tuple[Message, str]:
    request = admin_pb2.RevokeSiteRequest(name=args.name, reason=args.reason)
    r: admin_pb2.Site = call(stub.RevokeSite, request, **options)
    return r, f"revoked site {r.name} ({r.identity})"


def token_create(
    stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace, options: dict[str, Any]
) -> tuple[Message, str]:
    request = admin_pb2.CreateTokenRequest(site=args.name, token_ttl_seconds=_ttl_seconds(args.token_ttl))
    r: admin_pb2.JoinToken = call(stub.CreateToken, request, **options)
    return r, render_token(r)


def audit_list(
    stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace, options: dict[str, Any]
) -> tuple[Message, str]:
    request = admin_pb2.ListAuditRequest(limit=args.limit, before_id=args.before)
    r: admin_pb2.ListAuditResponse = call(stub.ListAudit, request, **options)
    return r, render_audit(r)


def status(
    stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace, options: dict[str, Any]
) -> tuple[Message, str]:
    r: admin_pb2.ControllerStatus = call(stub.GetStatus, admin_pb2.GetStatusRequest(), **options)
    return r, render_status(r)


COMMANDS: dict[tuple[str, str | None], Command] = {
    ("site", "add"): site_add,
    ("site", "list"): site_list,
    ("site", "show"): site_show,
    ("site", "revoke"): site_revoke,
    ("token", "create"): token_create,
    ("audit", None): audit_list,
    ("status", None): status,
}


def run(args: argparse.Namespace) -> str:
    if args.credentials is None:
        raise CliError(
            "no credentials: pass --credentials PATH or set TRELLIS_CREDENTIALS "
            "(trellis-controller init writes DATA_DIR/admin.pem)",
            EXIT_USAGE,
        )
    subcommand = getattr(args, f"{args.command}_command", None)
    command = COMMANDS[(args.command, subcommand)]
    channel = connect(args.controller, args.credentials)
    try:
        response, human = command(
            admin_pb2_grpc.AdminStub(channel), args, {"controller": args.controller, "timeout": args.timeout}
        )
    finally:
        channel.close()
    return as_json(response) if args.json else human


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except CliError as e:
        print(f"trellisctl: error: {e}", file=sys.stderr)
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main())

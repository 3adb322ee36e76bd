"""trellisctl site / token / audit / status."""

from __future__ import annotations

import argparse

from trellis.controller.cli.connection import EXIT_USAGE, CliError
from trellis.controller.cli.context import Context, Result, command
from trellis.controller.cli.render import render_audit, render_site, render_sites, render_status, render_token
from trellis.v1 import admin_pb2, admin_pb2_grpc
from trellis.v1.duration import parse_duration


def label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid label {text!r}: use KEY=VALUE")
    return key, value


def ttl_seconds(text: str | None) -> int:
    if text is None:
        return 0
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE) from None


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    site = commands.add_parser("site", help="add, list, show and revoke sites")
    site_commands = site.add_subparsers(dest="site_command", required=True, metavar="SITE_COMMAND")
    add = site_commands.add_parser("add", help="add a site and print its join token")
    add.add_argument("name")
    add.add_argument("--subnet", action="append", required=True, help="CIDR behind the site (repeatable)")
    add.add_argument("--label", action="append", type=label, default=[], help="KEY=VALUE (repeatable)")
    add.add_argument("--token-ttl", help="join token lifetime (default 1h)")
    command(add, site_add)
    command(site_commands.add_parser("list", help="list sites"), site_list)
    show = site_commands.add_parser("show", help="show one site with its certificates")
    show.add_argument("name")
    command(show, site_show)
    revoke = site_commands.add_parser(
        "revoke", help="revoke a site: its certificates, renewals and stream end now; every agent is told"
    )
    revoke.add_argument("name")
    revoke.add_argument("--reason", default="", help="recorded in the audit log")
    command(revoke, site_revoke)

    token = commands.add_parser("token", help="join tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="TOKEN_COMMAND")
    create = token_commands.add_parser("create", help="a fresh join token for an existing site")
    create.add_argument("name")
    create.add_argument("--token-ttl", help="lifetime (default 1h)")
    command(create, token_create)

    audit = commands.add_parser("audit", help="the audit log, newest first")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--before", type=int, default=0, help="entries older than this id (paging)")
    command(audit, audit_list)

    command(commands.add_parser("status", help="controller status"), status)


def _stub(context: Context) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(context.channel)


def site_add(context: Context, args: argparse.Namespace) -> Result:
    request = admin_pb2.AddSiteRequest(
        name=args.name,
        subnets=args.subnet,
        labels=dict(args.label),
        token_ttl_seconds=ttl_seconds(args.token_ttl),
    )
    r: admin_pb2.AddSiteResponse = context.call(_stub(context).AddSite, request)
    return Result(r, f"added site {r.site.name} ({r.site.identity})\n{render_token(r.token)}")


def site_list(context: Context, args: argparse.Namespace) -> Result:
    r: admin_pb2.ListSitesResponse = context.call(_stub(context).ListSites, admin_pb2.ListSitesRequest())
    return Result(r, render_sites(r))


def site_show(context: Context, args: argparse.Namespace) -> Result:
    r: admin_pb2.Site = context.call(_stub(context).GetSite, admin_pb2.GetSiteRequest(name=args.name))
    return Result(r, render_site(r))


def site_revoke(context: Context, args: argparse.Namespace) -> Result:
    request = admin_pb2.RevokeSiteRequest(name=args.name, reason=args.reason)
    r: admin_pb2.Site = context.call(_stub(context).RevokeSite, request)
    return Result(r, f"revoked site {r.name} ({r.identity})")


def token_create(context: Context, args: argparse.Namespace) -> Result:
    request = admin_pb2.CreateTokenRequest(site=args.name, token_ttl_seconds=ttl_seconds(args.token_ttl))
    r: admin_pb2.JoinToken = context.call(_stub(context).CreateToken, request)
    return Result(r, render_token(r))


def audit_list(context: Context, args: argparse.Namespace) -> Result:
    request = admin_pb2.ListAuditRequest(limit=args.limit, before_id=args.before)
    r: admin_pb2.ListAuditResponse = context.call(_stub(context).ListAudit, request)
    return Result(r, render_audit(r))


def status(context: Context, args: argparse.Namespace) -> Result:
    r: admin_pb2.ControllerStatus = context.call(_stub(context).GetStatus, admin_pb2.GetStatusRequest())
    return Result(r, render_status(r))

"""trellisctl policy apply | show | history | rollback | check."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from trellis.controller.cli.connection import EXIT_REFUSED, EXIT_USAGE, CliError
from trellis.controller.cli.context import Context, Result, command
from trellis.controller.cli.render import table, when
from trellis.v1 import policy_pb2, policy_pb2_grpc

MAX_POLICY_FILE_BYTES = 1024 * 1024


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser("policy", help="apply, show, roll back and check the access policy")
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="POLICY_COMMAND")

    apply = sub.add_parser(
        "apply",
        help="validate, test and apply a policy file",
        description="Validate the policy, run its own tests, show which identity pairs gain or lose "
        "access, and (unless --dry-run) make it the running policy. A refused policy never replaces "
        "the running one. Exit code 1 when refused.",
    )
    apply.add_argument("-f", "--file", required=True, help="policy YAML file ('-' for stdin)")
    apply.add_argument("--dry-run", action="store_true", help="only show what would change")
    apply.add_argument("--comment", default="", help="recorded with the version")
    apply.add_argument(
        "--expect-version", type=int, default=0, help="refuse unless the running version is this one"
    )
    command(apply, policy_apply)

    show = sub.add_parser("show", help="print the running policy (or --version N)")
    show.add_argument("--version", type=int, default=0)
    command(show, policy_show)

    history = sub.add_parser("history", help="policy versions, newest first")
    history.add_argument("--limit", type=int, default=50)
    command(history, policy_history)

    rollback = sub.add_parser("rollback", help="apply an earlier version again (as a new version)")
    rollback.add_argument("version", type=int)
    rollback.add_argument("--dry-run", action="store_true")
    rollback.add_argument("--comment", default="")
    command(rollback, policy_rollback)

    check = sub.add_parser(
        "check",
        help="would a flow be allowed? (exit 0: allow, 1: deny)",
        description="Ask the controller whether FROM may open a flow to TO, and which rule decides.",
    )
    check.add_argument("--from", dest="source", required=True, help="site name or identity")
    check.add_argument("--to", dest="destination", required=True, help="site name or identity")
    check.add_argument("--proto", default="any", help="tcp, udp, icmp, any, or an IP protocol number")
    check.add_argument("--port", type=int, default=0, help="destination port (tcp and udp)")
    check.add_argument("--at", help="ISO time, e.g. 2026-12-01T09:00:00Z (default: now)")
    check.add_argument("--src", default="", help="source address (default: any in the source's subnets)")
    check.add_argument("--dst", default="", help="destination address (default: any in the destination's)")
    check.add_argument("--version", type=int, default=0, help="a stored version instead of the running one")
    command(check, policy_check)


def _stub(context: Context) -> policy_pb2_grpc.PolicyAdminStub:
    return policy_pb2_grpc.PolicyAdminStub(context.channel)


def _read_policy(name: str) -> str:
    try:
        data = sys.stdin.buffer.read(MAX_POLICY_FILE_BYTES + 1) if name == "-" else Path(name).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {name}: {e.strerror}", EXIT_USAGE) from None
    if len(data) > MAX_POLICY_FILE_BYTES:
        raise CliError(f"{name} is larger than {MAX_POLICY_FILE_BYTES} bytes", EXIT_USAGE)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{name} is not UTF-8 text", EXIT_USAGE) from None


_CHANGE_MARK = {
    policy_pb2.AccessChange.KIND_GAINED: "+",
    policy_pb2.AccessChange.KIND_LOST: "-",
    policy_pb2.AccessChange.KIND_CHANGED: "~",
}


def render_review(response: policy_pb2.ApplyPolicyResponse, *, source: str, dry_run: bool) -> str:
    lines: list[str] = []
    errors = [i for i in response.issues if not i.warning]
    warnings = [i for i in response.issues if i.warning]
    failed = [t for t in response.tests if not t.passed]
    for issue in errors + warnings:
        place = f"{source}:{issue.line}:{issue.column}" if issue.line else source
        kind = "warning" if issue.warning else "error"
        lines.append(f"{place}: {kind}: {issue.path + ': ' if issue.path else ''}{issue.message}")
    lines += [f"{source}:{t.line}:{t.column}: test {t.index + 1} failed: {t.message}" for t in failed]
    if response.tests:
        lines.append(f"tests: {len(response.tests) - len(failed)} of {len(response.tests)} passed")
    for change in response.changes:
        mark = _CHANGE_MARK.get(change.kind, "?")
        what = "; ".join([*("+" + a for a in change.added), *("-" + r for r in change.removed)])
        lines.append(f"  {mark} {change.from_identity} -> {change.to_identity}: {what}")
    if response.sites_not_listed:
        lines.append(f"  ... and changes at {response.sites_not_listed} more sites, not listed")
    if errors or failed:
        lines.append(
            f"refused: {len(errors)} errors, {len(failed)} failed tests; "
            f"the running policy (version {response.version}) is unchanged"
        )
    elif dry_run:
        lines.append(
            f"dry run: {response.affected_sites} sites would get a new view "
            f"(running version {response.version}); nothing applied"
        )
    elif response.applied:
        lines.append(f"applied version {response.version}: {response.affected_sites} sites get a new view")
    return "\n".join(lines)


def _review_result(response: policy_pb2.ApplyPolicyResponse, *, source: str, dry_run: bool) -> Result:
    refused = (
        any(not issue.warning for issue in response.issues)
        or any(not test.passed for test in response.tests)
        or (not dry_run and not response.applied)
    )
    return Result(
        response, render_review(response, source=source, dry_run=dry_run), EXIT_REFUSED if refused else 0
    )


def policy_apply(context: Context, args: argparse.Namespace) -> Result:
    request = policy_pb2.ApplyPolicyRequest(
        yaml=_read_policy(args.file),
        dry_run=args.dry_run,
        comment=args.comment,
        expected_version=args.expect_version,
    )
    response: policy_pb2.ApplyPolicyResponse = context.call(_stub(context).ApplyPolicy, request)
    return _review_result(response, source=args.file, dry_run=args.dry_run)


def policy_rollback(context: Context, args: argparse.Namespace) -> Result:
    request = policy_pb2.RollbackPolicyRequest(
        version=args.version, dry_run=args.dry_run, comment=args.comment
    )
    response: policy_pb2.ApplyPolicyResponse = context.call(_stub(context).RollbackPolicy, request)
    return _review_result(response, source=f"version {args.version}", dry_run=args.dry_run)


def policy_show(context: Context, args: argparse.Namespace) -> Result:
    document: policy_pb2.PolicyDocument = context.call(
        _stub(context).GetPolicy, policy_pb2.GetPolicyRequest(version=args.version)
    )
    info = document.info
    header = f"# version {info.version}, applied {when(info.applied_at)} by {info.applied_by}"
    if info.comment:
        header += f": {info.comment}"
    return Result(document, f"{header}\n{document.yaml.rstrip()}")


def policy_history(context: Context, args: argparse.Namespace) -> Result:
    response: policy_pb2.ListPolicyVersionsResponse = context.call(
        _stub(context).ListPolicyVersions, policy_pb2.ListPolicyVersionsRequest(limit=args.limit)
    )
    rows = [
        [
            str(v.version),
            when(v.applied_at),
            v.applied_by,
            v.sha256[:12],
            f"rollback of {v.rolled_back_from}" if v.rolled_back_from else "",
            v.comment,
        ]
        for v in response.versions
    ]
    return Result(response, table(["version", "applied", "by", "sha256", "", "comment"], rows))


def _timestamp(text: str | None) -> Timestamp | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"invalid --at {text!r}: use ISO 8601, e.g. 2026-12-01T09:00:00Z", EXIT_USAGE
        ) from None
    if value.tzinfo is None:
        raise CliError("--at needs a time zone (e.g. a trailing Z for UTC)", EXIT_USAGE)
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(dt.UTC))
    return stamp


def policy_check(context: Context, args: argparse.Namespace) -> Result:
    request = policy_pb2.CheckPolicyRequest(
        to=args.destination,
        protocol="0" if args.proto == "any" else args.proto,
        port=args.port,
        src_address=args.src,
        dst_address=args.dst,
        version=args.version,
        **{"from": args.source},
    )
    at = _timestamp(args.at)
    if at is not None:
        request.at.CopyFrom(at)
    r: policy_pb2.CheckPolicyResponse = context.call(_stub(context).CheckPolicy, request)
    verdict = "allow" if r.allowed else "deny"
    text = f"{verdict}: {r.reason} [policy version {r.version}]"  # the reason names the deciding rule
    if r.dst_prefixes:
        text += f"\n  to {', '.join(r.dst_prefixes)}"
    return Result(r, text, 0 if r.allowed else EXIT_REFUSED)

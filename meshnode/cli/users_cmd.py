"""meshnode users add|token|list|search|password|profile|revoke|roles|disable|enable: who may use DICOMweb
and the web portal. The portal's users page (meshnode.web.users_web) calls the same store functions."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from common.cli.output import EXIT_OK, emit
from meshnode.cli.storage_cmds import open_storage
from common.describe import iso
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.node_storage import NodeStorage, local_actor, now_ms
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.users import ROLES, ApiToken, check_display_name, check_email, check_roles
from meshnode.web import signin
from meshnode.web.auth import add_user, issue_token
from meshnode.web.users_web import enrolment_view, user_view
from meshnode.home import NodeHome, resolve_home
from protocol.errors import LocalProtocolError, MeshError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("users", help="users and API tokens of DICOMweb and the web UI")
    actions = parser.add_subparsers(dest="action", required=True)
    role_help = f"role (repeatable): {', '.join(ROLES)}"
    add = actions.add_parser("add", parents=[common], help="add a user and print their first API token")
    add.add_argument("name")
    add.add_argument("--role", action="append", choices=ROLES, help=role_help + " (default: read)")
    add.add_argument("--label", default="", help="what the token is for, e.g. 'PACS query' or a person's name")
    add.add_argument("--expires-days", type=int, default=0, help="token lifetime in days (default: no expiry)")
    add.add_argument("--display-name", default="", help="the person's name as the portal shows it")
    add.add_argument("--email", default="", help="where arrival notifications go")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=run_add)
    token = actions.add_parser("token", parents=[common], help="issue another API token for a user")
    token.add_argument("name")
    token.add_argument("--label", default="")
    token.add_argument("--expires-days", type=int, default=0)
    token.add_argument("--json", action="store_true")
    token.set_defaults(func=run_token)
    listing = actions.add_parser("list", parents=[common], help="users, roles and their tokens (never the tokens)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)
    search = actions.add_parser("search", parents=[common], help="users whose name, display name or email "
                                "contains TEXT")
    search.add_argument("text")
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=run_search)
    password = actions.add_parser("password", parents=[common], help="set a user's portal password and a new "
                                  "TOTP secret (printed once, with its otpauth:// URI for an authenticator app)")
    password.add_argument("name")
    password.add_argument("--password-stdin", action="store_true",
                          help="read the password from standard input (default: ask, or generate with --generate)")
    password.add_argument("--generate", action="store_true", help="generate a password and print it once")
    password.add_argument("--json", action="store_true")
    password.set_defaults(func=run_password)
    profile = actions.add_parser("profile", parents=[common], help="set a user's display name and email")
    profile.add_argument("name")
    profile.add_argument("--display-name", default="")
    profile.add_argument("--email", default="")
    profile.add_argument("--json", action="store_true")
    profile.set_defaults(func=run_profile)
    enable = actions.add_parser("enable", parents=[common], help="enable a disabled user again (tokens stay "
                                "revoked)")
    enable.add_argument("name")
    enable.add_argument("--json", action="store_true")
    enable.set_defaults(func=run_enable)
    revoke = actions.add_parser("revoke", parents=[common], help="revoke an API token by its ID")
    revoke.add_argument("token_id", help="token ID from `meshnode users list` (or a unique prefix)")
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(func=run_revoke)
    roles = actions.add_parser("roles", parents=[common], help="set a user's roles")
    roles.add_argument("name")
    roles.add_argument("--role", action="append", required=True, choices=ROLES, help=role_help)
    roles.add_argument("--json", action="store_true")
    roles.set_defaults(func=run_roles)
    disable = actions.add_parser("disable", parents=[common], help="disable a user and revoke all their tokens")
    disable.add_argument("name")
    disable.add_argument("--json", action="store_true")
    disable.set_defaults(func=run_disable)


@contextmanager
def stores(args: argparse.Namespace) -> Iterator[tuple[NodeStorage, SqliteUserStore]]:
    with open_storage(args) as storage:
        users = SqliteUserStore(storage.home / "node.db")
        try:
            yield storage, users
        finally:
            users.close()


def _audit(storage: NodeStorage, action: str, detail: str) -> None:
    storage.audit(AuditEvent(EventCode.SECURITY_ALERT, action, actor=local_actor(), detail=detail[:300]))


def _token_view(t: ApiToken) -> dict[str, object]:
    return {"token_id": t.token_id, "user": t.user, "label": t.label, "created": iso(t.created_ms // 1000),
            "expires": iso(t.expires_ms // 1000) if t.expires_ms else None, "revoked": t.revoked,
            "last_used": iso(t.last_used_ms // 1000) if t.last_used_ms else None}


def _issued(args: argparse.Namespace, token: str, record: ApiToken, roles: tuple[str, ...]) -> None:
    emit({"user": record.user, "roles": list(roles), "token": token, "token_id": record.token_id,
          "expires": _token_view(record)["expires"]}, args.json,
         f"user {record.user} ({', '.join(roles)}): token {record.token_id}\n{token}\n"
         "this token is shown once; store it now (only its hash is kept)")


def run_add(args: argparse.Namespace) -> int:
    roles = check_roles(tuple(args.role or ["read"]))
    display, email = check_display_name(args.display_name), check_email(args.email)
    with stores(args) as (storage, users):
        user = add_user(users, args.name, roles, now_ms())
        if display or email:
            users.set_profile(user.name, display, email)
        token, record = issue_token(users, user.name, args.label, now_ms(), args.expires_days)
        _audit(storage, "user-added", f"{user.name} roles={','.join(user.roles)} token={record.token_id}")
    _issued(args, token, record, user.roles)
    return EXIT_OK


def run_token(args: argparse.Namespace) -> int:
    with stores(args) as (storage, users):
        token, record = issue_token(users, args.name, args.label, now_ms(), args.expires_days)
        user = users.user(args.name)
        _audit(storage, "token-issued", f"{args.name} token={record.token_id}")
    _issued(args, token, record, user.roles if user else ())
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    with stores(args) as (_, users):
        listed = users.users()
        tokens = users.tokens()
    data = [{**user_view(u), "tokens": [_token_view(t) for t in tokens if t.user == u.name]} for u in listed]
    lines = []
    for u in listed:
        lines.append(f"{u.name:<24} {','.join(u.roles):<16} {'DISABLED' if u.disabled else ''}")
        for t in tokens:
            if t.user != u.name:
                continue
            view = _token_view(t)
            state = "revoked" if t.revoked else f"expires {view['expires']}" if t.expires_ms else "no expiry"
            lines.append(f"    token {t.token_id}  {state:<28} last used {view['last_used'] or 'never'}  {t.label}")
    emit(data, args.json, "\n".join(lines) or "no users yet (meshnode users add NAME --role read)")
    return EXIT_OK


def run_revoke(args: argparse.Namespace) -> int:
    with stores(args) as (storage, users):
        record = users.revoke_token(args.token_id)
        _audit(storage, "token-revoked", f"{record.user} token={record.token_id}")
    emit(_token_view(record), args.json,
         f"token {record.token_id} of {record.user} revoked (a running node stops accepting it within seconds)")
    return EXIT_OK


def run_roles(args: argparse.Namespace) -> int:
    roles = check_roles(tuple(args.role))
    with stores(args) as (storage, users):
        users.set_roles(args.name, roles)
        _audit(storage, "user-roles", f"{args.name} roles={','.join(roles)}")
    emit({"user": args.name, "roles": list(roles)}, args.json, f"{args.name}: {', '.join(roles)}")
    return EXIT_OK


def run_disable(args: argparse.Namespace) -> int:
    with stores(args) as (storage, users):
        revoked = users.disable_user(args.name)
        _audit(storage, "user-disabled", f"{args.name}, {revoked} token(s) revoked")
    emit({"user": args.name, "disabled": True, "tokens_revoked": revoked}, args.json,
         f"{args.name} disabled; {revoked} token(s) revoked")
    return EXIT_OK


def run_search(args: argparse.Namespace) -> int:
    with stores(args) as (_, users):
        found = users.search_users(args.text, max(1, min(args.limit, 1000)))
    emit([user_view(u) for u in found], args.json, "\n".join(
        f"{u.name:<24} {','.join(u.roles):<20} {u.display_name:<28} {u.email}{'  DISABLED' if u.disabled else ''}"
        for u in found) or "no user matches")
    return EXIT_OK


def _password(args: argparse.Namespace) -> str:
    if args.generate:
        return ""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"new portal password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise LocalProtocolError("the two passwords differ")
    return first


def _org(args: argparse.Namespace) -> str:
    try:
        return NodeHome(resolve_home(args.home)).config().org
    except MeshError:
        return ""


def run_password(args: argparse.Namespace) -> int:
    password = signin.check_password(_password(args)) if not args.generate else ""
    with stores(args) as (storage, users):
        enrolment = signin.enrol(users, args.name, password, now_ms(), signin.issuer(_org(args)))
        _audit(storage, "user-credentials-reset", f"{args.name} (cli)")
    view = enrolment_view(enrolment)
    emit(view, args.json, "\n".join(filter(None, (
        f"{args.name}: password set" + (f" (generated, shown once): {enrolment.password}" if enrolment.password
                                        else ""),
        f"TOTP secret (shown once): {enrolment.totp_secret}",
        f"for an authenticator app: {enrolment.totp_uri}",
        "a running node ends this user's open portal sessions within seconds"))))
    return EXIT_OK


def run_profile(args: argparse.Namespace) -> int:
    display, email = check_display_name(args.display_name), check_email(args.email)
    with stores(args) as (storage, users):
        users.set_profile(args.name, display, email)
        _audit(storage, "user-profile", f"{args.name} (cli)")
        user = users.user(args.name)
    emit(user_view(user) if user else {}, args.json, f"{args.name}: {display or '-'} <{email or 'no email'}>")
    return EXIT_OK


def run_enable(args: argparse.Namespace) -> int:
    with stores(args) as (storage, users):
        users.set_disabled(args.name, False)
        _audit(storage, "user-enabled", f"{args.name} (cli)")
    emit({"user": args.name, "disabled": False}, args.json, f"{args.name} enabled (its tokens stay revoked)")
    return EXIT_OK

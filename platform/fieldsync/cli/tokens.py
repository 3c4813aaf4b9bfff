"""`fieldsync token create` and `token revoke`: signed bearer tokens (docs/cli.md, docs/access.md)."""

from __future__ import annotations

import sys

import click

from fieldsync.cli.common import (Invocation, action_group, command, database_options, load_model_or_report,
                                  open_for_revocation, operator, pass_invocation)

token = action_group("token", "issue signed bearer tokens")


@token.add_command
@command("create", "print a token for a user with a role and attributes")
@click.option("--user", required=True, help="user id")
@click.option("--role", required=True, help="a role from entity_defs/roles.yaml")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE",
              help="a user attribute; lists are comma-separated (repeatable)")
@click.option("--ttl", type=int, help="lifetime in seconds (default TOKEN_TTL_SECONDS)")
@pass_invocation
def create(invocation: Invocation, user: str, role: str, attrs: tuple[str, ...], ttl: int | None) -> int:
    config = invocation.config()
    model = load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return 1
    if role not in model.role_names:
        print(f"unknown role {role!r}; roles: {', '.join(model.role_names)}", file=sys.stderr)
        return 2
    from fieldsync.auth.users import attribute_from_text
    attributes = {}
    for item in attrs:
        key, sep, raw = item.partition("=")
        attr = model.attribute(key)
        if not sep or attr is None or key in ("id", "role"):
            declared = ", ".join(a.name for a in model.attributes)
            print(f"--attr {item!r}: expected key=value with a declared attribute ({declared})", file=sys.stderr)
            return 2
        attributes[key] = attribute_from_text(attr, raw)
    ttl = ttl or int(config["TOKEN_TTL_SECONDS"])
    from fieldsync.auth.tokens import issue_token, new_token_id
    token_id = new_token_id()
    print(issue_token(config.secret_key(), user=user, role=role, attributes=attributes, ttl=ttl,
                      token_id=token_id))
    idle = int(config["TOKEN_IDLE_SECONDS"])
    print(f"token id {token_id} (fieldsync token revoke {token_id}); refused after {idle} s unused, "
          "counted from now", file=sys.stderr)
    return 0


@token.add_command
@command("revoke", "revoke one token by its id (printed by token create; in the audit log's session entries)")
@click.argument("token_id")
@click.option("--reason", help="why (optional; kept encrypted in the audit log)")
@database_options
@pass_invocation
def revoke(invocation: Invocation, token_id: str, reason: str | None, database_url: str | None,
           data_dir: str | None) -> int:
    """TOKEN_ID: the token's id (its jti)."""
    from fieldsync.auth.revocation import revoke_token
    engine, audit = open_for_revocation(invocation.config(database_url=database_url, data_dir=data_dir))
    try:
        known = revoke_token(engine, audit, token_id, actor=f"{operator()} (cli)", channel="cli", reason=reason)
    except ValueError as exc:
        print(f"fieldsync token revoke: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"token {token_id} revoked" + ("" if known else " (not used yet: it is refused from its first use)"))
    return 0

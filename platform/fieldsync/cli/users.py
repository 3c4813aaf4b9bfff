"""`fieldsync users add|set|disable|enable|list`: the user directory on the server's database
(fieldsync.auth.users; docs/cli.md, docs/access.md). A password is read from a hidden prompt or,
with `--password-stdin`, from the first line of standard input: never from a flag, which would
stay in the shell's history and the process list."""

from __future__ import annotations

import json
import sys

import click

from fieldsync.cli.common import (Invocation, action_group, command, database_options, defs_option, json_option,
                                  load_model_or_report, open_for_revocation, operator, pass_invocation, table)

users = action_group("users", "manage the user directory: who logs in, with which role and attributes")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("password", hide_input=True, confirmation_prompt=True, err=True)


def _attributes(model, items: tuple[str, ...]) -> dict:
    from fieldsync.auth.users import attribute_from_text
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        attr = model.attribute(key)
        if not sep or attr is None or key in ("id", "role"):
            declared = ", ".join(a.name for a in model.attributes)
            raise click.UsageError(f"--attr {item!r}: expected key=value with a declared attribute ({declared})")
        try:
            values[key] = attribute_from_text(attr, raw)
        except ValueError:
            raise click.UsageError(f"--attr {item!r}: not a {attr.items or attr.type}") from None
    return values


def _print_second_factor(user_id: str, secret: str | None) -> None:
    if secret is None:
        return
    from fieldsync.auth.totp import provisioning_uri
    print(f"second factor for {user_id}: enter this secret in an authenticator app (shown once)")
    print(f"  secret: {secret}")
    print(f"  uri:    {provisioning_uri(secret, user_id)}")


def _open(invocation: Invocation, defs, database_url, data_dir):
    """(model, engine, audit, key ring): the key ring seals an enrolled TOTP secret (the server's
    key provider and data key, scope `directory:totp`: docs/access.md)."""
    from fieldsync.crypto.keyring import crypto_from_config
    config = invocation.config(defs=defs, database_url=database_url, data_dir=data_dir)
    model = load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return None
    engine, audit = open_for_revocation(config)
    try:
        keyring = crypto_from_config(config, engine).keyring
    except BaseException:
        engine.dispose()
        raise
    return model, engine, audit, keyring


def _attr_option(f):
    return click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE",
                        help="a user attribute declared in roles.yaml; lists are comma-separated (repeatable)")(f)


def _password_stdin_option(f):
    return click.option("--password-stdin", is_flag=True,
                        help="read the password from the first line of standard input instead of a prompt")(f)


@users.add_command
@command("add", "add a user with a role, attributes and a password")
@click.argument("user")
@click.option("--role", required=True, help="a role from entity_defs/roles.yaml")
@_attr_option
@_password_stdin_option
@click.option("--totp", is_flag=True, help="enrol a second factor (admin, analyst and compliance roles)")
@defs_option
@database_options
@pass_invocation
def add(invocation: Invocation, user: str, role: str, attrs: tuple[str, ...], password_stdin: bool, totp: bool,
        defs: str | None, database_url: str | None, data_dir: str | None) -> int:
    """USER: the new user's id (what they log in with)."""
    from fieldsync.auth.users import add_user
    from fieldsync.errors import Conflict
    opened = _open(invocation, defs, database_url, data_dir)
    if opened is None:
        return 1
    model, engine, audit, keyring = opened
    try:
        attributes = _attributes(model, attrs)
        secret = add_user(engine, audit, model, user, role=role, attributes=attributes,
                          password=_password(password_stdin), totp=totp, actor=f"{operator()} (cli)",
                          keyring=keyring)
    except (ValueError, Conflict) as exc:
        print(f"fieldsync users add: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    finally:
        engine.dispose()
    print(f"user {user} added (role {role})")
    _print_second_factor(user, secret)
    return 0


@users.add_command
@command("set", "change a user's role, attributes, password or second factor (their tokens are revoked)")
@click.argument("user")
@click.option("--role", help="a role from entity_defs/roles.yaml")
@_attr_option
@click.option("--unset-attr", "unset", multiple=True, metavar="KEY", help="remove an attribute (repeatable)")
@click.option("--reset-password", is_flag=True, help="set a new password (prompted)")
@_password_stdin_option
@click.option("--totp/--no-totp", default=None, help="enrol a new second factor, or remove it")
@defs_option
@database_options
@pass_invocation
def set_(invocation: Invocation, user: str, role: str | None, attrs: tuple[str, ...], unset: tuple[str, ...],
         reset_password: bool, password_stdin: bool, totp: bool | None, defs: str | None, database_url: str | None,
         data_dir: str | None) -> int:
    """USER: the user's id. Attributes not named keep their values."""
    from fieldsync.auth.users import get_user, set_user
    from fieldsync.errors import NotFound
    opened = _open(invocation, defs, database_url, data_dir)
    if opened is None:
        return 1
    model, engine, audit, keyring = opened
    try:
        current = get_user(engine, user)
        attributes = None
        if attrs or unset:
            attributes = {k: v for k, v in current.attributes.items() if k not in unset}
            attributes.update(_attributes(model, attrs))
        password = _password(password_stdin) if reset_password or password_stdin else None
        secret = set_user(engine, audit, model, user, role=role, attributes=attributes, password=password, totp=totp,
                          actor=f"{operator()} (cli)", keyring=keyring)
        changed = get_user(engine, user)
    except (ValueError, NotFound) as exc:
        print(f"fieldsync users set: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    finally:
        engine.dispose()
    revoked = changed.tokens_after != current.tokens_after
    print(f"user {user} " + ("changed; their tokens are revoked" if revoked
                             else "changed" if changed != current else "unchanged"))
    _print_second_factor(user, secret)
    return 0


def _enabled_command(name: str, help_text: str, enabled: bool):
    @command(name, help_text)
    @click.argument("user")
    @database_options
    @pass_invocation
    def change(invocation: Invocation, user: str, database_url: str | None, data_dir: str | None) -> int:
        from fieldsync.auth.users import disable_user, enable_user
        from fieldsync.errors import NotFound
        engine, audit = open_for_revocation(invocation.config(database_url=database_url, data_dir=data_dir))
        try:
            done = (enable_user if enabled else disable_user)(engine, audit, user, actor=f"{operator()} (cli)")
        except NotFound as exc:
            print(f"fieldsync users {name}: {exc}", file=sys.stderr)
            return 1
        finally:
            engine.dispose()
        state = "enabled" if enabled else "disabled; their tokens are revoked"
        print(f"user {user} {state}" if done else f"user {user} was already {name}d")
        return 0
    return change


users.add_command(_enabled_command("disable", "disable a user: refuse their logins and revoke their tokens", False))
users.add_command(_enabled_command("enable", "enable a disabled user (they log in again)", True))


@users.add_command
@command("list", "list the users: id, role, enabled, second factor, attributes")
@json_option
@database_options
@pass_invocation
def list_(invocation: Invocation, as_json: bool, database_url: str | None, data_dir: str | None) -> int:
    from fieldsync.auth.users import list_users
    engine, _audit = open_for_revocation(invocation.config(database_url=database_url, data_dir=data_dir))
    try:
        found = list_users(engine)
    finally:
        engine.dispose()
    items = [{"user": u.user_id, "role": u.role, "enabled": u.enabled, "totp": u.totp,
              "attributes": json.dumps(dict(u.attributes), sort_keys=True)} for u in found]
    if as_json:
        print(json.dumps([dict(i, attributes=dict(u.attributes)) for i, u in zip(items, found)], indent=2))
    else:
        table(items, ["user", "role", "enabled", "totp", "attributes"])
    return 0

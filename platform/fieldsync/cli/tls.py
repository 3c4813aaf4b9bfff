"""`fieldsync tls dev-cert`: certificates and pins for development (docs/transport-security.md).
Serving TLS itself belongs to the server (fieldsync.api.https_server)."""

from __future__ import annotations

from pathlib import Path

import click

from fieldsync.cli.common import Invocation, action_group, command, data_dir_option, pass_invocation

tls = action_group("tls", "TLS for development: certificates and pins")


@tls.add_command
@command("dev-cert", "write a development CA, a server certificate and a backup key; print their pins")
@click.option("--dir", "directory", help="where the files go (default <DATA_DIR>/tls, var/tls)")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="a DNS name or IP address of the server (repeatable; default localhost, 127.0.0.1, ::1)")
@click.option("--force", is_flag=True, help="replace the files of an earlier run")
@data_dir_option
@pass_invocation
def dev_cert(invocation: Invocation, directory: str | None, hosts: tuple[str, ...], force: bool,
             data_dir: str | None) -> int:
    from fieldsync.crypto.devcert import DEFAULT_HOSTS, make_dev_certificates
    where = Path(directory) if directory else invocation.config(data_dir=data_dir).data_dir / "tls"
    made = make_dev_certificates(where, list(hosts) or DEFAULT_HOSTS, force=force)
    pins = ", ".join(f'"{pin}"' for pin in made.pins)
    print(f"development CA        {made.ca_file}   (the SDK trusts it: ca_file=)")
    print(f"server certificate    {made.cert_file}   for {', '.join(made.hosts)} (90 days)")
    print(f"server key            {made.key_file}   (mode 0600)")
    print(f"backup key            {made.backup_key_file}   (mode 0600; in no certificate yet)")
    print("pins (SPKI SHA-256 of the public keys; give the app both):")
    print(f"  {made.server_pin}   server.key (in use)")
    print(f"  {made.backup_pin}   backup.key (the next certificate's key: rotate without breaking devices)")
    print("serve:")
    print(f"  fieldsync serve --tls-cert {made.cert_file} --tls-key {made.key_file}")
    print("SDK:")
    host = f"[{made.hosts[0]}]" if ":" in made.hosts[0] else made.hosts[0]
    print(f'  HttpTransport("https://{host}:8000", ca_file="{made.ca_file}",')
    print(f"                pins=[{pins}])")
    print("for development only: production certificates come from your CA, its keys from your own process")
    return 0

"""``vi-flow ssh-keys``: the public keys the server's SSH endpoint accepts for task shells."""

from __future__ import annotations

from pathlib import Path

import click

from ..models.limits import is_private_key
from ._lazy import LazyGroup
from ._output import emit_done, emit_json, json_option, table, wants_json, when
from ._specfile import read_text_file
from ._state import state

__all__ = ["ssh_keys"]


@click.group("ssh-keys", cls=LazyGroup)
def ssh_keys() -> None:
    """Register the SSH public keys that task shells and log follows accept."""


@ssh_keys.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List registered keys."""
    items = state().client().ssh_keys.list()
    if wants_json(as_json):
        emit_json(items)
        return
    rows = [(k.key_id, k.name, k.fingerprint, k.added_by or "-", when(k.created_at)) for k in items]
    table(["KEY ID", "NAME", "FINGERPRINT", "ADDED BY", "CREATED"], rows)


@ssh_keys.command("add")
@click.argument(
    "public_key_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--name", help="Display name (default: the file name).")
@click.option(
    "--default",
    "use_default",
    is_flag=True,
    help="Create (once) and register vi-flow's own key pair instead.",
)
@json_option
def add(public_key_file: Path | None, name: str | None, use_default: bool, as_json: bool) -> None:
    """Register PUBLIC_KEY_FILE (such as ~/.ssh/id_ed25519.pub), or --default."""
    client = state().client()
    if use_default == (public_key_file is not None):
        raise click.UsageError("give PUBLIC_KEY_FILE or --default")
    if public_key_file is None:
        pair, key = client.ssh_keys.ensure_default()
        note = f" (private key {pair.private_path})"
    else:
        text = read_text_file(public_key_file, "PUBLIC_KEY_FILE").strip()
        if is_private_key(text):  # never sent: the server needs the public half only
            raise click.BadParameter(
                f"{public_key_file} is a private key; give its public key"
                f" ({public_key_file.name}.pub)",
                param_hint="PUBLIC_KEY_FILE",
            )
        key = client.ssh_keys.create(name or public_key_file.name, text)
        note = ""
    if wants_json(as_json):
        emit_json(key)
    else:
        click.echo(f"{key.key_id} {key.fingerprint}{note}")


@ssh_keys.command("delete")
@click.argument("key_id")
@json_option
def delete(key_id: str, as_json: bool) -> None:
    """Unregister a key."""
    state().client().ssh_keys.delete(key_id)
    emit_done(as_json, {"deleted": key_id}, f"deleted {key_id}")

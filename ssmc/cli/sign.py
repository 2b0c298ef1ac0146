"""``ssmc keygen`` and ``ssmc sign``: Ed25519 keys and signed artifacts (docs/security.md)."""

from __future__ import annotations

import click


@click.command("keygen")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--comment", default=None, help="Text after the key on the .pub line [default: OUT's name].")
@click.option("--force", is_flag=True, help="Replace an existing OUT.key / OUT.pub.")
def keygen_cmd(out: str, comment: str | None, force: bool) -> None:
    """Write a new Ed25519 signing key: OUT.key (private, mode 0600) and OUT.pub.

    \b
    Keep OUT.key on the build machine that signs artifacts; copy OUT.pub to the robots and
    point SSMC_TRUSTED_KEYS at it (or at a folder of .pub files). Prints the key id.
    """
    from ssmc.artifact.signing import generate_key, key_id, load_keyring

    private, public = generate_key(out, comment, force=force)
    ring = load_keyring(public)
    click.echo(f"wrote {private} (private: keep it off the robot) and {public}", err=True)
    click.echo(key_id(ring.keys[0].public))


@click.command("sign")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.argument("key", type=click.Path(exists=True, dir_okay=False))
def sign_cmd(artifact: str, key: str) -> None:
    """Sign ARTIFACT (a directory from `ssmc compile`) with KEY (from `ssmc keygen`).

    \b
    Verifies every file's sha256 first, then writes ARTIFACT/manifest.sig: the Ed25519
    signature of manifest.json, which lists every other file's hash. With SSMC_TRUSTED_KEYS
    set, ssmc_open (and ssmc run/verify/hil) refuses artifacts not signed by a trusted key.
    Prints the key id.
    """
    from ssmc.artifact.signing import sign_artifact

    click.echo(sign_artifact(artifact, key))


COMMANDS = [keygen_cmd, sign_cmd]

"""``lifeboat evidence keygen|verify|report``: signed drill evidence and the compliance report (issue 17)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import click

from drills.evidence import (
    generate_key_pair,
    list_records,
    load_public_key,
    load_signing_key,
    read_records,
    verify_chains,
)
from drills.history import load_history
from drills.report.compliance import build_compliance, render_csv, render_html, render_json
from lifeboat.context import EXIT_FAILED, Session, json_option, pass_session, print_json
from lifeboat.state.records import utc_now
from policies.durations import parse_duration
from policies.errors import UsageError
from policies.model import SecretFile, reveal

ALL_RUNS = 1_000_000  # the compliance report reads every stored drill report


@click.group()
def evidence() -> None:
    """Signed, chained evidence of every drill run, its verification, and the compliance report."""


@evidence.command("keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Private key file.")
def keygen(out: Path) -> None:
    """Write a new Ed25519 key pair: OUT (private, mode 0600: evidence.signing_key) and OUT.pub."""
    public_path = Path(f"{out}.pub")
    for path in (out, public_path):
        if path.exists():
            raise UsageError(f"{path} exists: a key pair is never overwritten (move it away, or choose another --out)")
    private_pem, public_pem = generate_key_pair()
    try:
        descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as private_file:
            private_file.write(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as exc:
        raise UsageError(f"cannot write the key pair at {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out} (private, 0600) and {public_path}")
    click.echo(f"policy:  evidence: {{signing_key: {{file: {out}}}}}")
    click.echo(f"auditors verify with: lifeboat evidence verify --public-key {public_path}")


@evidence.command("verify")
@click.option("--drill", "drill", default=None, help="Only this drill's chain.")
@click.option("--since", "since", default=None, help="Only records of runs started this long ago or later (90d).")
@click.option(
    "--public-key",
    "public_key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The public key (PEM); default: the policy's evidence.signing_key file + .pub.",
)
@json_option(help='Print {"ok", "key_id", "records", "drills", "breaks": [...]} on stdout.')
@pass_session
def verify(session: Session, drill: str | None, since: str | None, public_key: Path | None, as_json: bool) -> None:
    """Check every record's signature and each drill's chain with the public key alone; name each
    broken link. Exit 0 whole, 1 broken."""
    data, where = _public_key_bytes(session, public_key)
    public = load_public_key(data, where=where)
    chains = list_records(session.repository(), drill)
    result = verify_chains(chains, public, since=_since(since))
    if as_json:
        print_json(result.as_dict())
    else:
        for item in result.breaks:
            click.echo(f"BROKEN {item.key}: {item.problem}")
        state = "whole" if result.ok else f"BROKEN ({len(result.breaks)} problem(s))"
        click.echo(f"{result.records} record(s) of {len(result.drills)} drill(s) checked with key {result.key_id}: {state}")
        if not chains:
            click.echo("no evidence records in the repository (evidence.signing_key configured?)")
    if not result.ok:
        click.get_current_context().exit(EXIT_FAILED)


@evidence.command("report")
@click.option("--since", "since", default="90d", show_default=True, help="The period: runs started this long ago or later.")
@click.option("--format", "output_format", type=click.Choice(["html", "json", "csv"]), default="html", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@pass_session
def report(session: Session, since: str, output_format: str, out: Path | None) -> None:
    """The compliance report: per drill and source every restore test, its verdict, RTO and RPO against
    the objectives, segregated scratch or not, the longest gap between successful tests, the sources never
    drilled, and what this shows for DORA Art. 12, ISO 27001 A.8.13 and SOC 2."""
    policy = session.policy()
    now = utc_now()
    start = _since(since)
    assert start is not None
    repository = session.repository()
    document = build_compliance(
        load_history(repository, limit=ALL_RUNS),
        read_records(list_records(repository)),
        drills={name: drill.sources for name, drill in policy.drills.items()},
        sources=list(policy.sources),
        since=start,
        now=now,
    )
    renderers = {"html": render_html, "json": render_json, "csv": render_csv}
    text = renderers[output_format](document)
    if out is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {out}", err=True)


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return utc_now() - parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _public_key_bytes(session: Session, given: Path | None) -> tuple[bytes, str]:
    """The public key's PEM and where it came from: --public-key, the signing key file's .pub, or (an
    inline signing key) derived from the private key."""
    if given is not None:
        return _read(given), str(given)
    secret = session.policy().evidence.signing_key
    if secret is None:
        raise UsageError("no public key: give --public-key FILE (or set evidence.signing_key in the policy)")
    if isinstance(secret, SecretFile):
        return _read(Path(f"{secret.file}.pub")), f"{secret.file}.pub"
    from cryptography.hazmat.primitives import serialization

    public = load_signing_key(reveal(secret) or "").public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "evidence.signing_key"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the public key {path}: {exc.strerror or exc}") from None

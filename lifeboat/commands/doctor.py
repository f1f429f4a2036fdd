"""``lifeboat doctor``: a preflight of every endpoint the policy names, before the first backup."""

from __future__ import annotations

import click

from backup.doctor import Finding, Status, failed
from backup.repository.doctor import doctor as repository_doctor
from backup.sources import source_doctor
from drills.scratch.doctor import doctor as scratch_doctor
from lifeboat.context import EXIT_FAILED, Session, json_option, pass_session, print_json
from lifeboat.notify import build_notifiers
from policies.model import Policy


@click.command()
@json_option(help='Print {"ok", "checks": [{"target", "check", "status", "message", "fix"}]} on stdout.')
@pass_session
def doctor(session: Session, as_json: bool) -> None:
    """Check the repository, each source, the scratch environment and each notifier as the policy
    names them: reachable, credentials, rights, settings. Nothing is backed up or sent; a probe
    object written to the repository is removed. Exit 0 when nothing fails (warnings allowed), 1 otherwise."""
    findings = [_masked(session, finding) for finding in run_checks(session.policy())]
    ok = not failed(findings)
    if as_json:
        print_json({"ok": ok, "checks": [finding.to_dict() for finding in findings]})
    else:
        _table(findings)
        click.echo("all checks passed" if ok else "some checks FAILED: fix what the FIX column says")
    if not ok:
        click.get_current_context().exit(EXIT_FAILED)


def run_checks(policy: Policy) -> list[Finding]:
    """Every finding, in the order repository, sources, scratch, notifiers."""
    findings = repository_doctor(policy.repository)
    for name, settings in policy.sources.items():
        checks = source_doctor(settings.kind)
        if checks is None:
            continue
        try:
            findings += checks(name, settings, repository=policy.repository)
        except Exception as exc:  # noqa: BLE001 - a bug in a check must not hide the other targets
            findings.append(Finding(f"source {name}", "checks", Status.FAIL, f"the checks broke: {exc}"))
    findings += scratch_doctor(policy)
    for notifier in build_notifiers(policy.notify):
        findings += notifier.doctor()
    return findings


def _masked(session: Session, finding: Finding) -> Finding:
    text = session.redactor.text
    return Finding(finding.target, finding.check, finding.status, text(finding.message), text(finding.fix))


def _table(findings: list[Finding]) -> None:
    headers = ("TARGET", "CHECK", "STATUS", "MESSAGE / FIX")
    rows = [
        (
            f.target,
            f.check,
            str(f.status),
            f.message + (f"\n  fix: {f.fix}" if f.fix and f.status is not Status.PASS else ""),
        )
        for f in findings
    ]
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) if rows else len(headers[i]) for i in range(3)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers[:3], widths, strict=True)) + "  " + headers[3])
    for row in rows:
        lines = row[3].split("\n")
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + lines[0])
        for line in lines[1:]:
            click.echo(" " * (sum(widths) + 6) + line)

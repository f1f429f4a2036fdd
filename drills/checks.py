"""Drill checks (README "Drill checks"): after verify, each check of a source runs on the restored
copy as step ``check:<name>``; after every source, each ``command`` check of the drill runs against
all the copies. PASS: the expectation held; FAIL: it did not (the message says what was expected and
what was seen); ERROR: the check could not run (bad SQL, a missing program, a timeout), never a pass.

A command gets an environment of ONLY the documented ``LIFEBOAT_*`` variables that point at the
scratch copies (plus PATH on local scratch): nothing of Lifeboat's own environment, and never a
credential of the repository or a source (a scratch credential that equals one is withheld, and the
step says so). The scratch environment runs it (``ScratchEnvironment.run_command``): local scratch on
this machine, Kubernetes scratch as a Job of the drill namespace from the check's
``image``, reaching the copies by their services' DNS names (``command_view``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backup.checks import captured_result, judge, runner_for
from backup.sources.base import Observation
from drills.faults import DrillContext
from drills.scratch.base import CommandRun
from drills.steps import StepFailed, StepOutcome, StepUnverified
from policies.errors import LifeboatError
from policies.model import CommandCheck, Policy, ReferencesCheck, SourceCheck, secrets_of

NAMED_REFERENCES = 20  # missing references a step names (all are counted)


def step_name(name: str) -> str:
    return f"check:{name}"


def copy_target(ctx: DrillContext) -> Any:
    """What the copy is reached through: the verification's target (not a fault's relay)."""
    target = ctx.main.verify_target()
    return target if target is not None else ctx.source.parse_target(ctx.main.restore_options(direct=True))


def run_source_check(ctx: DrillContext, check: SourceCheck, outcome: StepOutcome) -> None:
    """One check of a source on its restored copy; raises StepFailed / StepUnverified."""
    runner = runner_for(ctx.source.kind)
    try:
        seen = runner.on_copy(ctx.source, ctx.header, copy_target(ctx), check)
        captured: Observation | None = None
        if check.expect.same_as_source:
            captured = (
                captured_result(ctx.header.meta, check.name)
                if runner.captures_at_backup
                else runner.captured(ctx.header, ctx.repository, check)
            )
        judgement = judge(check, seen, captured)
    except LifeboatError as exc:
        raise StepUnverified(f"could not run: {exc}") from exc
    outcome.details = {"seen": seen.shown}
    if not judgement.passed:
        raise StepFailed(judgement.message, seen=seen.shown)
    outcome.message = judgement.message


# ---- references: values of one restored copy that must exist in another ----------------------------


def run_references_check(check: ReferencesCheck, copies: Mapping[str, DrillContext], outcome: StepOutcome) -> None:
    """Take the values ``check.references.origin`` names in its member's copy; each must name
    something in the ``to`` member's copy. FAIL naming the first 20 missing (all counted); ERROR when
    a copy is not there, the values cannot be read, or there are none (a check of nothing proves nothing)."""
    origin, to = check.references.origin, check.references.to
    if absent := [name for name in dict.fromkeys((origin.source, to.source)) if name not in copies]:
        raise StepUnverified(f"not run: no verified copy of {', '.join(absent)} to check")
    source_copy, target_copy = copies[origin.source], copies[to.source]
    try:
        reader = runner_for(source_copy.source.kind)
        values = reader.reference_values(source_copy.source, source_copy.header, copy_target(source_copy), origin)
        unique = list(dict.fromkeys(values))
        finder = runner_for(target_copy.source.kind)
        missing = finder.missing_references(target_copy.source, target_copy.header, copy_target(target_copy), unique)
    except LifeboatError as exc:
        raise StepUnverified(f"could not run: {exc}") from exc
    named = missing[:NAMED_REFERENCES]
    outcome.details = {"references": len(unique), "missing_count": len(missing), "missing": named}
    if not unique:
        raise StepUnverified(f"{origin.source} gave no value to look for in {to.source}: a check of nothing proves nothing")
    if missing:
        more = f" and {len(missing) - len(named)} more" if len(missing) > len(named) else ""
        raise StepFailed(
            f"{len(missing)} of {len(unique)} reference(s) from {origin.source} name nothing in the restored "
            f"{to.source}: {', '.join(named)}{more}",
            missing=named,
            missing_count=len(missing),
        )
    outcome.message = f"all {len(unique)} reference(s) from {origin.source} exist in the restored {to.source}"


# ---- command checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoredCopy:
    """A verified copy a command check may reach: its source, kind, snapshot and how it is reached."""

    source: str
    kind: str
    snapshot: str
    target: Any
    data_dir: str | None = None


def prefix_of(source: str) -> str:
    """``LIFEBOAT_<SOURCE>_``: the source's name upper-cased, ``-`` as ``_``."""
    return "LIFEBOAT_" + source.upper().replace("-", "_") + "_"


def _etcd(target: Any, copy: RestoredCopy) -> dict[str, str]:
    found = {"ETCD_ENDPOINTS": target.endpoint}
    return found | ({"ETCD_DATA_DIR": copy.data_dir} if copy.data_dir else {})


def _clickhouse(target: Any, copy: RestoredCopy) -> dict[str, str]:
    endpoint = target.endpoint
    return {
        "CLICKHOUSE_HOST": endpoint.host,
        "CLICKHOUSE_PORT": str(endpoint.port),
        "CLICKHOUSE_HTTP_PORT": str(endpoint.http_port),
        "CLICKHOUSE_DATABASE": target.database,
        "CLICKHOUSE_USER": endpoint.user,
        "CLICKHOUSE_PASSWORD": endpoint.password,
    }


def _s3(target: Any, copy: RestoredCopy) -> dict[str, str]:
    access_key, secret_key = target.credentials or ("", "")
    return {
        "S3_ENDPOINT_URL": target.endpoint_url or "",
        "S3_BUCKET": target.bucket,
        "S3_PREFIX": target.prefix,
        "S3_ACCESS_KEY_ID": access_key,
        "S3_SECRET_ACCESS_KEY": secret_key,
    }


# What a command learns of each kind's copy, from the target verify reads it through (an etcd
# EtcdEndpointTarget, a ClickHouseTarget, an S3 BucketTarget), by kind: no client library is loaded for it.
_COPY_VARIABLES: Mapping[str, Callable[[Any, RestoredCopy], dict[str, str]]] = {
    "etcd": _etcd,
    "clickhouse": _clickhouse,
    "s3": _s3,
}


def command_environment(
    policy: Policy, drill: str, run_id: str, copies: list[RestoredCopy]
) -> tuple[dict[str, str], list[str]]:
    """The whole environment of a command check (local scratch adds ``PATH``), and the variables
    withheld because their value is a secret of the repository, a source, a notifier or the executor
    (the scratch copy may share one)."""
    protected = set(secrets_of(*(getattr(policy, field) for field in type(policy).model_fields if field != "scratch")))
    env = {
        "LIFEBOAT_DRILL": drill,
        "LIFEBOAT_RUN_ID": run_id,
        "LIFEBOAT_SOURCES": ",".join(copy.source for copy in copies),
    }
    withheld = []
    for copy in copies:
        prefix = prefix_of(copy.source)
        env[prefix + "KIND"] = copy.kind
        env[prefix + "SNAPSHOT"] = copy.snapshot
        variables = _COPY_VARIABLES.get(copy.kind)
        for name, value in (variables(copy.target, copy) if variables else {}).items():
            if value in protected:
                withheld.append(prefix + name)
            else:
                env[prefix + name] = value
    return env, withheld


def run_command_check(
    check: CommandCheck,
    env: dict[str, str],
    withheld: list[str],
    outcome: StepOutcome,
    run: Callable[[CommandCheck, dict[str, str]], CommandRun],
) -> None:
    """Run ``check.command`` with exactly ``env`` where the scratch environment runs it (``run``: this
    machine, or a Job of the drill namespace): exit 0 PASS, non-zero FAIL; a timeout or a program
    that cannot start is ERROR. The tail of its output goes into the step's details."""
    outcome.details = {"command": check.command, "withheld": withheld} if withheld else {"command": check.command}
    done = run(check, env)
    outcome.details["output"] = done.output
    if done.exit_code is None:
        raise StepUnverified(f"could not run {check.command[0]}: {done.problem}", output=done.output)
    if done.exit_code != 0:
        raise StepFailed(f"{' '.join(check.command)} exited with code {done.exit_code} (expected 0)", output=done.output)
    outcome.message = f"{' '.join(check.command)} exited 0 (expected 0)"

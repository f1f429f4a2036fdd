"""A damaged state DB (truncated, garbage, emptied) never stops backups: it is moved aside as
``state.db.damaged-<time>``, a fresh one records the runs again, the team is told once (mail), and
``lifeboat status`` says what happened and where the old file is. Real etcd, a real SMTP sink."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import init_repository
from policy_builder import PolicyBuilder

from backup.servers import EtcdProcess
from lifeboat.cli import cli
from lifeboat.service.serve import LifeboatService

pytestmark = pytest.mark.integration


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


DAMAGE: dict[str, Callable[[Path], None]] = {"truncated": _truncate, "garbage": _garbage, "empty": _empty}


def _config(tmp_path: Path, etcd: EtcdProcess, smtp: Any) -> Path:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state" / "state.db")
    policy.source("k8s-etcd", "etcd", endpoints=[etcd.endpoint])
    policy.email("team", port=smtp.port, to=["ops@example.org"], on=["backup-failure"])
    return init_repository(policy.write(tmp_path / "lifeboat.yaml"))


def _run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def _backs_up(config: Path) -> None:
    """`backup run` ends 0; otherwise the failure shows its output and any exception's traceback."""
    result = _run(config, "backup", "run")
    trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
    assert result.exit_code == 0, f"{result.output[-3000:]}\n{trace}"


def _aside(state: Path) -> list[Path]:
    return sorted(state.parent.glob("state.db.damaged-*"))


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_state_db_is_kept_aside_and_backups_go_on(
    damage: str, etcd_server: EtcdProcess, smtp_inbox: Any, tmp_path: Path
) -> None:
    config = _config(tmp_path, etcd_server, smtp_inbox)
    state = tmp_path / "state" / "state.db"
    for _ in range(3):
        _backs_up(config)
    DAMAGE[damage](state)
    damaged = state.read_bytes()

    done = _run(config, "backup", "run", "--json")
    assert done.exit_code == 0, done.output[-3000:]
    assert json.loads(done.stdout)["errors"] == []
    [aside] = _aside(state)
    assert aside.read_bytes() == damaged  # the evidence, untouched
    assert "damaged" in done.stderr and str(aside) in done.stderr  # the loud warning

    [mail] = smtp_inbox.wait_for(1)
    assert "state DB" in mail["Subject"] and str(aside) in mail.get_body(("plain",)).get_content()

    status = _run(config, "status")
    assert status.exit_code == 0, status.output[-3000:]
    assert "damaged" in status.stdout and str(aside) in status.stdout
    document = json.loads(_run(config, "status", "--json").stdout)
    assert document["state_damage"]["moved_to"] == str(aside)
    [source] = document["sources"]
    assert source["last_success"] is not None  # the history starts again with the run that found the damage

    again = _run(config, "backup", "run")
    assert again.exit_code == 0 and _aside(state) == [aside]  # told once, moved once
    assert len(smtp_inbox.messages) == 1


def test_status_and_serve_move_a_damaged_state_db_aside_too(
    etcd_server: EtcdProcess, smtp_inbox: Any, tmp_path: Path
) -> None:
    config = _config(tmp_path, etcd_server, smtp_inbox)
    state = tmp_path / "state" / "state.db"
    _backs_up(config)
    _garbage(state)
    status = _run(config, "status")
    assert status.exit_code == 0, status.output[-3000:]
    [aside] = _aside(state)
    assert str(aside) in status.stdout
    smtp_inbox.wait_for(1)

    _garbage(state)
    service = LifeboatService(config)
    service.start()
    try:
        assert len(_aside(state)) == 2
        assert service.history.damage() is not None
    finally:
        service.stop()
    smtp_inbox.wait_for(2)


def test_a_new_empty_state_db_is_simply_initialised(etcd_server: EtcdProcess, smtp_inbox: Any, tmp_path: Path) -> None:
    """A zero-byte file where Lifeboat never ran (provisioning created it, with its owner and mode) is
    a new DB, not damage: nothing to keep aside, nobody to alarm."""
    config = _config(tmp_path, etcd_server, smtp_inbox)
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    state.touch(mode=0o600)
    done = _run(config, "backup", "run")
    assert done.exit_code == 0, done.output[-3000:]
    assert _aside(state) == [] and "damaged" not in done.stderr
    assert state.stat().st_mode & 0o777 == 0o600 and state.stat().st_size > 0
    assert smtp_inbox.messages == []

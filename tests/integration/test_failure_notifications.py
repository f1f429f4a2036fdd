"""A failed backup mails the team once; inside a Kubernetes Job (LIFEBOAT_NOTIFICATIONS=off) it leaves that
to the service that submitted the Job, so the team is not mailed twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import init_repository
from policy_builder import PolicyBuilder

from backup.execute import free_port
from lifeboat.cli import cli

pytestmark = pytest.mark.integration


def config(tmp_path: Path, smtp: Any) -> Path:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("k8s-etcd", "etcd", endpoints=[f"http://127.0.0.1:{free_port()}"], timeout="20s")
    policy.email("team", port=smtp.port, to=["ml-platform@example.org"], on=["backup-failure"])
    return init_repository(policy.write(tmp_path / "lifeboat.yaml"))


@pytest.mark.parametrize("inside_a_job", [False, True], ids=["cli", "kubernetes-job"])
def test_a_failed_backup_notifies_unless_a_job_leaves_it_to_the_service(
    tmp_path: Path, smtp_inbox: Any, inside_a_job: bool
) -> None:
    env = {"LIFEBOAT_NOTIFICATIONS": "off"} if inside_a_job else {}
    result = CliRunner().invoke(cli, ["--config", str(config(tmp_path, smtp_inbox)), "backup", "run"], env=env)
    assert result.exit_code == 1
    if inside_a_job:
        assert smtp_inbox.messages == []
    else:
        [mail] = smtp_inbox.wait_for(1)
        assert "k8s-etcd" in mail["Subject"]

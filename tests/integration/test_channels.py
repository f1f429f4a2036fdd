"""The team's channels: apprise (by URL: here apprise's generic ``json://`` webhook to a local HTTP
server) and the ``ping`` dead man's switch (start / success / fail per job), against an HTTP server
that records what it received, and against failing ones: a notifier that fails never changes a
job's outcome or a drill's verdict, and the secret parts of the URLs never show.
"""

from __future__ import annotations

import contextlib
import http.server
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from helpers import http_serving, init_repository
from policy_builder import PolicyBuilder
from report_samples import failing_run, passing_run

from backup.doctor import Status
from backup.execute import free_port
from backup.repository.retry import RetryPolicy
from lifeboat.cli import cli
from lifeboat.logs import Redactor
from lifeboat.notify import AppriseNotifier, PingNotifier, notify, policy_secrets
from lifeboat.notify.wording import backup_failure_message, drill_notification
from policies.loader import parse_policy
from policies.model import AppriseNotifier as AppriseSettings
from policies.model import PingNotifier as PingSettings

pytestmark = pytest.mark.integration

NO_WAIT = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0)
PASSWORD = "hunter2-s3cret"


@dataclass
class Received:
    method: str
    path: str
    body: bytes


@dataclass
class RecordingServer:
    """An HTTP server answering every request with ``status``, remembering each one."""

    status: int
    port: int = 0
    received: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [request.path for request in self.received]


@contextlib.contextmanager
def recording_server(status: int = 200) -> Iterator[RecordingServer]:
    state = RecordingServer(status)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.received.append(Received("POST", self.path, body))
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http_serving(Handler) as port:
        state.port = port
        yield state


def apprise_settings(*urls: Any, **extra: Any) -> AppriseSettings:
    return AppriseSettings.model_validate({"kind": "apprise", "urls": list(urls), "timeout": "5s", **extra})


# --- apprise ---------------------------------------------------------------------------------------


def test_apprise_posts_the_failure_to_the_channel_and_keeps_its_password_out_of_sight() -> None:
    run = failing_run()
    with recording_server() as server, structlog.testing.capture_logs() as logs:
        url = f"json://lifeboat:{PASSWORD}@127.0.0.1:{server.port}/hooks/oncall"
        notifier = AppriseNotifier("chat", apprise_settings(url))
        [result] = notify([notifier], "drill-failure", drill_notification(run))

    assert result.ok and result.attempts == 1
    [request] = server.received
    assert request.path == "/hooks/oncall"
    posted = json.loads(request.body)
    assert posted["type"] == "failure"
    assert "FAIL" in posted["title"] and "FAIL" in posted["message"]
    [sent] = [line for line in logs if line["event"] == "notify.sent"]
    assert sent["target"].startswith("json://lifeboat:****@127.0.0.1")
    assert PASSWORD not in repr(logs)


def test_apprise_url_from_a_file_and_a_failing_channel_is_reported_masked(tmp_path: Path) -> None:
    secret = tmp_path / "chat-url"
    with recording_server(500) as server:
        secret.write_text(f"json://lifeboat:{PASSWORD}@127.0.0.1:{server.port}/hook\n")
        notifier = AppriseNotifier("chat", apprise_settings({"file": str(secret)}), retry=NO_WAIT, sleep=lambda _: None)
        result = notifier.send(backup_failure_message("etcd", "connection refused"))

    assert not result.ok and result.attempts == NO_WAIT.attempts == len(server.received)
    assert result.error is not None and "json://lifeboat:****@127.0.0.1" in result.error
    assert PASSWORD not in result.error


def test_apprise_sends_each_url_once_and_retries_only_the_one_that_failed() -> None:
    with recording_server(200) as good, recording_server(503) as bad:
        settings = apprise_settings(f"json://127.0.0.1:{good.port}/a", f"json://127.0.0.1:{bad.port}/b")
        result = AppriseNotifier("chat", settings, retry=NO_WAIT, sleep=lambda _: None).send(
            drill_notification(passing_run())
        )
    assert not result.ok
    assert len(good.received) == 1 and len(bad.received) == NO_WAIT.attempts
    assert json.loads(good.received[0].body)["type"] == "success"


def test_the_secret_parts_of_chat_urls_are_masked_by_the_log_redactor() -> None:
    slack = "slack://T1234ABCD/B5678EFGH/abcdefghijklmnopqrstuvwx/#oncall"
    telegram = "tgram://123456789:AAbcdefghijklmnopqrstuvwxyz012345/987654"
    policy = parse_policy(
        PolicyBuilder("file:///tmp/repo")
        .source("etcd", "etcd", endpoints=["http://127.0.0.1:2379"])
        .notify("chat", "apprise", urls=[slack, telegram])
        .text(),
        label="lifeboat.yaml",
        env={},
    )
    redactor = Redactor()
    redactor.add(policy_secrets(policy))
    line = redactor.text("token abcdefghijklmnopqrstuvwx failed; bot 123456789:AAbcdefghijklmnopqrstuvwxyz012345; " + slack)
    assert "abcdefghijklmnopqrstuvwx" not in line and "AAbcdefghijklmnopqrstuvwxyz012345" not in line
    assert "T1234ABCD" not in line and "#oncall" not in redactor.text(slack)
    assert redactor.text("lifeboat.notify sent to oncall") == "lifeboat.notify sent to oncall"


# --- ping ------------------------------------------------------------------------------------------


def ping_settings(**settings: Any) -> PingSettings:
    return PingSettings.model_validate({"kind": "ping", "timeout": "5s", **settings})


def test_ping_uses_the_healthchecks_suffixes_or_explicit_urls() -> None:
    with recording_server() as server:
        base = PingNotifier("hc", ping_settings(url=server.url + "/ping/uuid-1"))
        explicit = PingNotifier("hc2", ping_settings(success=server.url + "/ok", jobs=["backup:*"]))
        for phase in ("start", "success", "fail"):
            base.ping("backup:etcd", phase, f"etcd {phase}")
        assert explicit.ping("backup:etcd", "start", "x") is None  # no start URL: nothing sent
        assert explicit.ping("backup:etcd", "success", "done") is not None
    assert server.paths() == ["/ping/uuid-1/start", "/ping/uuid-1", "/ping/uuid-1/fail", "/ok"]
    assert server.received[2].body == b"etcd fail"
    assert explicit.follows("backup:etcd") and not explicit.follows("drill:nightly")


def backup_policy(tmp_path: Path, ping_url: str, **extra: Any) -> Path:
    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("etcd", "etcd", endpoints=[f"http://127.0.0.1:{free_port()}"], timeout="5s")  # nobody listens
    policy.notify("dms", "ping", url=ping_url, jobs=["backup:*"], timeout="2s")
    for name, settings in extra.items():
        policy.notify(name, **settings)
    return init_repository(policy.write(tmp_path / "lifeboat.yaml"))


def test_a_cli_backup_pings_start_then_fail_with_its_error(tmp_path: Path) -> None:
    with recording_server() as server:
        config = backup_policy(tmp_path, server.url + "/hc/UUID-42")
        result = CliRunner().invoke(cli, ["--config", str(config), "backup", "run"])
    assert result.exit_code == 1
    assert server.paths() == ["/hc/UUID-42/start", "/hc/UUID-42/fail"]
    assert b"backup:etcd ended failed" in server.received[1].body


def test_failing_ping_and_chat_servers_change_no_outcome(tmp_path: Path) -> None:
    """The same failed backup with every notifier's server failing: same exit code, same recorded run."""
    with recording_server(500) as ping, recording_server(500) as chat:
        chat_url = f"json://lifeboat:{PASSWORD}@127.0.0.1:{chat.port}/hook"
        config = backup_policy(
            tmp_path, ping.url + "/hc/UUID", chat={"kind": "apprise", "urls": [chat_url], "on": ["backup-failure"]}
        )
        result = CliRunner().invoke(cli, ["--config", str(config), "backup", "run", "--json"])
    assert result.exit_code == 1
    assert ping.received and chat.received  # they were tried
    assert PASSWORD not in result.output
    status = CliRunner().invoke(cli, ["--config", str(config), "status", "--json"])
    assert PASSWORD not in status.output
    assert '"failed"' in status.output


def test_doctor_checks_each_channel_without_sending_anything() -> None:
    with recording_server() as server:
        understood = AppriseNotifier("chat", apprise_settings(server.url.replace("http://", "json://")))
        assert [finding.status for finding in understood.doctor()] == [Status.PASS]
        nonsense = AppriseNotifier("chat", apprise_settings("nonsense://what"))
        [finding] = nonsense.doctor()
        assert finding.status is Status.FAIL and "does not understand" in finding.message
        reached = PingNotifier("hc", ping_settings(url=server.url + "/ping/uuid-1"))
        assert {finding.status for finding in reached.doctor()} == {Status.PASS}
        assert server.received == []  # doctor never sends
    closed = PingNotifier("hc", ping_settings(url=f"http://127.0.0.1:{free_port()}/ping"))
    assert {finding.status for finding in closed.doctor()} == {Status.FAIL}

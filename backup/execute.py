"""The one place in Lifeboat that runs subprocesses.

Two shapes of child process exist:

* short commands (``etcdctl snapshot save``, ``clickhouse-client``): :func:`run` waits for them,
  captures their output and raises :class:`CommandError` on failure, with secrets masked;
* long-running servers (a scratch etcd for restore verification, the demo's servers):
  :func:`start` returns a :class:`ManagedProcess` whose output goes to a log file and which is
  stopped (and reaped) by ``stop()`` or by leaving its ``with`` block.

Children stay in our process group on purpose, so that a Ctrl-C on the terminal reaches them too;
as a last resort every process still alive at interpreter exit is killed (see ``_reap_at_exit``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from policies.errors import LifeboatError

STDERR_TAIL_LINES = 20
"""How many trailing stderr lines a :class:`CommandError` carries."""

MASK = "***"
_TAIL_READ_BYTES = 64 * 1024


class CommandError(LifeboatError):
    """A command failed: it exited non-zero, timed out or could not be started.

    ``returncode`` is ``None`` when the command never produced an exit code (missing binary,
    timeout). ``stderr_tail`` already has every secret masked.
    """

    def __init__(self, command: str, returncode: int | None, stderr_tail: str, reason: str = "") -> None:
        self.command = command
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        why = reason or f"exited with code {returncode}"
        message = f"{command} {why}"
        if stderr_tail:
            message += f"; stderr tail:\n{stderr_tail}"
        super().__init__(message)


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """Return ``text`` with every non-empty string of ``secrets`` replaced by ``***``.

    Longer secrets are masked first so that a secret containing another is hidden whole.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then close)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1.

    All sockets are held open until every port is chosen, so the ports are pairwise distinct.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    inherit_env: bool = True,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion and return its captured (bytes) stdout and stderr.

    ``env`` is laid over the current environment (it adds or overrides variables); with
    ``inherit_env=False`` it IS the environment, and nothing of ours reaches the command (a drill
    check's program: no credential of Lifeboat's). ``input`` is fed to stdin; without it stdin is
    ``/dev/null`` so a command never waits on a terminal.

    Raises :class:`CommandError` if the binary cannot be started, the command runs longer than
    ``timeout`` seconds (it is killed) or, with ``check``, exits non-zero; every string of
    ``secrets`` is masked as ``***`` in the error.
    """
    args = [os.fspath(arg) for arg in argv]
    command = Path(args[0]).name
    secrets = tuple(secrets)
    try:
        completed = subprocess.run(
            args,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=_merged_env(env) if inherit_env else dict(env or {}),
            check=False,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        tail = _masked_tail(exc.stderr or b"", secrets)
        raise CommandError(command, None, tail, reason=f"timed out after {timeout:g}s") from exc
    except OSError as exc:
        reason = f"could not be started: {mask_secrets(str(exc), secrets)}"
        raise CommandError(command, None, "", reason=reason) from exc
    if check and completed.returncode != 0:
        raise CommandError(command, completed.returncode, _masked_tail(completed.stderr, secrets))
    return completed


def start(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start a long-running process whose stdout and stderr are appended to ``log_path``.

    ``env`` is laid over the current environment. The child keeps our process group (so it gets
    the terminal's Ctrl-C with us). Raises :class:`CommandError` if it cannot be started.
    """
    args = [os.fspath(arg) for arg in argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        try:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=_merged_env(env),
                cwd=cwd,
            )
        except OSError as exc:
            raise CommandError(Path(args[0]).name, None, "", reason=f"could not be started: {exc}") from exc
    return ManagedProcess(popen, log_path)


class ManagedProcess:
    """A long-running child process with a log file; a context manager that stops it on exit."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self._popen = popen
        self.log_path = log_path
        self.command = Path(str(popen.args[0] if isinstance(popen.args, list) else popen.args)).name
        _register_reaper()
        _LIVE_PROCESSES[popen.pid] = self

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has been reaped, else ``None``."""
        return self._popen.poll()

    def alive(self) -> bool:
        """True while the child runs (a zombie counts as dead: ``poll()`` reaps it)."""
        return self._popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """Send SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; reap and return the exit code."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                return self._reap(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        """Send SIGKILL, reap the child and return its exit code."""
        if self.alive():
            self._signal(signal.SIGKILL)
        return self._reap(None)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit by itself; raises ``subprocess.TimeoutExpired`` on timeout."""
        return self._reap(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the log file ("" if it does not exist yet)."""
        return tail_of_file(self.log_path, lines)

    def _signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.send_signal(signum)

    def _reap(self, timeout: float | None) -> int:
        code = self._popen.wait(timeout)
        _LIVE_PROCESSES.pop(self.pid, None)
        return code

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited {self.returncode}"
        return f"<ManagedProcess {self.command} pid={self.pid} {state} log={self.log_path}>"


def tail_of_file(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file, decoded leniently ("" if missing)."""
    try:
        with path.open("rb") as handle:
            return _tail_of_handle(handle, lines)
    except FileNotFoundError:
        return ""


def _tail_of_handle(handle: IO[bytes], lines: int) -> str:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - _TAIL_READ_BYTES))
    text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _masked_tail(stderr: bytes, secrets: Iterable[str]) -> str:
    text = stderr.decode("utf-8", errors="replace")
    tail = "\n".join(text.splitlines()[-STDERR_TAIL_LINES:])
    return mask_secrets(tail, secrets)


def _merged_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if env is None else {**os.environ, **env}


# Children that were started and not yet reaped; killed at interpreter exit so that an unhandled
# error in the parent never leaves a scratch server running.
_LIVE_PROCESSES: dict[int, ManagedProcess] = {}


@functools.cache
def _register_reaper() -> None:
    atexit.register(_reap_at_exit)


def _reap_at_exit() -> None:
    for process in list(_LIVE_PROCESSES.values()):
        process.kill()

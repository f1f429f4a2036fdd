"""The one way tests write a policy file: the document built in code, written with ``yaml.safe_dump``.

    policy = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    policy.source("k8s-etcd", "etcd", endpoints=[etcd.endpoint], retention={"keep_last": 1})
    config = policy.write(tmp_path / "lifeboat.yaml")

Values are plain Python (paths become strings); a test that changes one value changes the document
(``set``) and writes it again. Tests whose point is the YAML text itself (the loader's error line
numbers, ``${ENV}`` interpolation of the text) keep writing their text.
"""

from __future__ import annotations

import copy
from pathlib import Path, PurePath
from typing import Any

import yaml

SENDER = "lifeboat@example.org"


class PolicyBuilder:
    """A policy document: ``repository``, ``state``, ``service``, ``sources``, ``scratch``,
    ``executor``, ``drills`` and ``notify``, each added by the method of that name."""

    def __init__(self, repository: str | PurePath | None = None, *, state: str | PurePath | None = None, **settings: Any):
        """``repository``: its URL, or a local directory (written as a ``file://`` URL); ``settings``:
        the repository's other keys (``s3``, ``encryption``, ``prune``, ``check``...); ``state``: the
        run history's file."""
        self.document: dict[str, Any] = {}
        if repository is not None:
            url = repository if isinstance(repository, str) else f"file://{repository}"
            settings = {"url": url, **settings}
        if settings:
            self.document["repository"] = settings
        if state is not None:
            self.document["state"] = state

    def service(self, **settings: Any) -> PolicyBuilder:
        self.document["service"] = settings
        return self

    def source(self, name: str, kind: str, **settings: Any) -> PolicyBuilder:
        self.document.setdefault("sources", {})[name] = {"kind": kind, **settings}
        return self

    def scratch(self, kind: str | None = None, **sections: Any) -> PolicyBuilder:
        """``scratch``: its ``kind`` (when given) and its sections (``local={...}``, ``kubernetes={...}``...)."""
        self.document["scratch"] = ({"kind": kind} if kind else {}) | sections
        return self

    def executor(self, kind: str | None = None, **sections: Any) -> PolicyBuilder:
        self.document["executor"] = ({"kind": kind} if kind else {}) | sections
        return self

    def drill(self, name: str, **settings: Any) -> PolicyBuilder:
        self.document.setdefault("drills", {})[name] = settings
        return self

    def notify(self, name: str, kind: str, **settings: Any) -> PolicyBuilder:
        self.document.setdefault("notify", {})[name] = {"kind": kind, **settings}
        return self

    def email(self, name: str, *, port: int, to: list[str], on: list[str], sender: str = SENDER) -> PolicyBuilder:
        """An email notifier through the plain-text SMTP server on 127.0.0.1:``port`` (the test sink)."""
        smtp = {"host": "127.0.0.1", "port": port, "starttls": False}
        return self.notify(name, "email", smtp=smtp, **{"from": sender}, to=to, on=on)

    def set(self, path: str, value: Any) -> PolicyBuilder:
        """Set one value by its dotted path (``"sources.k8s-etcd.retention"``), making missing levels."""
        *parents, last = path.split(".")
        node = self.document
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        return self

    def copy(self) -> PolicyBuilder:
        """An independent copy, to change without changing this one."""
        twin = PolicyBuilder()
        twin.document = copy.deepcopy(self.document)
        return twin

    def text(self) -> str:
        """The document as YAML."""
        return yaml.safe_dump(_plain(self.document), sort_keys=False)

    def write(self, path: Path) -> Path:
        """Write the document to ``path`` (its directory is made) and return ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.text())
        return path


def _plain(value: Any) -> Any:
    """What ``yaml.safe_dump`` takes: paths as strings, tuples as lists."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    return value

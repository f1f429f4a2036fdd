"""Reading a policy file: YAML, ``${VAR}`` interpolation, validation, every error at once.

``load_policy`` is the only way code gets a ``Policy``. A file with mistakes raises one
``ConfigError`` that lists all of them, each with its dotted path and, where known, its line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from policies.checks import reference_issues, semantic_issues
from policies.errors import ConfigError, ConfigIssue
from policies.model import UNION_TAGS, Policy

Loc = tuple[str | int, ...]
# ${VAR} or ${VAR:-default}; $${...} is a literal "${...}".
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. In YAML 1.1 ``on:`` (a notifier's events) would be True."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_policy(path: Path, env: Mapping[str, str] | None = None) -> Policy:
    """Read and validate the policy file at ``path``; raise ConfigError listing every problem."""
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(label, [ConfigIssue("", "no such file: pass --config PATH or set LIFEBOAT_CONFIG")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(label, [ConfigIssue("", f"cannot read the file: {exc}")]) from None
    return parse_policy(text, label=label, env=os.environ if env is None else env)


def parse_policy(text: str, *, label: str, env: Mapping[str, str]) -> Policy:
    """Validate policy YAML ``text``; ``label`` names it in errors."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(label, [ConfigIssue("", f"not valid YAML: {problem}", mark.line + 1 if mark else None)]) from None
    if not isinstance(raw, dict):
        raise ConfigError(label, [ConfigIssue("", "the file must be a YAML mapping with sources:, drills:, ...")])

    lines = _line_map(root)
    issues: list[tuple[Loc, str]] = []
    data = _interpolate(raw, (), env, issues)
    broken = [loc for loc, _ in issues]
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc, message = _explain(error, data)
            if not any(loc[: len(b)] == b for b in broken):
                issues.append((loc, message))
    issues += reference_issues(data)
    if policy is not None:
        issues += semantic_issues(policy)
    if issues:
        found = [ConfigIssue(format_path(loc), message, _line_of(loc, lines)) for loc, message in issues]
        found.sort(key=lambda issue: (issue.line or 0, issue.path))
        raise ConfigError(label, found)
    assert policy is not None
    return policy


def format_path(loc: Loc) -> str:
    """``('drills', 'nightly', 'sources', 1)`` -> ``drills.nightly.sources[1]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _interpolate(node: Any, loc: Loc, env: Mapping[str, str], issues: list[tuple[Loc, str]]) -> Any:
    if isinstance(node, dict):
        return {key: _interpolate(value, (*loc, str(key)), env, issues) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(value, (*loc, i), env, issues) for i, value in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        issues.append((loc, f"undefined environment variable ${{{name}}}: export it, or write ${{{name}:-default}}"))
        return ""

    return _VARIABLE.sub(substitute, node)


def _explain(error: ErrorDetails, data: Any) -> tuple[Loc, str]:
    """A pydantic error as (location in the file, plain message)."""
    loc = _file_loc(error["loc"], data)
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "union_tag_invalid":
        known = ", ".join(tag.strip("'") for tag in str(ctx.get("expected_tags", "")).split(", "))
        return (*loc, "kind"), f"unknown kind '{ctx.get('tag')}'; known kinds: {known}"
    if kind == "union_tag_not_found":
        return loc, "missing 'kind' (it says which plug-in this is)"
    if kind == "missing":
        return loc, "required field is missing"
    if kind == "extra_forbidden":
        return loc, f"unknown field '{loc[-1]}' (check the spelling against policies/examples/production.yaml)"
    if loc and loc[-1] == "[key]":
        return loc[:-1], f"name '{error['input']}' must be 1-63 lowercase letters, digits, '-' or '_'"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return loc, message[:1].lower() + message[1:]


def _file_loc(loc: Loc, data: Any) -> Loc:
    """Drop the parts of a pydantic location that are not in the file (discriminator tags)."""
    kept: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and (node.get("kind") == part or part in UNION_TAGS):
            continue  # the tag pydantic adds for a discriminated union
        kept.append(part)
        node = (
            node[part]
            if isinstance(node, dict) and part in node
            else (node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
        )
    return tuple(kept)


def _line_map(root: yaml.Node | None) -> dict[Loc, int]:
    lines: dict[Loc, int] = {}

    def walk(node: yaml.Node, loc: Loc) -> None:
        lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*loc, str(key.value))
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                walk(value, (*loc, i))

    if root is not None:
        walk(root, ())
    return lines


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None

"""What ``policies/`` declares (the kinds a policy file may name, the faults, the shardable kinds) against
the plug-in registries: every declared name has a registered plug-in, and every registered plug-in
can be named in a policy. A new kind that is only half added fails here, not in a user's drill."""

from __future__ import annotations

import importlib
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from backup.sources import SOURCES, source_kind
from drills.faults import FAULTS as FAULT_CLASSES
from drills.scratch import SCRATCH
from lifeboat.notify import NOTIFIERS
from policies.model import FAULTS, SHARDABLE_KINDS, Notifier, Scratch, SourceSettings


def literal_values(annotation: Any) -> set[str]:
    """The strings of a ``Literal[...]`` annotation."""
    assert get_origin(annotation) is Literal, annotation
    return set(get_args(annotation))


def union_kinds(annotated: Any) -> set[str]:
    """The ``kind`` literals of the models in a discriminated union ``Annotated[A | B, Field(...)]``."""
    union, *_ = get_args(annotated)
    assert get_origin(union) in (Union, type(int | str)), union
    kinds: set[str] = set()
    for model in get_args(union):
        assert issubclass(model, BaseModel)
        kinds |= literal_values(model.model_fields["kind"].annotation)
    return kinds


def test_every_source_kind_has_a_registered_source_and_every_source_a_kind() -> None:
    assert union_kinds(SourceSettings) == set(SOURCES)


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_every_registered_source_can_be_loaded_and_says_its_kind(kind: str) -> None:
    declared = source_kind(kind)
    assert declared.name == kind
    module, _, attribute = declared.source.partition(":")
    source_class = getattr(importlib.import_module(module), attribute)
    assert source_class.kind == kind


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_a_kinds_target_options_are_its_own_and_never_a_shared_option(kind: str) -> None:
    """``lifeboat restore`` takes every kind's flags; a source refuses the ones not in its declaration."""
    options = source_kind(kind).target_options
    assert len(set(options)) == len(options)
    assert not set(options) & {"snapshot", "at", "dry_run", "yes", "json", "target"}
    others = {name for other in SOURCES if other != kind for name in source_kind(other).target_options}
    assert not set(options) & others, "a target option of two kinds could not tell which kind it was meant for"


def test_every_declared_fault_is_registered_under_its_own_name() -> None:
    assert set(FAULTS) == set(FAULT_CLASSES)
    assert {name: factory.name for name, factory in FAULT_CLASSES.items()} == {name: name for name in FAULTS}


def test_every_scratch_kind_has_a_registered_environment() -> None:
    assert literal_values(Scratch.model_fields["kind"].annotation) == set(SCRATCH)


def test_every_notifier_kind_has_a_registered_notifier() -> None:
    assert union_kinds(Notifier) == set(NOTIFIERS)


def test_the_shardable_kinds_are_source_kinds_with_a_registered_merge() -> None:
    assert set(SHARDABLE_KINDS) == {kind for kind in SOURCES if source_kind(kind).part_merge}
    assert set(SHARDABLE_KINDS) <= set(SOURCES)


def test_every_executor_kind_runs_here_or_has_a_registered_executor() -> None:
    from lifeboat.operations import REMOTE_EXECUTORS
    from policies.model import Executor

    assert literal_values(Executor.model_fields["kind"].annotation) == {"local", *REMOTE_EXECUTORS}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_every_kind_whose_settings_take_checks_has_a_check_runner(kind: str) -> None:
    """A source's ``checks:`` are run by its kind's runner (``SourceKind.checks``): a kind that accepts
    checks in the policy and has no runner would leave them unrun at every drill."""
    from backup.sources import check_runner

    settings = next(
        model
        for model in get_args(get_args(SourceSettings)[0])
        if kind in literal_values(model.model_fields["kind"].annotation)
    )
    runner = check_runner(kind)
    assert ("checks" in settings.model_fields) == (runner is not None)
    assert runner is None or isinstance(runner.captures_at_backup, bool)

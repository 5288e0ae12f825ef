"""The CLI convention (README "Command-line convention"), checked by walking the parser."""

from __future__ import annotations

import argparse

import pytest

from replay.cli import NEEDS_LAKE, build_parser
from replay.commands import COMMANDS

#: Commands that write the lake's audit ledger: each takes --reason.
LEDGER_WRITERS = {"run", "recover", "rollback", "erase", "follow", "optimize", "vacuum", "archive"}
#: ... and those where it is required (the operation changes what the tables hold; `run`
#: checks it itself, since an up-to-date lake needs none).
REASON_REQUIRED = {"rollback", "erase"}
#: Commands that run tasks: each takes --executor auto|local|ray and --address.
RUNS_TASKS = {"run", "plan", "experiment", "erase", "follow"}
#: Commands that change a lake and can show their plan first.
DRY_RUN = {"run", "erase", "optimize", "vacuum", "archive"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    ap = build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


def test_every_parsed_command_has_a_function_and_back():
    assert set(_subcommands()) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_flag_and_argument_has_help(name):
    p = _subcommands()[name]
    missing = [a.dest for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, f"replay {name}: no help for {missing}"


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_common_flags(name):
    flags = _flags(_subcommands()[name])
    assert "--json" in flags and "--debug" in flags, name
    if name in NEEDS_LAKE:
        assert "--lake" in flags and "--storage-option" in flags, name


def test_debug_only_on_commands():
    top = build_parser()
    assert "--debug" not in _flags(top)


@pytest.mark.parametrize("name", sorted(LEDGER_WRITERS))
def test_ledger_writers_take_a_reason(name):
    flags = _flags(_subcommands()[name])
    assert "--reason" in flags, f"replay {name} writes the ledger but takes no --reason"
    assert flags["--reason"].required == (name in REASON_REQUIRED), name


@pytest.mark.parametrize("name", sorted(RUNS_TASKS))
def test_executor_flags_are_one_convention(name):
    flags = _flags(_subcommands()[name])
    ex = flags["--executor"]
    assert list(ex.choices) == ["auto", "local", "ray"] and ex.default == "auto", name
    assert "--address" in flags


def test_executor_only_where_tasks_run():
    for name, p in _subcommands().items():
        assert ("--executor" in _flags(p)) == (name in RUNS_TASKS), name


def test_dry_run_where_a_plan_can_be_shown():
    for name, p in _subcommands().items():
        assert ("--dry-run" in _flags(p)) == (name in DRY_RUN), name


def test_format_means_a_file_format():
    for name, p in _subcommands().items():
        fmt = _flags(p).get("--format")
        if fmt is not None:
            assert set(fmt.choices) <= {"jsonl", "bronze-parquet"}, name


def test_tenant_always_repeats():
    for name, p in _subcommands().items():
        t = _flags(p).get("--tenant")
        if t is not None:
            assert isinstance(t, argparse._AppendAction), f"replay {name}: --tenant must repeat"

"""The help of both command lines: every option and command explained, in plain text."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from appliance.cli import _parser as satellite_parser
from groundcontrol.cli import build_parser as groundcontrol_parser

MARKUP = re.compile(r"``|`|:(func|class|mod|meth|attr|data):")


def walk(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, f"{path} {name}")


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return [*walk(groundcontrol_parser(), "groundcontrol"), *walk(satellite_parser(), "satellite")]


@pytest.mark.parametrize(("path", "parser"), parsers(), ids=[p for p, _ in parsers()])
def test_every_option_and_command_has_plain_help(
    path: str, parser: argparse.ArgumentParser
) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{path} {choice.dest}: command without help"
            continue
        assert action.help, f"{path} {action.option_strings or action.dest}: no help text"
    text = parser.format_help()
    assert not MARKUP.search(text), f"{path}: docstring markup in --help:\n{text}"


def test_json_only_where_it_changes_the_output() -> None:
    with_json = {
        path
        for path, parser in parsers()
        if any("--json" in a.option_strings for a in parser._actions)
    }
    assert with_json == {
        "groundcontrol migrate",
        "groundcontrol admin token create",
        "groundcontrol admin token list",
        "groundcontrol admin token revoke",
        "groundcontrol group list",
        "groundcontrol satellite list",
        "groundcontrol satellite create",
        "groundcontrol satellite join-token",
        "groundcontrol status",
        "groundcontrol credential list",
        "groundcontrol bundle export",
        "groundcontrol reports import",
        "satellite status",
        "satellite gc",
    }
    with pytest.raises(SystemExit) as exit_info:
        groundcontrol_parser().parse_args(["serve", "--json"])
    assert exit_info.value.code == 2


def test_satellite_list_status_names_its_values(capsys: pytest.CaptureFixture[str]) -> None:
    from groundcontrol.status import SUMMARIES

    args = groundcontrol_parser().parse_args(["satellite", "list", "--status", "failing"])
    assert args.status == "failing"
    with pytest.raises(SystemExit):
        groundcontrol_parser().parse_args(["satellite", "list", "--status", "broken"])
    err = capsys.readouterr().err
    assert "invalid choice: 'broken'" in err
    for value in SUMMARIES:
        assert value in err


def test_satellite_update_help_says_it_replaces() -> None:
    parser = dict(parsers())["groundcontrol satellite update"]
    helps = {a.dest: a.help or "" for a in parser._actions}
    assert helps["group"].startswith("replaces")
    assert helps["label"].startswith("replaces")

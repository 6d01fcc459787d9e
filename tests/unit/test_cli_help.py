"""`seespeaker --help` and each command's `--help`: what it does, from the docstring, with an example."""
from __future__ import annotations

import argparse

import pytest

from trainer.cli import build_parser, main

COMMANDS = [["export"], ["prior"], ["generate"], ["render"], ["config"], ["config", "show"], ["runs"],
            ["runs", "list"], ["runs", "show"], ["runs", "compare"], ["runs", "sync"]]


def help_text(words: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_the_top_level_help_shows_a_first_session_and_where_to_read_more(capsys):
    text = help_text([], capsys)
    assert "seespeaker train experiment=tiny stage=conre" in text
    assert "seespeaker generate --audio" in text and "seespeaker <command> --help" in text


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_each_command_says_what_it_does_with_an_example(words, capsys):
    text = help_text(words, capsys)
    assert "Example" in text and f"seespeaker {words[0]} " in text.split("Example", 1)[1]
    assert "``" not in text  # plain text, not the reStructuredText of a module docstring


def summaries(parser: argparse.ArgumentParser) -> tuple[dict[str, str], dict[str, argparse.ArgumentParser]]:
    """(action -> the one-line help listed under the parser, action -> its own parser)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {c.dest: c.help for c in action._choices_actions}, action.choices


@pytest.mark.parametrize("group", ["config", "runs"])
def test_each_action_summary_is_a_whole_sentence(group):
    helps = summaries(summaries(build_parser())[1][group])[0]
    assert helps and all(text.endswith(".") for text in helps.values()), helps

"""``corpus`` builds only the parser of the command it runs (when it is one of main's own), and
that parser is the whole parser's: same options, same parse, same help."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from corpus.cli.main import CORE_COMMANDS, build_parser, chosen_command
from corpus.cli.parsing import commands

ARGVS = {
    "host": ["host", "--until-idle", "--timeout", "5", "--only", "a", "b", "--port", "0"],
    "status": ["status", "--json", "--limit", "3", "--ack"],
    "sets": ["sets", "--domain", "birds", "--tag", "red", "--limit", "10"],
    "transform": ["transform", "--domain", "birds", "--name", "thumbnail", "--tversion", "1", "--args", '{"size": 8}'],
    "upload": ["-v", "upload", "drop", "--domain", "birds", "--version", "v1", "--concurrency", "8", "--dry-run", "--json"],
    "sample": ["sample", "--count", "3", "--seed", "7"],
}


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sub = action.choices[name]
    assert isinstance(sub, argparse.ArgumentParser)
    return sub


@pytest.mark.parametrize("name", list(CORE_COMMANDS))
def test_the_one_command_parser_is_the_whole_parsers(name: str) -> None:
    argv = ARGVS[name]
    assert chosen_command(argv) == name
    alone, whole = build_parser(name), build_parser()
    assert commands(alone) == [name]
    assert vars(alone.parse_args(argv)) == vars(whole.parse_args(argv))
    assert _sub(alone, name).format_help() == _sub(whole, name).format_help()  # examples included


def test_anything_else_gets_the_whole_parser() -> None:
    for argv in ([], ["--help"], ["-h"], ["-vh"], ["--verb", "upload"], ["uplod"], ["pull", "x:1", "out"], ["trainset", "list"]):
        assert chosen_command(argv) is None, argv
    assert set(CORE_COMMANDS) < set(commands(build_parser()))


def test_corpus_help_lists_every_command_and_a_command_help_its_examples() -> None:
    every = commands(build_parser())
    top = subprocess.run([sys.executable, "-m", "corpus", "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    assert all(name in top.stdout for name in every) and len(every) > len(CORE_COMMANDS)
    up = subprocess.run([sys.executable, "-m", "corpus", "upload", "--help"], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0 and "examples:" in up.stdout and "--concurrency" in up.stdout, up.stdout
    wrong = subprocess.run([sys.executable, "-m", "corpus", "uplod"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "did you mean 'upload'?" in wrong.stderr, wrong.stderr

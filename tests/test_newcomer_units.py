"""Units behind issue 23: the MD5 spelling, bounded integers, JSON arguments, suggestions, progress batches."""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging

import pytest

from corpus.app.progress import Progress
from corpus.cli.parsing import bounded_int, json_arg, suggestion
from corpus.domain.display import md5_shown
from corpus.upload.plan import Action, decide


def test_md5_is_shown_in_base64_as_azure_spells_content_md5():
    digest = hashlib.md5(b"robin")
    assert md5_shown(digest.hexdigest()) == base64.b64encode(digest.digest()).decode()
    assert md5_shown("") == "" and md5_shown("unknown") == "unknown" and md5_shown("00") == "00"
    conflict = decide(hashlib.md5(b"a").hexdigest(), None, hashlib.md5(b"b").hexdigest())
    assert conflict.action is Action.CONFLICT
    assert base64.b64encode(hashlib.md5(b"b").digest()).decode() in conflict.reason
    assert hashlib.md5(b"b").hexdigest() not in conflict.reason


def test_integers_are_bounded_and_never_converted_past_the_digit_limit():
    parse = bounded_int(1, 100)
    assert parse("42") == 42 and parse("+7") == 7
    for bad in ("0", "101", "-1", "1e3", "4.0", "", "9" * 5001, "1" * 20):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_json_arguments_are_one_line_errors():
    assert json_arg('{"size": 3}', "--args") == {"size": 3} and json_arg(None, "--args") is None
    for bad in ('{"size": ' + "9" * 5001 + "}", "{nope", "x" * 70_000):
        with pytest.raises(ValueError, match="--args"):
            json_arg(bad, "--args")


def test_suggestions_name_the_nearest_name_or_nothing():
    assert suggestion("sest", ["sets", "status", "sample"]) == " (did you mean 'sets'?)"
    assert suggestion("zzzz", ["sets", "status"]) == ""


def test_progress_writes_one_line_per_batch_and_the_rest_on_flush(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    progress = Progress("ingested", batch=3, max_age=5.0, clock=lambda: now[0])
    progress._ticker = object()  # type: ignore[assignment]  # no background thread: the test drives the clock
    with caplog.at_level(logging.INFO, logger="corpus.progress"):
        for _ in range(7):
            now[0] += 0.5
            progress.done("birds/v1")
        progress.flush(older_than=5.0)  # the last one is 0.5 s old: not yet
        assert [r.getMessage() for r in caplog.records] == ["ingested 3 (birds/v1) in 1.0 s", "ingested 3 (birds/v1) in 1.0 s"]
        now[0] += 5.0
        progress.flush(older_than=5.0)
    assert caplog.records[-1].getMessage() == "ingested 1 (birds/v1) in 5.0 s"


def test_mistyped_commands_and_options_suggest_the_intended_one(capsys: pytest.CaptureFixture[str]):
    from corpus.cli.main import build_parser

    for argv, want in (
        (["sest"], "unknown command 'sest' (did you mean 'sets'?)"),
        (["sets", "--domian", "birds"], "unknown option '--domian' (did you mean '--domain'?)"),
        (["trainset", "craete"], "(did you mean 'create'?)"),
        (["host", "--timeout", "nan"], "not a finite number: 'nan'"),
        (["trainset", "create", "--name", "a", "--version", "1", "--timeout", "1e999"], "not a finite number"),
    ):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2 and want in capsys.readouterr().err

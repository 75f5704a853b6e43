"""steer serve's bad options: exit code 2 and one line naming the problem, before any model loads."""

from __future__ import annotations

import sys

import pytest

import steer.data.models
from steer.cli import main


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("a model was loaded for bad options")

    monkeypatch.setattr(steer.data.models, "load_models", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be in [0, 65536)"),
    (["--max-waiting", "0"], "--max-waiting must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--max-n", "-1"], "--max-n must be >= 1"),
    (["--max-request-bytes", "0"], "--max-request-bytes must be >= 1"),
    (["--base", "somewhere"], "--base needs --expert"),
    (["--expert", "somewhere"], "--expert needs --real"),
    (["--top-p", "2"], "--top-p"),
    (["--temperature", "-1"], "--temperature"),
    (["--chat-template", "/no/such/template.jinja"], "/no/such/template.jinja"),
    (["--per-example-kv", "--negative-mode", "separate"], "--per-example-kv: per_example_kv applies to negative_mode 'concat'"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_bad_options_are_one_line_exit_2(capsys, argv, message):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steer serve: error:") and message in err and "\n" not in err, err


def test_without_the_serve_extra_it_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    for name in [m for m in sys.modules if m.startswith("steer.serving.app")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[serve]"' in err and "fastapi" in err

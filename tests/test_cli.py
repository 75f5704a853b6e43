from steer.cli import main


def test_info_lists_the_torch_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends (every op): " in out and "torch" in out


def test_version_and_missing_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip()
    assert main([]) == 2


def test_every_command_has_a_description_and_the_seed_help_says_what_records_show(capsys):
    import pytest

    for command in ("info", "generate", "eval", "sweep", "tune", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"usage: steer {command}") and lines[2].strip(), f"steer {command} --help has no description"
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "sample i uses seed + i" not in help_text and "the seeds in the records can skip numbers" in help_text


def test_argparse_errors_are_one_line(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--n", "many"])
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2 and err == ["steer generate: error: argument --n: invalid int value: 'many' (see steer generate --help)"]


def test_eos_exempt_without_negatives_is_a_one_line_warning(capsys, tmp_path):
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--out", str(out), "--n", "2", "--max-new-tokens", "3", "--eta", "0", "--eos-exempt", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and len(out.read_text().splitlines()) == 2
    assert "steer generate: warning: --eos-exempt changes nothing at --eta 0: there are no negatives to exempt" in err

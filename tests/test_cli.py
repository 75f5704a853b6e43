from steer.cli import main


def test_info_lists_the_torch_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends (every op): " in out and "torch" in out


def test_version_and_missing_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip()
    assert main([]) == 2

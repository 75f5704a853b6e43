"""The README's fresh-machine commands are what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```bash\n")[1:]
    return [block.split("```")[0].strip() for block in blocks]


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) >= 2 and "pytest" in commands[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines


def test_first_command_runs_the_main_job():
    first = readme_commands()[0]
    # the demo needs the data extra (metrics, plots, pyjokes, peft) and nothing beyond pip
    assert 'pip install -e ".[data]"' in first and first.endswith("steer demo")

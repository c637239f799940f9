"""The README's two commands stay true: CI runs the test command verbatim."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_ci_runs_the_readme_test_command_verbatim():
    commands = readme_commands()
    test_command = [c for c in commands if "pytest" in c]
    assert len(test_command) == 1, commands
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command[0] in ci_lines


def test_demo_command_names_files_that_exist():
    (demo,) = [c for c in readme_commands() if "tensorboard --logdir" in c]
    for path in re.findall(r"python (\S+\.py)", demo):
        assert (ROOT / path).is_file(), path
    assert "--host 127.0.0.1" in demo

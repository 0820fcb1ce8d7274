"""The README's test command is the one CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "pytest" in line and line.startswith("pip install"))
    ci_line = next(line for line in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in line)
    assert ci_line.replace(" -q ", " ").replace("pip install -q", "pip install") == command

"""The README's set-up commands, scripts/serve and scripts/test: they work on a stock Debian
Python (which refuses `pip install .` outside a virtual environment) and install into .venv only."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import server

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["serve", "test"]


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", markdown, re.S)


def test_the_readme_set_up_commands_are_the_scripts():
    commands = "".join(shell_blocks((ROOT / "README.md").read_text(encoding="utf-8")))
    assert "./scripts/serve" in commands and "./scripts/test" in commands
    # A stock Debian or Ubuntu Python refuses this outside a virtual environment.
    assert not re.search(r"pip install \.", commands), commands
    for name in SCRIPTS:
        assert (ROOT / "scripts" / name).stat().st_mode & 0o111, f"scripts/{name} is not executable"


@pytest.mark.parametrize("name", [*SCRIPTS, "venv.sh"])
def test_a_script_installs_python_packages_into_the_project_venv_only(name):
    text = (ROOT / "scripts" / name).read_text(encoding="utf-8")
    for line in text.splitlines():
        if re.search(r"\bpip\b.*\binstall\b", line) and not line.lstrip().startswith("#"):
            assert '"$VENV/bin/python" -m pip install' in line, line
    assert "python3 -m pytest" not in text, "pytest must run with the Python of .venv"


def test_serve_runs_the_montybase_of_the_venv_with_your_arguments(tmp_path):
    stamp = ROOT / ".venv" / "montybase-installed"
    if not stamp.exists():
        pytest.skip("no .venv yet (scripts/test or scripts/serve makes it)")
    done = subprocess.run([str(ROOT / "scripts" / "serve"), "--version"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"montybase {server.__version__}"
    assert list(tmp_path.iterdir()) == [], "serve runs in your folder and --version creates nothing"

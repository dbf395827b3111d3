"""What the packages carry: one version everywhere, `--version`, the license, the npm package's files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import montybase
import python_client
import server

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_written_once_and_every_package_says_the_same():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "montybase.server.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", server.__version__)
    assert python_client.__version__ == montybase.__version__ == server.__version__
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    assert package["version"] == lock["version"] == lock["packages"][""]["version"] == server.__version__


@pytest.mark.parametrize("command", [[sys.executable, "-m", "server", "--version"], ["montybase", "--version"]],
                         ids=["python-m-server", "console-script"])
def test_version_prints_the_version_and_exits_0(command, tmp_path):
    if command[0] == "montybase":
        found = shutil.which("montybase", path=f"{Path(sys.executable).parent}")
        if found is None:
            pytest.skip("the montybase console script is not installed beside this interpreter")
        command = [found, *command[1:]]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"montybase {server.__version__}"
    assert list(tmp_path.iterdir()) == [], "--version must not create a config"


SHADOWS = ("server.py", "python_client.py")


def test_a_users_server_py_or_python_client_py_does_not_shadow_the_package(tmp_path):
    for name in SHADOWS:
        (tmp_path / name).write_text('print("shadow")\n', encoding="utf-8")
    code = ("from montybase import *\n"
            "db = Montybase()\n"
            "doc(db, 'scores', 'ada').set({'score': 3})\n"
            "print(doc(db, 'scores', 'ada').get())\n"
            "db.close()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["{'score': 3}"]
    assert [(tmp_path / name).read_text(encoding="utf-8") for name in SHADOWS] == ['print("shadow")\n'] * 2


def test_the_old_names_server_and_python_client_are_the_same_modules():
    import montybase.server.errors
    import server.errors

    assert server is montybase.server and server.errors is montybase.server.errors
    assert python_client is montybase.client and python_client.Montybase is montybase.Montybase
    assert server.errors.__spec__.name == "montybase.server.errors"


def test_the_license_is_mit_and_the_build_understands_its_spdx_form():
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "Montybase contributors" in license_text
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["license"] == "MIT"
    # `license = "MIT"` (PEP 639) needs setuptools 77 or later to build.
    (requirement,) = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.fullmatch(r"setuptools>=(\d+)(\.[\d.]+)?", requirement).group(1)) >= 77
    assert json.loads((ROOT / "package.json").read_text(encoding="utf-8"))["license"] == "MIT"


def test_the_npm_package_names_its_repository_and_ships_a_readme_of_the_client():
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    assert package["homepage"].startswith("https://") and package["repository"]["url"].endswith(".git")
    readme = (ROOT / "js_client" / "README.md").read_text(encoding="utf-8")
    assert 'import { Montybase, doc } from "montybase"' in readme
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    done = subprocess.run(["npm", "pack", "--dry-run", "--json", "--ignore-scripts"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shipped = {entry["path"] for entry in json.loads(done.stdout)[0]["files"]}
    assert {"js_client/README.md", "js_client/index.js", "js_client/index.d.ts", "LICENSE"} <= shipped
    assert not any(path.startswith(("tests/", "server/", ".venv/")) for path in shipped), shipped


def test_the_project_virtual_environment_is_never_committed():
    assert ".venv/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()

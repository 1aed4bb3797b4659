"""The ./mydocker launcher: runs the CLI from the checkout's venv wherever it is called from."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def launch(argv0: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([argv0, "version"], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_callers_directory_cannot_shadow_the_cli(tmp_path):
    # A directory of the caller's with its own cli/ package and services.py.
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "__init__.py").write_text("raise SystemExit('shadowed cli')\n")
    (tmp_path / "services.py").write_text("raise SystemExit('shadowed services')\n")
    result = launch(str(REPO / "mydocker"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mydocker ")


def test_relative_path_and_symlink_on_path(tmp_path):
    relative = os.path.relpath(REPO / "mydocker", REPO / "cli")
    assert launch(relative, REPO / "cli").stdout.startswith("mydocker ")
    link = tmp_path / "mydocker"
    link.symlink_to(REPO / "mydocker")
    assert launch(str(link), tmp_path).stdout.startswith("mydocker ")

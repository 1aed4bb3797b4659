"""The committed generated code in protos/ is exactly what scripts/gen-protos makes, and buf lint passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "tools" / "node_modules" / ".bin" / "buf"


def generated_files(protos: Path) -> dict[str, bytes]:
    """Everything under protos/ except the .proto sources and bytecode, by path relative to protos/."""
    return {
        str(path.relative_to(protos)): path.read_bytes()
        for path in sorted(protos.rglob("*"))
        if path.is_file() and path.suffix != ".proto" and "__pycache__" not in path.parts
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    env = dict(os.environ, MYDOCKER_PYTHON=sys.executable)
    subprocess.run([REPO / "scripts" / "gen-protos", tmp_path], check=True, env=env, capture_output=True)
    fresh = generated_files(tmp_path / "protos")
    committed = generated_files(REPO / "protos")
    assert fresh, "scripts/gen-protos generated nothing"
    problems = [f"missing from the repo: protos/{name}" for name in sorted(fresh.keys() - committed.keys())]
    problems += [f"not generated (stale or hand-written): protos/{name}" for name in sorted(committed.keys() - fresh.keys())]
    problems += [
        f"differs from generated code: protos/{name}"
        for name in sorted(fresh.keys() & committed.keys())
        if fresh[name] != committed[name]
    ]
    assert not problems, "run scripts/gen-protos and commit the result:\n" + "\n".join(problems)


def test_buf_lint() -> None:
    if not os.access(BUF, os.X_OK):
        pytest.fail(f"buf is not installed at {BUF}: run scripts/test, which installs tools/ with npm ci")
    result = subprocess.run([BUF, "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"

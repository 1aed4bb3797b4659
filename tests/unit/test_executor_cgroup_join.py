"""Joining cgroups by a process's own write: v1 `tasks` files for a single thread, cgroup.procs otherwise."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from services.common.ctl import REPO
from services.executor import cgroup_join


def fake_cgroups(root: Path, names: list[str]) -> list[Path]:
    directories = []
    for name in names:
        directory = root / name
        directory.mkdir()
        (directory / "tasks").write_text("")
        (directory / "cgroup.procs").write_text("")
        directories.append(directory)
    return directories


def test_a_single_threaded_process_writes_zero_to_each_tasks_file(tmp_path: Path):
    directories = fake_cgroups(tmp_path, ["cpu", "memory"])
    files = [str(directory / "tasks") for directory in directories]
    # A fresh interpreter: one thread, as the shim, the init and the exec helper are.
    code = f"from services.executor import cgroup_join; assert cgroup_join.thread_count() == 1; cgroup_join.join({files!r})"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    assert [(d / "tasks").read_text() for d in directories] == ["0", "0"]
    assert [(d / "cgroup.procs").read_text() for d in directories] == ["", ""]


def test_a_process_with_threads_moves_whole_through_cgroup_procs(tmp_path: Path):
    (directory,) = fake_cgroups(tmp_path, ["pids"])
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert cgroup_join.thread_count() >= 2
        cgroup_join.join([str(directory / "tasks")])
    finally:
        release.set()
        other.join()
    assert (directory / "tasks").read_text() == ""
    assert (directory / "cgroup.procs").read_text() == "0"


def test_v2_files_are_written_as_given(tmp_path: Path):
    (directory,) = fake_cgroups(tmp_path, ["leaf"])
    cgroup_join.join([str(directory / "cgroup.procs")])
    assert (directory / "cgroup.procs").read_text() == "0"


def test_thread_count_reads_past_a_command_name_with_spaces_and_parentheses():
    code = (
        "import threading; from services.executor import cgroup_join, statefiles\n"
        "statefiles.set_comm('a) b ) 9 9')\n"
        "release = threading.Event(); thread = threading.Thread(target=release.wait); thread.start()\n"
        "print(cgroup_join.thread_count()); release.set(); thread.join()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "2"

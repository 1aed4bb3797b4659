"""The executor's trash: state dirs renamed aside at once, deleted after the reply, leftovers swept at start."""

from __future__ import annotations

from pathlib import Path

from services.executor.plan import is_container_id
from services.executor.trash import Trash, is_trash, trash_name


def state_dir(parent: Path, name: str) -> Path:
    directory = parent / name
    (directory / "sub").mkdir(parents=True)
    (directory / "plan.json").write_text("{}")
    (directory / "sub" / "file").write_text("x")
    return directory


def test_a_discarded_directory_is_gone_at_once_and_deleted_by_close(tmp_path: Path):
    trash = Trash(tmp_path)
    directory = state_dir(tmp_path, "1234567890")
    trash.discard(directory)
    assert not directory.exists()  # the name is free before the reply
    trash.close()
    assert list(tmp_path.iterdir()) == []


def test_discarding_what_does_not_exist_is_nothing(tmp_path: Path):
    trash = Trash(tmp_path)
    trash.discard(tmp_path / "missing")
    trash.close()
    assert list(tmp_path.iterdir()) == []


def test_sweep_deletes_what_an_earlier_process_left_renamed_and_nothing_else(tmp_path: Path):
    leftover = state_dir(tmp_path, trash_name("1234567890"))
    kept = state_dir(tmp_path, "0987654321")
    trash = Trash(tmp_path)
    trash.sweep()
    trash.close()
    assert not leftover.exists()
    assert kept.is_dir()


def test_trash_names_are_never_container_ids_and_differ_each_time():
    first, second = trash_name("abc"), trash_name("abc")
    assert first != second
    assert is_trash(first) and not is_container_id(first)
    assert not is_trash("abc")


def test_discard_after_close_starts_again(tmp_path: Path):
    trash = Trash(tmp_path)
    trash.discard(state_dir(tmp_path, "a1"))
    trash.close()
    trash.discard(state_dir(tmp_path, "a2"))
    trash.close()
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_cannot_be_renamed_is_deleted_in_place(tmp_path: Path, monkeypatch):
    import os

    directory = state_dir(tmp_path, "1234567890")

    def refuse(*_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", refuse)
    trash = Trash(tmp_path)
    trash.discard(directory)
    assert not directory.exists()
    trash.close()

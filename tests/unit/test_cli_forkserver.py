"""The warm CLI server's pure parts: socket path, messages, exit statuses, and the source watch."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cli import forkclient, forkserver
from services.common.config import Config


@pytest.mark.parametrize(
    "environ",
    [{}, {b"MYDOCKER_RUN": b"/tmp/mdk-run"}, {b"MYDOCKER_RUN": b"/tmp/mdk-run/"}, {b"MYDOCKER_RUN": b"relative/run"}],
)
def test_the_client_finds_the_socket_config_names(environ, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {key.decode(): value.decode() for key, value in environ.items()}
    expected = Config.from_env(env).socket_path("cli")
    assert forkclient.socket_path(environ, os.getcwdb()) == os.fsencode(expected)


def test_messages_round_trip_and_garbage_is_refused() -> None:
    request = (forkclient.RUN, forkclient.PROTOCOL, ["run", "-it", "bus y"], {b"K": b"v\xff"}, 0o022)
    assert forkclient.decode(forkclient.encode(request)) == request
    for garbage in (b"", b"\x00junk", forkclient.encode(["not", "a", "tuple"]), forkclient.encode(())):
        with pytest.raises(ValueError):
            forkclient.decode(garbage)


def test_fds_are_packed_as_native_ints() -> None:
    import array

    assert forkclient.pack_fds([3, 0, 1, 2]) == array.array("i", [3, 0, 1, 2]).tobytes()


def test_exit_code_is_the_status_or_128_plus_the_signal() -> None:
    for command, expected in ((["sh", "-c", "exit 3"], 3), (["true"], 0)):
        pid = os.spawnvp(os.P_NOWAIT, command[0], command)
        assert forkserver.exit_code(os.waitpid(pid, 0)[1]) == expected
    pid = os.spawnvp(os.P_NOWAIT, "sleep", ["sleep", "30"])
    os.kill(pid, signal.SIGTERM)
    assert forkserver.exit_code(os.waitpid(pid, 0)[1]) == 128 + signal.SIGTERM


def _tree(root: Path) -> None:
    (root / "cli" / "__pycache__").mkdir(parents=True)
    (root / "cli" / "main.py").write_text("x = 1\n")
    (root / "protos" / "state" / "v1").mkdir(parents=True)
    (root / "protos" / "state" / "v1" / "state_pb2.py").write_text("y = 2\n")


def _later(path: Path) -> None:
    """Move the mtime clearly forward, whatever the filesystem's timestamp granularity."""
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))


def test_source_watch_sees_edits_new_and_removed_files(tmp_path: Path) -> None:
    _tree(tmp_path)
    dirs = ("cli", "protos")
    watch = forkserver.SourceWatch(tmp_path, dirs)
    assert not watch.changed()

    (tmp_path / "cli" / "main.py").write_text("x = 10\n")
    assert watch.changed()

    watch = forkserver.SourceWatch(tmp_path, dirs)
    (tmp_path / "protos" / "state" / "v1" / "new_pb2.py").write_text("")
    assert watch.changed()

    watch = forkserver.SourceWatch(tmp_path, dirs)
    (tmp_path / "cli" / "main.py").unlink()
    assert watch.changed()


def test_source_watch_ignores_bytecode(tmp_path: Path) -> None:
    _tree(tmp_path)
    watch = forkserver.SourceWatch(tmp_path, ("cli", "protos"))
    (tmp_path / "cli" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "protos" / "__pycache__").mkdir()
    _later(tmp_path / "cli")
    _later(tmp_path / "protos")
    assert not watch.changed()


def test_a_file_edited_while_the_server_imports_the_cli_counts_as_changed(tmp_path: Path, monkeypatch) -> None:
    """The source is stamped before the imports: an edit during them restarts the server at its first command."""
    tree = tmp_path / "src"
    _tree(tree)
    watch_tree = forkserver.SourceWatch
    monkeypatch.setattr(forkserver, "SourceWatch", lambda: watch_tree(tree, ("cli", "protos")))

    def edit_while_importing() -> None:
        (tree / "cli" / "main.py").write_text("x = 10\n")
        _later(tree / "cli" / "main.py")

    monkeypatch.setattr(forkserver, "preload", edit_while_importing)
    seen = []
    monkeypatch.setattr(forkserver.ForkServer, "serve", lambda server: seen.append(server.source.changed()))
    monkeypatch.setenv("MYDOCKER_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("MYDOCKER_RUN", str(tmp_path / "run"))
    assert forkserver.main() == 0
    assert seen == [True]

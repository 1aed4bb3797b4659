"""Formats the shim and the executor share: state dir files, /proc stat, json-file log lines and attach frames."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from services.executor import framing, logfmt, statefiles


# -- /proc/<pid>/stat and pid records ------------------------------------------------------


def test_stat_parsing_survives_odd_command_names():
    fields = " ".join(["S"] + [str(n) for n in range(4, 22)] + ["123456"] + ["0"] * 30)
    assert statefiles.parse_stat(f"42 (sleep) {fields}") == ("S", 123456)
    assert statefiles.parse_stat(f"42 (a) b (c)) {fields}") == ("S", 123456)
    assert statefiles.parse_stat(f"42 (with space) {fields}") == ("S", 123456)


def test_start_time_of_live_zombie_and_gone_processes():
    me = statefiles.proc_start_time(os.getpid())
    assert me is not None and me > 0
    assert statefiles.is_alive(os.getpid(), me)
    assert not statefiles.is_alive(os.getpid(), me + 1)  # a recycled pid has another start time
    assert not statefiles.is_alive(os.getpid(), 0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = 50
    while deadline and statefiles.read_text(f"/proc/{child.pid}/stat").split(") ")[1][0] != "Z":
        time.sleep(0.05)
        deadline -= 1
    assert statefiles.proc_start_time(child.pid) is None  # a zombie counts as gone
    # ...but still has its start time, for recording a child that died at once (the shim launcher).
    zombie_start = statefiles.proc_start_time(child.pid, zombie_too=True)
    assert zombie_start is not None and zombie_start >= me
    assert not statefiles.is_alive(child.pid, zombie_start)
    child.wait()
    assert statefiles.proc_start_time(child.pid, zombie_too=True) is None
    assert statefiles.proc_start_time(child.pid) is None
    assert statefiles.proc_start_time(0) is None


def test_pid_records():
    assert statefiles.parse_pid(statefiles.format_pid(123, 456)) == (123, 456)
    assert statefiles.parse_pid(None) == (0, 0)
    assert statefiles.parse_pid("") == (0, 0)
    assert statefiles.parse_pid("123") == (0, 0)


def test_exit_codes_of_wait_statuses():
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert statefiles.exit_code_of(status) == (137, 9)
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert statefiles.exit_code_of(status) == (3, 0)


def test_exit_record_round_trip():
    text = statefiles.format_exit(137, 9, True, 1_700_000_000_123_456_789)
    assert json.loads(text)["oom_killed"] is True
    assert statefiles.parse_exit(text) == {
        "exit_code": 137,
        "signal": 9,
        "oom_killed": True,
        "exited_at_ns": 1_700_000_000_123_456_789,
        "lost": False,
        "started": True,
    }


def test_lost_exit_record_says_lost_and_whether_the_command_ever_ran():
    for started in (True, False):
        record = statefiles.parse_exit(statefiles.format_lost_exit(255, started, 0))
        assert (record["exit_code"], record["lost"], record["started"], record["exited_at_ns"]) == (255, True, started, 0)


def test_error_lines_stay_one_line():
    line = statefiles.format_error("invalid", 'exec: "x":\nnot found')
    assert line == 'invalid exec: "x": not found\n'
    assert statefiles.parse_error(line) == ("invalid", 'exec: "x": not found')
    assert statefiles.parse_error("something odd\n") == ("failed", "something odd")


def test_write_atomic_replaces_whole_files(tmp_path):
    path = str(tmp_path / "status")
    statefiles.write_atomic(path, "created\n")
    statefiles.write_atomic(path, "running\n")
    assert statefiles.read_text(path) == "running\n"
    assert os.listdir(tmp_path) == ["status"]
    assert statefiles.read_text(str(tmp_path / "missing")) is None


# -- json-file log lines ---------------------------------------------------------------------


def test_log_entries_are_dockers_json_file_lines():
    line = logfmt.encode_entry("stdout", b"hi\n", 1_700_000_000_000_000_001)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record == {"log": "hi\n", "stream": "stdout", "time": "2023-11-14T22:13:20.000000001Z"}


@pytest.mark.parametrize(
    "data",
    [b"plain\n", b'quote " and backslash \\\n', b"\x00\x01\x1f\x7f\t\r", "héllo ✓\n".encode(), b"\xff\xfe not utf-8 \xc3", b""],
)
def test_log_entries_round_trip_every_byte(data):
    line = logfmt.encode_entry("stderr", data, 5)
    json.loads(line)  # always valid JSON
    assert logfmt.decode_entry(line.rstrip(b"\n")) == ("stderr", data, 5)


def test_rfc3339_nano_round_trip():
    for ns in (0, 1, 1_700_000_000_123_456_789):
        assert logfmt.parse_rfc3339_nano(logfmt.rfc3339_nano(ns)) == ns
    assert logfmt.parse_rfc3339_nano("2024-01-01T00:00:00.5Z") == 1_704_067_200_500_000_000
    with pytest.raises(ValueError):
        logfmt.parse_rfc3339_nano("2024-01-01T00:00:00+02:00")


def test_split_lines_keeps_newlines_and_the_unfinished_rest():
    assert logfmt.split_lines(b"", b"a\nb\nc") == ([b"a\n", b"b\n"], b"c")
    assert logfmt.split_lines(b"c", b"d\n") == ([b"cd\n"], b"")
    assert logfmt.split_lines(b"", b"") == ([], b"")
    lines, rest = logfmt.split_lines(b"", b"x" * 10 + b"\n", max_line=4)
    assert lines == [b"xxxx", b"xxxx", b"xx\n"] and rest == b""
    lines, rest = logfmt.split_lines(b"", b"y" * 9, max_line=4)
    assert lines == [b"yyyy", b"yyyy"] and rest == b"y"


# -- attach frames --------------------------------------------------------------------------


def test_frames_round_trip_in_pieces():
    stream = (
        framing.encode(framing.STDOUT, b"hello")
        + framing.encode(framing.CLOSE_STDIN)
        + framing.encode(framing.RESIZE, framing.encode_resize(40, 100))
        + framing.encode(framing.EXIT, framing.encode_int(-1))
    )
    reader = framing.FrameReader()
    frames = []
    for i in range(len(stream)):
        frames += reader.feed(stream[i:i + 1])
    assert frames == [
        (framing.STDOUT, b"hello"),
        (framing.CLOSE_STDIN, b""),
        (framing.RESIZE, framing.encode_resize(40, 100)),
        (framing.EXIT, framing.encode_int(-1)),
    ]
    assert reader.pending == 0
    assert framing.decode_resize(frames[2][1]) == (40, 100)
    assert framing.decode_int(frames[3][1]) == -1
    assert framing.decode_int(framing.encode_int(137)) == 137


def test_frame_header_layout():
    assert framing.encode(framing.STDIN, b"ab") == b"i\x00\x00\x00\x02ab"


def test_bad_frames_are_refused():
    with pytest.raises(framing.FrameError):
        framing.FrameReader().feed(b"?\x00\x00\x00\x00")
    with pytest.raises(framing.FrameError):
        framing.FrameReader().feed(b"o" + (framing.MAX_PAYLOAD + 1).to_bytes(4, "big"))
    with pytest.raises(framing.FrameError):
        framing.encode(b"z")
    with pytest.raises(framing.FrameError):
        framing.decode_resize(b"\x00")
    with pytest.raises(framing.FrameError):
        framing.decode_int(b"\x00\x00")


def test_write_atomic_takes_bytes(tmp_path):
    path = str(tmp_path / "plan.marshal")
    statefiles.write_atomic(path, b"\x00\xffbytes")
    assert (tmp_path / "plan.marshal").read_bytes() == b"\x00\xffbytes"


def test_notify_wakes_a_waiting_reader_and_is_silent_without_one(tmp_path):
    statefiles.notify(str(tmp_path))  # no fifo at all
    os.mkfifo(tmp_path / statefiles.NOTIFY_FIFO)
    statefiles.notify(str(tmp_path))  # no reader: ENXIO, ignored
    fd = os.open(tmp_path / statefiles.NOTIFY_FIFO, os.O_RDWR | os.O_NONBLOCK)
    try:
        statefiles.notify(str(tmp_path))
        statefiles.notify(str(tmp_path))
        assert os.read(fd, 16) == b"\n\n"
    finally:
        os.close(fd)

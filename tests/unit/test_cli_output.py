"""Pure formatting used by `ps` and `system info`."""

import time

from cli.convert import status_name, timestamp_seconds
from cli.output import format_command, format_status, format_time, table
from protos.state.v1 import state_pb2


def test_table_aligns_columns_and_leaves_last_unpadded():
    text = table(("ID", "NAME"), [("5341624332", "rootfs"), ("1", "a-much-longer-name")])
    lines = text.splitlines()
    assert lines[0] == "ID" + " " * 11 + "NAME"
    assert lines[1] == "5341624332   rootfs"
    assert lines[2].startswith("1" + " " * 12 + "a-much")


def test_command_keeps_arguments_with_spaces_visible():
    assert format_command(["sh", "-c", "echo a b"]) == "sh -c 'echo a b'"
    assert format_command(["top"]) == "top"


def test_status_text():
    assert format_status("running", 0, False) == "running"
    assert format_status("exited", 137, True) == "exited (137, OOM killed)"
    assert format_status("stopped", 143, False) == "stopped (143)"


def test_time_format_matches_the_seed():
    stamp = time.mktime((2024, 2, 22, 13, 34, 12, 0, 0, -1))
    assert format_time(stamp) == "2024-02-22 13:34:12"
    assert format_time(None) == "-"


def test_proto_conversions():
    assert status_name(state_pb2.ContainerStatus, state_pb2.CONTAINER_STATUS_RUNNING) == "running"
    container = state_pb2.Container()
    assert timestamp_seconds(container.created_at) is None
    container.created_at.FromNanoseconds(1_500_000_000)
    assert timestamp_seconds(container.created_at) == 1.5


def test_human_size_and_progress():
    from cli.images import progress_line
    from cli.output import human_size

    assert human_size(512) == "512B"
    assert human_size(1536) == "1.5KiB"
    assert human_size(5 * 1024 * 1024) == "5.0MiB"
    assert progress_line(0, 100, width=10) == "[          ]   0% 0B/100B"
    assert progress_line(50, 100, width=10) == "[====>     ]  50% 50B/100B"
    assert progress_line(100, 100, width=10) == "[=========>] 100% 100B/100B"


def test_exit_status_of_system_exit_codes(capsys):
    from cli.main import exit_status

    assert exit_status(None) == 0
    assert exit_status(3) == 3
    assert exit_status("boom") == 1
    assert capsys.readouterr().err == "boom\n"

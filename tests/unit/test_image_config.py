"""Image configs: parsing and checks, the id-stable encoding, new configs, --change and run defaults, times."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest

from services.common.errors import InvalidArgument
from services.common.image_config import (
    Change, HistoryEntry, ImageConfig, RunSpec, apply_changes, child_config, config_bytes, flat_rootfs_config,
    format_created, format_created_ns, merge_env, parse_change, parse_config, parse_created, resolve_run, signal_number,
)

DIFF = ["sha256:" + (c * 64) for c in "abc"]
CREATED = "2026-12-07T14:01:39.123456789Z"


def docker_config(**config) -> dict:
    """A config document shaped like what `docker save` writes."""
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/bin:/bin"], "Hostname": "", **config},
        "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) CMD [\"sh\"]"]},
        "docker_version": "20.10.23",
        "rootfs": {"type": "layers", "diff_ids": DIFF[:2]},
        "history": [
            {"created": CREATED, "created_by": "/bin/sh -c #(nop) ADD file:x in / "},
            {"created": CREATED, "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": True},
            {"created": CREATED, "created_by": "RUN x", "author": "me", "comment": "c"},
        ],
    }


def encode(document) -> bytes:
    return json.dumps(document).encode()


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message == message.strip()
    return message


def test_parse_config_reads_a_docker_config():
    spec = parse_config(encode(docker_config(
        Entrypoint=["/entry"], WorkingDir="/srv", User="1000:1000", StopSignal="SIGQUIT",
        ExposedPorts={"8080/tcp": {}, "53/udp": {}, "443": {}, "80/tcp": {}},
        Labels={"z": "1", "a": "2"}, Volumes={"/var/b": {}, "/data": {}}, Unknown={"x": 1})))
    assert (spec.architecture, spec.os, spec.variant, spec.created, spec.author) == ("amd64", "linux", "", CREATED, "")
    assert spec.config == ImageConfig(
        entrypoint=("/entry",), cmd=("sh",), env=("PATH=/usr/bin:/bin",), working_dir="/srv", user="1000:1000",
        exposed_ports=("53/udp", "80/tcp", "443/tcp", "8080/tcp"), stop_signal="SIGQUIT",
        labels=(("a", "2"), ("z", "1")), volumes=("/data", "/var/b"))
    assert spec.diff_ids == tuple(DIFF[:2])
    assert spec.history[1] == HistoryEntry(CREATED, '/bin/sh -c #(nop)  CMD ["sh"]', "", "", True)
    assert spec.history[2] == HistoryEntry(CREATED, "RUN x", "c", "me", False)


def test_null_and_empty_commands_stay_distinct():
    assert parse_config(encode(docker_config(Cmd=None))).config.cmd is None
    assert parse_config(encode(docker_config(Cmd=[]))).config.cmd == ()
    assert parse_config(encode(docker_config(Entrypoint=None))).config.entrypoint is None
    assert parse_config(encode(docker_config(Entrypoint=[]))).config.entrypoint == ()


def test_a_lone_string_command_is_a_one_element_list_as_in_docker():
    assert parse_config(encode(docker_config(Cmd="/bin/sh"))).config.cmd == ("/bin/sh",)


def test_missing_optional_parts_have_empty_values():
    spec = parse_config(encode({"rootfs": {"type": "layers", "diff_ids": []}}))
    assert spec.config == ImageConfig()
    assert spec.config.cmd is None and spec.config.env == ()
    assert (spec.architecture, spec.os, spec.created, spec.diff_ids, spec.history) == ("", "", "", (), ())
    nulls = parse_config(encode({"config": None, "history": None, "rootfs": {"type": "layers", "diff_ids": []}}))
    assert nulls.config == ImageConfig() and nulls.history == ()


def test_odd_exposed_ports_are_kept_as_written():
    spec = parse_config(encode(docker_config(ExposedPorts={"8000-8001/tcp": {}, "80": {}})))
    assert spec.config.exposed_ports == ("80/tcp", "8000-8001/tcp")


@pytest.mark.parametrize("document, message", [
    (b"{", "image config: not JSON"),
    (b"\xff", "image config: not JSON"),
    (b"[]", "image config: not a JSON object"),
    (b"null", "image config: not a JSON object"),
    (b"{}", "image config: rootfs is missing or not an object"),
    ({"rootfs": []}, "image config: rootfs is missing or not an object"),
    ({"rootfs": {"type": "layer", "diff_ids": []}}, 'image config: rootfs.type is not "layers"'),
    ({"rootfs": {"type": "layers"}}, "image config: rootfs.diff_ids is missing or not a list"),
    ({"rootfs": {"type": "layers", "diff_ids": DIFF[:2] + ["sha256:xyz"]}},
     "image config: rootfs.diff_ids[2] is not a sha256 digest"),
    ({"rootfs": {"type": "layers", "diff_ids": [DIFF[0].upper()]}},
     "image config: rootfs.diff_ids[0] is not a sha256 digest"),
    ({"rootfs": {"type": "layers", "diff_ids": [7]}}, "image config: rootfs.diff_ids[0] is not a sha256 digest"),
    ({"architecture": 1}, "image config: architecture is not a string"),
    ({"config": []}, "image config: config is not an object"),
    ({"config": {"Cmd": {"a": 1}}}, "image config: config.Cmd is not a list of strings"),
    ({"config": {"Entrypoint": ["a", 1]}}, "image config: config.Entrypoint[1] is not a string"),
    ({"config": {"Env": ["A=1", None]}}, "image config: config.Env[1] is not a string"),
    ({"config": {"WorkingDir": 5}}, "image config: config.WorkingDir is not a string"),
    ({"config": {"User": []}}, "image config: config.User is not a string"),
    ({"config": {"Labels": {"a": 1}}}, 'image config: config.Labels["a"] is not a string'),
    ({"config": {"Labels": ["a"]}}, "image config: config.Labels is not an object"),
    ({"config": {"ExposedPorts": ["80"]}}, "image config: config.ExposedPorts is not an object"),
    ({"config": {"Volumes": "/data"}}, "image config: config.Volumes is not an object"),
    ({"history": {}}, "image config: history is not a list"),
    ({"history": ["x"]}, "image config: history[0] is not an object"),
    ({"history": [{}, {"empty_layer": "yes"}]}, "image config: history[1].empty_layer is not a boolean"),
    ({"history": [{"created_by": 3}]}, "image config: history[0].created_by is not a string"),
])
def test_parse_config_refuses_with_one_line(document, message):
    if isinstance(document, dict):
        document = encode({"rootfs": {"type": "layers", "diff_ids": []}, **document})
    with pytest.raises(InvalidArgument) as caught:
        parse_config(document)
    assert one_line(caught).startswith(message)


def test_config_bytes_is_one_encoding_per_document():
    first = {"b": [1, {"y": None, "x": "é"}], "a": {}}
    second = {"a": {}, "b": [1, {"x": "é", "y": None}]}
    assert config_bytes(first) == config_bytes(second) == '{"a":{},"b":[1,{"x":"é","y":null}]}'.encode()
    assert json.loads(config_bytes(first)) == first


def test_flat_rootfs_config():
    document = flat_rootfs_config(DIFF[0], CREATED, "arm64", comment="from a tarball")
    assert document == {
        "architecture": "arm64", "os": "linux", "created": CREATED, "config": {},
        "rootfs": {"type": "layers", "diff_ids": [DIFF[0]]},
        "history": [{"created": CREATED, "created_by": "mydocker import", "comment": "from a tarball"}],
    }
    spec = parse_config(config_bytes(document))
    assert spec.config.cmd is None and spec.config.entrypoint is None
    assert spec.history == (HistoryEntry(CREATED, "mydocker import", "from a tarball"),)
    assert "comment" not in flat_rootfs_config(DIFF[0], CREATED, "amd64")["history"][0]
    assert flat_rootfs_config(DIFF[0], CREATED, "amd64", os_name="freebsd")["os"] == "freebsd"
    same = [hashlib.sha256(config_bytes(flat_rootfs_config(DIFF[0], CREATED, "amd64"))).hexdigest() for _ in "ab"]
    assert same[0] == same[1]


def test_flat_rootfs_config_refuses_a_bad_diff_id():
    with pytest.raises(InvalidArgument) as caught:
        flat_rootfs_config("sha256:abc", CREATED, "amd64")
    assert one_line(caught) == 'invalid layer diff id "sha256:abc": expected sha256:<64 lowercase hex digits>'


def test_child_config_appends_a_layer_and_keeps_the_rest():
    parent = docker_config()
    before = copy.deepcopy(parent)
    child = child_config(parent, DIFF[2], "2027-01-01T00:00:00Z", "mydocker commit", comment="fix", author="Ann",
                         changes=[parse_change("ENV A=1"), parse_change("CMD ls")])
    assert parent == before
    assert child["rootfs"] == {"type": "layers", "diff_ids": DIFF}
    assert child["history"][:3] == before["history"]
    assert child["history"][3] == {"created": "2027-01-01T00:00:00Z", "created_by": "mydocker commit",
                                   "comment": "fix", "author": "Ann"}
    assert child["created"] == "2027-01-01T00:00:00Z" and child["author"] == "Ann"
    assert child["docker_version"] == "20.10.23" and child["container_config"] == before["container_config"]
    assert child["config"]["Hostname"] == ""
    assert child["config"]["Env"] == ["PATH=/usr/bin:/bin", "A=1"]
    assert child["config"]["Cmd"] == ["/bin/sh", "-c", "ls"]
    assert parse_config(config_bytes(child)).diff_ids == tuple(DIFF)


def test_child_config_of_a_minimal_parent():
    parent = flat_rootfs_config(DIFF[0], CREATED, "amd64")
    del parent["history"], parent["config"]
    child = child_config(parent, DIFF[1], CREATED, "commit")
    assert child["history"] == [{"created": CREATED, "created_by": "commit"}]
    assert child["config"] == {} and "author" not in child


def test_child_config_refuses_bad_input():
    with pytest.raises(InvalidArgument, match="invalid layer diff id"):
        child_config(docker_config(), "nope", CREATED, "commit")
    with pytest.raises(InvalidArgument, match="rootfs is missing"):
        child_config({}, DIFF[0], CREATED, "commit")


def applied(*lines: str, config: dict | None = None) -> dict:
    document = {"config": config if config is not None else {}}
    result = apply_changes(document, [parse_change(line) for line in lines])
    return result["config"]


@pytest.mark.parametrize("line, config", [
    ('CMD ["echo", "hi there"]', {"Cmd": ["echo", "hi there"]}),
    ("CMD echo $HOME \"x\"", {"Cmd": ["/bin/sh", "-c", 'echo $HOME "x"']}),
    ("cmd []", {"Cmd": []}),
    ('CMD ["a", 1]', {"Cmd": ["/bin/sh", "-c", '["a", 1]']}),
    ("CMD [not json", {"Cmd": ["/bin/sh", "-c", "[not json"]}),
    ('ENTRYPOINT ["/entry", "-x"]', {"Entrypoint": ["/entry", "-x"], "Cmd": None}),
    ("entrypoint exec top -b", {"Entrypoint": ["/bin/sh", "-c", "exec top -b"], "Cmd": None}),
    ("ENV A=1 B=\"two words\" C='$x' D=e\\ f", {"Env": ["A=1", "B=two words", "C=$x", "D=e f"]}),
    ("ENV A a value  with spaces", {"Env": ["A=a value  with spaces"]}),
    ('ENV A "quoted legacy"', {"Env": ["A=quoted legacy"]}),
    ("ENV\tA=1", {"Env": ["A=1"]}),
    ("WORKDIR /srv/app/", {"WorkingDir": "/srv/app"}),
    ("WORKDIR rel", {"WorkingDir": "/rel"}),
    ("WORKDIR //x/../y", {"WorkingDir": "/y"}),
    ("USER 1000:1000", {"User": "1000:1000"}),
    ("user nobody", {"User": "nobody"}),
    ("EXPOSE 80", {"ExposedPorts": {"80/tcp": {}}}),
    ("EXPOSE 80/udp 443 53/UDP", {"ExposedPorts": {"80/udp": {}, "443/tcp": {}, "53/udp": {}}}),
    ("EXPOSE 7000-7002/sctp", {"ExposedPorts": {"7000/sctp": {}, "7001/sctp": {}, "7002/sctp": {}}}),
    ('LABEL a=1 "b c"=2 version="1.0"', {"Labels": {"a": "1", "b c": "2", "version": "1.0"}}),
    ("LABEL maintainer Ann Example", {"Labels": {"maintainer": "Ann Example"}}),
    ("STOPSIGNAL SIGQUIT", {"StopSignal": "SIGQUIT"}),
    ("stopsignal 9", {"StopSignal": "9"}),
    ('VOLUME ["/data", "/logs"]', {"Volumes": {"/data": {}, "/logs": {}}}),
    ("VOLUME /data /logs", {"Volumes": {"/data": {}, "/logs": {}}}),
])
def test_each_change(line, config):
    assert applied(line) == config


@pytest.mark.parametrize("line, reason", [
    ("RUN x", "only CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR can be changed"),
    ("FROM busybox", "only CMD, ENTRYPOINT"),
    ("", "only CMD, ENTRYPOINT"),
    ("CMD", "CMD needs an argument"),
    ("ENV  ", "ENV needs an argument"),
    ("ENV A", "ENV needs KEY=VALUE pairs"),
    ("ENV A=1 B", 'can\'t find = in "B"'),
    ("ENV =1", "ENV names cannot be blank"),
    ('ENV A="open', "unterminated \" quote"),
    ("LABEL a='open", "unterminated ' quote"),
    ("EXPOSE http", 'port "http": expected PORT[-PORT][/tcp|udp|sctp]'),
    ("EXPOSE 80/icmp", 'port "80/icmp"'),
    ("EXPOSE 0", 'port "0": ports go from 1 to 65535'),
    ("EXPOSE 70000", 'port "70000"'),
    ("EXPOSE 90-80", 'port "90-80"'),
    ("STOPSIGNAL SIGNOPE", 'signal "SIGNOPE"'),
    ("VOLUME []", "VOLUME needs one path or more"),
    ('VOLUME ["/a", ""]', "VOLUME needs one path or more, none of them empty"),
    ("ENV A=${B", "missing } in a ${...} variable"),
    ("ENV A=${B?x}", "bad substitution ${B?x}"),
    ("LABEL a=$X b", 'can\'t find = in "b"'),
    ("VOLUME \"$X", 'unterminated " quote'),
])
def test_parse_change_refuses_with_one_line(line, reason):
    with pytest.raises(InvalidArgument) as caught:
        parse_change(line)
    message = one_line(caught)
    assert message.startswith(f'invalid --change "{line}": ') and reason in message


def test_values_known_only_from_the_image_env_wait_for_apply_changes():
    for line in ("EXPOSE $P", "STOPSIGNAL $S", "VOLUME $V", "ENV $K=1", "WORKDIR $W"):
        assert parse_change(line) == Change(line.split()[0], line.split()[1])


def test_parse_change_keeps_the_line_for_later():
    assert parse_change("  env   A=1 ") == Change("ENV", "A=1")
    assert str(parse_change('cmd ["x"]')) == 'CMD ["x"]'


def test_env_replaces_in_place_and_expands_variables():
    config = applied("ENV PATH=$PATH:/opt/bin B=${HOME:-/root} C=${PATH:+set} D=\"$NOPE\" E='$PATH' F=\\$X",
                     config={"Env": ["PATH=/bin", "HOME=", "Z=1"]})
    assert config["Env"] == ["PATH=/bin:/opt/bin", "HOME=", "Z=1", "B=/root", "C=set", "D=", "E=$PATH", "F=$X"]


def test_each_change_sees_the_env_of_the_changes_before():
    config = applied("ENV A=1", "ENV B=${A}2", "WORKDIR /$B", "LABEL from=$A", "USER u$A", "EXPOSE $B")
    assert config == {"Env": ["A=1", "B=12"], "WorkingDir": "/12", "Labels": {"from": "1"}, "User": "u1",
                      "ExposedPorts": {"12/tcp": {}}}


def test_a_bad_value_found_when_applying_is_one_line():
    change = parse_change("EXPOSE $P")
    with pytest.raises(InvalidArgument) as caught:
        apply_changes({"config": {"Env": ["P=web"]}}, [change])
    assert one_line(caught).startswith('invalid --change "EXPOSE $P": port "web"')


def test_workdir_is_relative_to_the_previous_one():
    assert applied("WORKDIR a", "WORKDIR b/c", "WORKDIR ..")["WorkingDir"] == "/a/b"
    assert applied("WORKDIR x", config={"WorkingDir": "/srv"})["WorkingDir"] == "/srv/x"
    assert applied("WORKDIR /abs", config={"WorkingDir": "/srv"})["WorkingDir"] == "/abs"


def test_entrypoint_drops_the_cmd_unless_a_cmd_change_came_first():
    image = {"Cmd": ["sh"], "Entrypoint": None}
    assert applied('ENTRYPOINT ["top"]', config=image) == {"Cmd": None, "Entrypoint": ["top"]}
    assert applied('CMD ["-b"]', 'ENTRYPOINT ["top"]', config=image) == {"Cmd": ["-b"], "Entrypoint": ["top"]}
    assert applied('ENTRYPOINT ["top"]', 'CMD ["-b"]', config=image) == {"Cmd": ["-b"], "Entrypoint": ["top"]}


def test_maps_are_merged():
    config = applied("LABEL b=2 a=9", "EXPOSE 443", "VOLUME /new",
                     config={"Labels": {"a": "1"}, "ExposedPorts": {"80/tcp": {}}, "Volumes": None})
    assert config == {"Labels": {"a": "9", "b": "2"}, "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
                      "Volumes": {"/new": {}}}


def test_apply_changes_refuses_an_instruction_parse_change_never_makes():
    with pytest.raises(InvalidArgument) as caught:
        apply_changes({}, [Change("RUN", "x")])
    assert one_line(caught).startswith('invalid --change "RUN x": only CMD, ENTRYPOINT')
    with pytest.raises(InvalidArgument) as caught:
        apply_changes({}, [Change("ENV", " ")])
    assert one_line(caught) == 'invalid --change "ENV": ENV needs KEY=VALUE pairs'


def test_apply_changes_returns_a_new_document():
    document = {"config": {"Env": ["A=1"], "Labels": {"x": "1"}}, "other": [1]}
    before = copy.deepcopy(document)
    result = apply_changes(document, [parse_change("ENV A=2"), parse_change("LABEL y=2")])
    assert document == before and result["other"] == [1] and result["config"]["Env"] == ["A=2"]
    assert apply_changes({}, []) == {"config": {}}


IMAGE = ImageConfig(entrypoint=None, cmd=("sh",), env=("PATH=/bin", "HOME=/root"), working_dir="srv", user="app")


@pytest.mark.parametrize("config, command, entrypoint, argv", [
    (IMAGE, None, None, ("sh",)),
    (IMAGE, ["ls", "-l"], None, ("ls", "-l")),
    (IMAGE, [], None, ("sh",)),
    (ImageConfig(entrypoint=("/e", "-x"), cmd=("a",)), None, None, ("/e", "-x", "a")),
    (ImageConfig(entrypoint=("/e",), cmd=("a",)), ["b"], None, ("/e", "b")),
    (ImageConfig(entrypoint=("/e",), cmd=("a",)), [], None, ("/e", "a")),
    (ImageConfig(entrypoint=("/e",), cmd=None), None, None, ("/e",)),
    (ImageConfig(entrypoint=(), cmd=("a",)), None, None, ("a",)),
    (ImageConfig(entrypoint=("/e",), cmd=("a",)), None, "/other", ("/other",)),
    (ImageConfig(entrypoint=("/e",), cmd=("a",)), ["b"], "/other", ("/other", "b")),
    (ImageConfig(entrypoint=("/e",), cmd=("a",)), ["b", "c"], "", ("b", "c")),
    (ImageConfig(entrypoint=("/e",), cmd=("a",)), None, "", None),
    (ImageConfig(cmd=("a",)), None, "/bin/sh -c", ("/bin/sh -c",)),
    (ImageConfig(), None, None, None),
    (ImageConfig(cmd=()), None, None, None),
    (ImageConfig(), ["true"], None, ("true",)),
])
def test_resolve_run_argv(config, command, entrypoint, argv):
    if argv is None:
        with pytest.raises(InvalidArgument) as caught:
            resolve_run(config, command, entrypoint, [], "", "")
        assert one_line(caught) == (
            "no command given: name one after the image (the image has no Cmd or Entrypoint)")
    else:
        assert resolve_run(config, command, entrypoint, [], "", "").argv == argv


def test_merge_env_replaces_in_place_and_the_last_setting_wins():
    assert merge_env(["A=1", "B=2"], ["B=3", "C=4", "C=5", "A"]) == ("A", "B=3", "C=5")
    assert merge_env([], []) == ()


def test_resolve_run_env_workdir_and_user():
    spec = resolve_run(IMAGE, None, None, ["HOME=/home/x", "NEW=1", "BARE", "NEW=2", "E="], "", "")
    assert spec == RunSpec(("sh",), ("PATH=/bin", "HOME=/home/x", "NEW=2", "BARE", "E="), "/srv", "app")
    spec = resolve_run(IMAGE, None, None, [], "/work", "0:0")
    assert (spec.env, spec.working_dir, spec.user) == (IMAGE.env, "/work", "0:0")
    assert resolve_run(ImageConfig(cmd=("x",)), None, None, [], "", "").working_dir == "/"
    assert resolve_run(ImageConfig(cmd=("x",), working_dir="/a/b/../c/"), None, None, [], "", "").working_dir == "/a/c"
    with pytest.raises(InvalidArgument) as caught:
        resolve_run(IMAGE, None, None, [], "relative", "")
    assert one_line(caught) == 'invalid working directory "relative": it must be an absolute path'


@pytest.mark.parametrize("name, number", [
    ("SIGTERM", 15), ("TERM", 15), ("term", 15), ("sigkill", 9), ("15", 15), ("9", 9), ("SIGHUP", 1),
    ("SIGQUIT", 3), ("SIGUSR1", 10), ("SIGCHLD", 17), ("SIGCLD", 17), ("SIGWINCH", 28), ("SIGSYS", 31),
    ("SIGRTMIN", 34), ("SIGRTMIN+3", 37), ("rtmin+3", 37), ("SIGRTMAX", 64), ("SIGRTMAX-1", 63), ("64", 64),
    (" SIGINT ", 2), ("SIGIOT", 6),
])
def test_signal_number(name, number):
    assert signal_number(name) == number


@pytest.mark.parametrize("name", ["", "0", "65", "-1", "SIGFOO", "SIG", "SIGRTMIN+31", "SIGRTMAX+1", "TERM15", "1.5"])
def test_signal_number_refuses(name):
    with pytest.raises(InvalidArgument) as caught:
        signal_number(name)
    assert one_line(caught) == f'invalid signal "{name}": use a name such as SIGTERM or a number from 1 to 64'


@pytest.mark.parametrize("seconds, text", [
    (0, "1970-01-01T00:00:00Z"),
    (1.5, "1970-01-01T00:00:01.5Z"),
    (1796652099.123456, "2026-12-07T14:01:39.123456Z"),
    (1796652099, "2026-12-07T14:01:39Z"),
    (1796652099.1, "2026-12-07T14:01:39.1Z"),
])
def test_format_created(seconds, text):
    assert format_created(seconds) == text


def test_format_created_ns_writes_every_nanosecond():
    assert format_created_ns(1796652099_123456789) == CREATED
    assert format_created_ns(1796652099_000000010) == "2026-12-07T14:01:39.00000001Z"


@pytest.mark.parametrize("text, seconds", [
    ("", 0.0),
    ("0001-01-01T00:00:00Z", 0.0),
    ("1970-01-01T00:00:00Z", 0.0),
    (CREATED, 1796652099.123456789),
    ("2026-12-07T14:01:39Z", 1796652099.0),
    ("2026-12-07T14:01:39.5z", 1796652099.5),
    ("2026-12-07T16:01:39.5+02:00", 1796652099.5),
    ("2026-12-07T07:01:39-07:00", 1796652099.0),
    ("2026-12-07T14:01:39.1234567891234Z", 1796652099.123456789),
    ("2026-12-07 14:01:39Z", 1796652099.0),
])
def test_parse_created(text, seconds):
    assert parse_created(text) == pytest.approx(seconds, abs=1e-6)


def test_created_round_trips():
    for seconds in (0.25, 1.0, 1700000000.5, 1796652099.123456):
        assert parse_created(format_created(seconds)) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize("text", ["yesterday", "2026-12-07", "2026-12-07T14:01:39", "2026-13-07T14:01:39Z",
                                  "2026-02-30T00:00:00Z", "2026-12-07T24:00:00Z", "2026-12-07T14:01:60Z"])
def test_parse_created_refuses(text):
    with pytest.raises(InvalidArgument) as caught:
        parse_created(text)
    assert one_line(caught).startswith(f'invalid time "{text}": ')


def test_with_run_config_puts_a_container_run_in_place_of_the_image_settings():
    from services.common.image_config import RunSpec, with_run_config

    parent = {"config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["old"], "Env": ["A=1"], "WorkingDir": "/w", "User": "u"},
              "rootfs": {"type": "layers", "diff_ids": []}}
    run = RunSpec(argv=("new",), env=("A=1", "B=2"), working_dir="", user="")
    kept = with_run_config(parent, run, None)["config"]
    assert kept == {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["new"], "Env": ["A=1", "B=2"], "WorkingDir": "/w", "User": "u"}
    cleared = with_run_config(parent, RunSpec(("/bin/echo", "x"), (), "/tmp", "65534"), ())["config"]
    assert cleared == {"Entrypoint": None, "Cmd": ["/bin/echo", "x"], "Env": None, "WorkingDir": "/tmp", "User": "65534"}
    assert parent["config"]["Cmd"] == ["old"], "the parent document is not changed"

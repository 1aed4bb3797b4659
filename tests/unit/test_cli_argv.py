"""The seed's single-dash long flags are rewritten for typer, and nothing else is."""

from cli.argv import normalize_argv


def test_seed_run_line_is_translated():
    assert normalize_argv(["run", "-d", "-name", "rootfs", "busybox", "top"]) == [
        "run", "-d", "--name", "rootfs", "busybox", "top",
    ]


def test_resource_and_network_flags_are_translated():
    argv = ["run", "-it", "-mem", "100m", "-cpu", "20", "-cpuset", "0", "-net", "br0", "busybox", "sh"]
    assert normalize_argv(argv) == [
        "run", "-it", "--memory", "100m", "--cpu", "20", "--cpuset", "0", "--network", "br0", "busybox", "sh",
    ]


def test_equals_form_is_translated():
    assert normalize_argv(["run", "-name=c1", "busybox", "top"]) == ["run", "--name=c1", "busybox", "top"]


def test_container_command_is_left_alone():
    argv = ["run", "-d", "busybox", "top", "-name", "x", "-mem", "1"]
    assert normalize_argv(argv) == argv


def test_option_values_are_not_mistaken_for_the_image():
    argv = ["run", "-e", "A=-name", "-v", "/a:/b", "busybox", "env"]
    assert normalize_argv(argv) == argv


def test_double_dash_stops_translation():
    assert normalize_argv(["run", "--", "-name"]) == ["run", "--", "-name"]


def test_verbs_without_commands_translate_anywhere():
    assert normalize_argv(["rm", "5341624332", "-f"]) == ["rm", "5341624332", "-f"]
    assert normalize_argv(["ps", "-a"]) == ["ps", "-a"]


def test_docker_spellings_pass_through():
    argv = ["run", "--name", "c1", "-m", "64m", "--cpus", "1.5", "busybox", "top"]
    assert normalize_argv(argv) == argv


def test_empty_and_option_only_argv():
    assert normalize_argv([]) == []
    assert normalize_argv(["--help"]) == ["--help"]

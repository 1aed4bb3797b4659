"""Image references are read and written as Docker does; platforms are parsed, normalized and matched."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.reference import (
    Platform, Reference, host_platform, id_prefix, parse, parse_file_stem, parse_platform, platform_matches,
    registry_host, repository,
)

HEX = "0123456789abcdef" * 4
DIGEST = "sha256:" + HEX


def refused(text: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f'invalid reference "{text}": ')
    return message


@pytest.mark.parametrize("text, domain, path, tag, digest", [
    ("busybox", "docker.io", "library/busybox", "latest", ""),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", ""),
    ("library/busybox", "docker.io", "library/busybox", "latest", ""),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", ""),
    ("docker.io/library/busybox:glibc", "docker.io", "library/busybox", "glibc", ""),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", ""),
    ("index.docker.io/user/app:v2", "docker.io", "user/app", "v2", ""),
    ("user/app", "docker.io", "user/app", "latest", ""),
    ("user/app/part", "docker.io", "user/app/part", "latest", ""),
    ("localhost/app", "localhost", "app", "latest", ""),
    ("localhost:5000/team/app:v1", "localhost:5000", "team/app", "v1", ""),
    ("quay.io/coreos/etcd:v3.5.0", "quay.io", "coreos/etcd", "v3.5.0", ""),
    ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", ""),
    ("[::1]:5000/x", "[::1]:5000", "x", "latest", ""),
    ("My.Registry.com/x", "My.Registry.com", "x", "latest", ""),
    ("localhost:5000", "docker.io", "library/localhost", "5000", ""),
    ("repo@" + DIGEST, "docker.io", "library/repo", "", DIGEST),
    ("repo:tag@" + DIGEST, "docker.io", "library/repo", "tag", DIGEST),
    ("host:1/a/b@" + DIGEST, "host:1", "a/b", "", DIGEST),
    ("user/a.b_c__d-e--f", "docker.io", "user/a.b_c__d-e--f", "latest", ""),
    ("ab_c__d-e---f/x.g", "docker.io", "ab_c__d-e---f/x.g", "latest", ""),
    ("a-b.example.com/x", "a-b.example.com", "x", "latest", ""),
    ("abc", "docker.io", "library/abc", "latest", ""),
    ("x:Tag_1.2-rc", "docker.io", "library/x", "Tag_1.2-rc", ""),
    ("x:" + "t" * 128, "docker.io", "library/x", "t" * 128, ""),
])
def test_parse_normalizes(text, domain, path, tag, digest):
    assert parse(text) == Reference(domain, path, tag, digest)


def test_an_uppercase_first_component_names_a_registry_as_in_docker():
    assert parse("Host/app") == Reference("Host", "app", "latest")


@pytest.mark.parametrize("text, reason", [
    ("", "the reference is empty"),
    ("Busybox", "repository names must be lowercase"),
    ("user/App", "repository names must be lowercase"),
    ("a//b", "empty path component"),
    ("/a", "empty path component"),
    ("a/", "empty path component"),
    ("localhost/", "empty path component"),
    (":tag", "the repository name is empty"),
    ("a_-b", 'invalid path component "a_-b"'),
    ("a___b", 'invalid path component "a___b"'),
    ("-a", 'invalid path component "-a"'),
    ("a.", 'invalid path component "a."'),
    ("a b", 'invalid path component "a b"'),
    ("café", 'invalid path component "café"'),
    ("my_host.com/x", 'invalid registry "my_host.com"'),
    ("-host.com/x", 'invalid registry "-host.com"'),
    ("host.com:port/x", 'invalid registry "host.com:port"'),
    ("x:", 'invalid tag ""'),
    ("x:.bad", 'invalid tag ".bad"'),
    ("x:-bad", 'invalid tag "-bad"'),
    ("x:ta/g", 'invalid registry "x:ta"'),
    ("x.com:50 00/a", 'invalid registry "x.com:50 00"'),
    ("x:é", 'invalid tag "é"'),
    ("x:" + "t" * 129, "invalid tag"),
    ("x@sha256:abc", 'invalid digest "sha256:abc"'),
    ("x@sha256:" + HEX.upper(), "invalid digest"),
    ("x@" + HEX, "invalid digest"),
    ("x@sha512:" + HEX * 2, 'digest algorithm "sha512" is not supported'),
    ("x@" + DIGEST + "@" + DIGEST, "invalid digest"),
    (HEX, "cannot be a 64-byte hexadecimal string"),
    ("a/" + "b" * 250, "longer than 255 characters"),
])
def test_parse_refuses_with_one_clear_line(text, reason):
    assert reason in refused(text)


def test_length_limit_counts_the_normalized_name():
    path = "b" * (255 - len("docker.io/library/"))
    assert parse(path).name == "docker.io/library/" + path
    assert "longer than 255" in refused(path + "b")


def test_a_hex_string_shorter_than_an_id_is_a_valid_name():
    assert parse(HEX[:12]).path == "library/" + HEX[:12]


def test_string_forms():
    busybox = parse("busybox")
    assert str(busybox) == "docker.io/library/busybox:latest"
    assert busybox.name == "docker.io/library/busybox"
    assert busybox.familiar_name == "busybox"
    assert busybox.familiar() == "busybox:latest"
    assert str(parse("localhost:5000/a/b:v1")) == "localhost:5000/a/b:v1"
    assert str(parse("repo@" + DIGEST)) == "docker.io/library/repo@" + DIGEST
    assert str(parse("repo:tag@" + DIGEST)) == "docker.io/library/repo:tag@" + DIGEST
    assert parse("repo:tag@" + DIGEST).familiar() == "repo:tag@" + DIGEST


@pytest.mark.parametrize("text, familiar", [
    ("busybox", "busybox"),
    ("user/app", "user/app"),
    ("library/a/b", "library/a/b"),
    ("docker.io/libraryx/a", "libraryx/a"),
    ("quay.io/library/x", "quay.io/library/x"),
    ("localhost:5000/x", "localhost:5000/x"),
])
def test_familiar_name(text, familiar):
    assert parse(text).familiar_name == familiar
    assert parse(familiar).familiar_name == familiar


@pytest.mark.parametrize("text, stem", [
    ("busybox", "busybox"),
    ("busybox:latest", "busybox"),
    ("docker.io/library/busybox:1.36", "busybox:1.36"),
    ("user/app:v2", "user/app:v2"),
    ("localhost:5000/team/app:v1", "localhost:5000/team/app:v1"),
    ("localhost:5000/team/app", "localhost:5000/team/app"),
    ("busybox-with-custom", "busybox-with-custom"),
    ("library/a/b:x", "library/a/b:x"),
    ("repo:t@" + DIGEST, "repo:t"),
])
def test_file_stem_round_trips(text, stem):
    assert parse(text).file_stem() == stem
    assert parse_file_stem(stem) == parse(text.partition("@")[0])


def test_file_stem_needs_a_tag():
    with pytest.raises(ValueError, match="no tag"):
        parse("repo@" + DIGEST).file_stem()


@pytest.mark.parametrize("stem, reason", [
    ("busybox:latest", 'expected "busybox.tar"'),
    ("docker.io/library/busybox", 'expected "busybox.tar"'),
    ("library/busybox:1", 'expected "busybox:1.tar"'),
    ("index.docker.io/user/app", 'expected "user/app.tar"'),
    ("repo@" + DIGEST, "expected"),
    ("Busybox", "repository names must be lowercase"),
    ("a//b", "empty path component"),
    ("", "the reference is empty"),
])
def test_parse_file_stem_refuses_what_file_stem_never_writes(stem, reason):
    with pytest.raises(InvalidArgument) as caught:
        parse_file_stem(stem)
    message = str(caught.value)
    assert message.startswith(f'invalid image file name "{stem}.tar": ') and reason in message
    assert "\n" not in message


def test_with_tag_keeps_name_and_digest():
    assert parse("busybox").with_tag("1.36") == parse("busybox:1.36")
    assert parse("a@" + DIGEST).with_tag("t") == parse("a:t@" + DIGEST)
    with pytest.raises(InvalidArgument, match='invalid tag ".x"'):
        parse("busybox").with_tag(".x")


@pytest.mark.parametrize("text, expected", [
    ("abc", "abc"),
    ("a", "a"),
    (HEX, HEX),
    ("sha256:" + HEX, HEX),
    ("sha256:0ab", "0ab"),
    ("ABC", None),
    ("xyz", None),
    ("", None),
    ("sha256:", None),
    ("sha512:abc", None),
    (HEX + "0", None),
    ("busybox", None),
    ("abc:1", None),
])
def test_id_prefix(text, expected):
    assert id_prefix(text) == expected


def test_registry_helpers():
    assert registry_host(parse("busybox")) == "registry-1.docker.io"
    assert registry_host(parse("index.docker.io/user/app")) == "registry-1.docker.io"
    assert registry_host(parse("localhost:5000/a")) == "localhost:5000"
    assert registry_host(parse("quay.io/a/b")) == "quay.io"
    assert repository(parse("busybox")) == "library/busybox"
    assert repository(parse("user/app:1")) == "user/app"
    assert repository(parse("localhost:5000/team/app@" + DIGEST)) == "team/app"


@pytest.mark.parametrize("text, platform", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm/v7", Platform("linux", "arm", "v7")),
    ("linux/arm/7", Platform("linux", "arm", "v7")),
    ("linux/arm64", Platform("linux", "arm64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("Linux/X86_64", Platform("linux", "amd64")),
    ("linux/aarch64", Platform("linux", "arm64")),
    ("linux/armhf", Platform("linux", "arm", "v7")),
    ("linux/386", Platform("linux", "386")),
    ("linux/riscv64", Platform("linux", "riscv64")),
    ("windows/amd64", Platform("windows", "amd64")),
])
def test_parse_platform(text, platform):
    assert parse_platform(text) == platform


@pytest.mark.parametrize("text", ["linux", "", "linux/", "/amd64", "linux/arm/v7/x", "linux/am d64", "linux//v7"])
def test_parse_platform_refuses(text):
    with pytest.raises(InvalidArgument) as caught:
        parse_platform(text)
    assert str(caught.value) == (f'invalid platform "{text}": expected OS/ARCH[/VARIANT] such as linux/amd64')


def test_platform_strings():
    assert str(Platform("linux", "arm64", "v8")) == "linux/arm64/v8"
    assert str(Platform("linux", "amd64")) == "linux/amd64"
    assert str(parse_platform("linux/arm/v7")) == "linux/arm/v7"


@pytest.mark.parametrize("machine, platform", [
    ("x86_64", Platform("linux", "amd64")),
    ("aarch64", Platform("linux", "arm64", "v8")),
    ("arm64", Platform("linux", "arm64", "v8")),
    ("armv7l", Platform("linux", "arm", "v7")),
    ("armv6l", Platform("linux", "arm", "v6")),
    ("i686", Platform("linux", "386")),
    ("ppc64le", Platform("linux", "ppc64le")),
    ("s390x", Platform("linux", "s390x")),
    ("riscv64", Platform("linux", "riscv64")),
])
def test_host_platform(machine, platform):
    assert host_platform(machine) == platform


def test_host_platform_defaults_to_this_machine():
    import platform as host
    assert host_platform() == host_platform(host.machine())


@pytest.mark.parametrize("wanted, candidate, matches", [
    ("linux/amd64", ("linux", "amd64", ""), True),
    ("linux/amd64", ("linux", "arm64", "v8"), False),
    ("linux/amd64", ("windows", "amd64", ""), False),
    ("linux/arm64", ("linux", "arm64", "v8"), True),
    ("linux/arm64", ("linux", "arm64", ""), True),
    ("linux/arm64/v8", ("linux", "arm64", ""), True),
    ("linux/arm64/v8", ("linux", "arm64", "v8"), True),
    ("linux/arm64/v8", ("linux", "arm64", "v9"), False),
    ("linux/arm/v7", ("linux", "arm", "v7"), True),
    ("linux/arm/v7", ("linux", "arm", "v6"), False),
    ("linux/arm/v7", ("linux", "arm", ""), True),
    ("linux/arm", ("linux", "arm", "v5"), True),
    ("linux/amd64", ("linux", "amd64", "v1"), True),
    ("linux/amd64", ("linux", "x86_64", ""), True),
])
def test_platform_matches(wanted, candidate, matches):
    assert platform_matches(parse_platform(wanted), *candidate) is matches


def test_host_platform_matches_index_entries():
    assert platform_matches(host_platform("aarch64"), "linux", "arm64", "")
    assert platform_matches(host_platform("aarch64"), "linux", "arm64", "v8")
    assert platform_matches(host_platform("x86_64"), "linux", "amd64", "")
    assert not platform_matches(host_platform("x86_64"), "linux", "386", "")

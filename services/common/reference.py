"""Image references and platforms as Docker reads them (the distribution/reference grammar), as pure values."""

from __future__ import annotations

import platform as host
import re
from dataclasses import dataclass, replace

from services.common.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DEFAULT_REGISTRY_HOST = "registry-1.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
# Go's \w is ASCII only; Python's is not.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256_HEX = re.compile(r"[a-f0-9]{64}")
_DIGEST_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*")
_ID_PREFIX = re.compile(r"(?:sha256:)?([a-f0-9]{1,64})")


@dataclass(frozen=True)
class Reference:
    """A normalized reference: `domain/path`, and a tag, a digest or both."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The name as Docker shows it: `busybox`, `user/app`, or the full name off Docker Hub."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        short = self.path.removeprefix(OFFICIAL_PREFIX)
        return short if short != self.path and "/" not in short else self.path

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    def familiar(self) -> str:
        return self.familiar_name + self._suffix()

    def file_stem(self) -> str:
        """The image file's path below ROOT/image without `.tar`: the familiar name and the tag unless `latest`.

        The digest is not part of it: a file stands for a tag.
        """
        if not self.tag:
            raise ValueError(f"{self} has no tag: only tagged references have an image file")
        return self.familiar_name + ("" if self.tag == DEFAULT_TAG else f":{self.tag}")

    def with_tag(self, tag: str) -> Reference:
        """The same name with another tag; a digest is kept, as Docker's WithTag does."""
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f'invalid tag "{tag}": {_TAG_RULE}')
        return replace(self, tag=tag)


_TAG_RULE = 'use up to 128 letters, digits, "_", "." or "-", not starting with "." or "-"'


def _split_domain(name: str) -> tuple[str, str]:
    # Docker's rule: the first component names a registry only if it looks like a host.
    first, slash, rest = name.partition("/")
    if not slash or (not any(c in first for c in ".:") and first != "localhost" and first.lower() == first):
        domain, remote = DEFAULT_DOMAIN, name
    else:
        domain, remote = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_PREFIX + remote
    return domain, remote


def _check_digest(digest: str) -> str | None:
    algorithm, colon, encoded = digest.partition(":")
    if not colon or not _DIGEST_ALGORITHM.fullmatch(algorithm):
        return f'invalid digest "{digest}": expected sha256:<64 lowercase hex digits>'
    if algorithm != "sha256":
        return f'digest algorithm "{algorithm}" is not supported: only sha256 digests are'
    if not _SHA256_HEX.fullmatch(encoded):
        return f'invalid digest "{digest}": expected sha256:<64 lowercase hex digits>'
    return None


def _check_path(path: str) -> str | None:
    if path.lower() != path:
        return "repository names must be lowercase"
    for component in path.split("/"):
        if not component:
            return 'empty path component (a "//", or a "/" at the start or the end)'
        if not _PATH_COMPONENT.fullmatch(component):
            return (f'invalid path component "{component}": use lowercase letters and digits, '
                    'separated by ".", "_", "__" or dashes')
    return None


def _parse(text: str) -> tuple[Reference | None, str]:
    """The reference, or None and the reason why `text` is not one."""
    if not text:
        return None, "the reference is empty"
    if _SHA256_HEX.fullmatch(text):
        return None, "a repository name cannot be a 64-byte hexadecimal string (use it as an image id)"
    rest, at, digest = text.partition("@")
    if at:
        problem = _check_digest(digest)
        if problem:
            return None, problem
    tag = ""
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            return None, f'invalid tag "{tag}": {_TAG_RULE}'
    if not rest:
        return None, "the repository name is empty"
    domain, path = _split_domain(rest)
    if not _DOMAIN.fullmatch(domain):
        return None, f'invalid registry "{domain}": expected a host name or address, and maybe ":port"'
    problem = _check_path(path)
    if problem:
        return None, problem
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        return None, f"the repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters"
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest), ""


def parse(text: str) -> Reference:
    """The normalized reference `text` names: Docker Hub and `:latest` filled in as `docker pull` does."""
    reference, problem = _parse(text)
    if reference is None:
        raise InvalidArgument(f'invalid reference "{text}": {problem}')
    return reference


def parse_file_stem(stem: str) -> Reference:
    """The reference an image file stands for: the inverse of `Reference.file_stem()`."""
    reference, problem = _parse(stem)
    if reference is None:
        raise InvalidArgument(f'invalid image file name "{stem}.tar": {problem}')
    if reference.digest or reference.file_stem() != stem:
        expected = reference.file_stem() if not reference.digest else "NAME[:TAG]"
        raise InvalidArgument(f'invalid image file name "{stem}.tar": expected "{expected}.tar"')
    return reference


def id_prefix(text: str) -> str | None:
    """The hex digits of `text` if it can name an image by id: `sha256:<hex>` or bare hex, 1 to 64 digits.

    Callers resolve a name as Docker does: first as an exact reference (a short hex string such as
    `abc` is also a valid repository name), and only when no image has that reference, as an id
    prefix. A full 64-digit id is never a reference (`parse` refuses it).
    """
    match = _ID_PREFIX.fullmatch(text)
    return match.group(1) if match else None


def registry_host(reference: Reference) -> str:
    """The host serving the registry API for `reference`: Docker Hub's API lives on registry-1."""
    return DEFAULT_REGISTRY_HOST if reference.domain == DEFAULT_DOMAIN else reference.domain


def repository(reference: Reference) -> str:
    """The repository part of registry URLs: /v2/<repository>/manifests/<tag>."""
    return reference.path


@dataclass(frozen=True)
class Platform:
    """An OS, an architecture and maybe a variant, as in image indexes (`linux/arm64/v8`)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


_PLATFORM_PART = re.compile(r"[A-Za-z0-9_-]+")
# Architecture spellings of uname and distributions, in OCI terms: (architecture, implied variant).
_ARCH_ALIASES = {
    "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
    "i386": ("386", ""), "i486": ("386", ""), "i586": ("386", ""), "i686": ("386", ""), "386": ("386", ""),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"),
    "armv5l": ("arm", "v5"), "armv6l": ("arm", "v6"), "armv7l": ("arm", "v7"), "armv8l": ("arm", "v8"),
}


def _normalize(architecture: str, variant: str) -> tuple[str, str]:
    """Architecture and variant in the one spelling image indexes use, with the implied variant filled in."""
    architecture, implied = _ARCH_ALIASES.get(architecture.lower(), (architecture.lower(), ""))
    variant = variant.lower() or implied
    if architecture in ("arm", "arm64") and variant.isdigit():
        variant = "v" + variant
    if architecture == "arm64" and variant in ("", "v8.0"):
        variant = "v8"
    if architecture == "arm" and not variant:
        variant = "v7"
    if architecture == "amd64" and variant == "v1":
        variant = ""
    return architecture, variant


def parse_platform(text: str) -> Platform:
    """`OS/ARCH[/VARIANT]` such as `linux/amd64` or `linux/arm/v7`, architecture spellings normalized."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(_PLATFORM_PART.fullmatch(part) for part in parts):
        raise InvalidArgument(f'invalid platform "{text}": expected OS/ARCH[/VARIANT] such as linux/amd64')
    architecture, implied = _ARCH_ALIASES.get(parts[1].lower(), (parts[1].lower(), ""))
    variant = parts[2].lower() if len(parts) == 3 else implied
    if architecture in ("arm", "arm64") and variant.isdigit():
        variant = "v" + variant
    return Platform(parts[0].lower(), architecture, variant)


def host_platform(machine: str | None = None) -> Platform:
    """The platform of this machine (`platform.machine()` unless `machine` is given), always Linux."""
    architecture, variant = _normalize(machine if machine is not None else host.machine(), "")
    if architecture == "arm64" and not variant:
        variant = "v8"
    return Platform("linux", architecture, variant)


def normalized(platform: Platform) -> Platform:
    """The one spelling of a platform, implied variants filled in (arm64 -> v8, arm -> v7)."""
    architecture, variant = _normalize(platform.architecture, platform.variant)
    return Platform(platform.os.lower(), architecture, variant)


def platform_matches(wanted: Platform, candidate_os: str, candidate_arch: str, candidate_variant: str = "") -> bool:
    """Whether an index entry fits `wanted`: same OS and architecture; a variant only if `wanted` names one.

    Implied variants count as given: arm64 is v8 and arm is v7 when an entry says nothing.
    """
    if wanted.os.lower() != candidate_os.lower():
        return False
    wanted_arch, wanted_variant = _normalize(wanted.architecture, wanted.variant)
    arch, variant = _normalize(candidate_arch, candidate_variant)
    if wanted_arch != arch:
        return False
    return not wanted.variant or wanted_variant == variant

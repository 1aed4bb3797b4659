"""`--user` resolved the way Docker does it, from the container's own /etc/passwd and /etc/group texts; pure.

Imported by the container init (and so by the shim launcher): only string work here, no imports.
"""

ROOT_HOME = "/root"


class UserError(Exception):
    """The user or a group cannot be resolved in the image; the message names which and where."""


class Identity:
    """Who the container's process runs as: uid, gid, supplementary groups and home directory."""

    __slots__ = ("uid", "gid", "groups", "home")

    def __init__(self, uid: int, gid: int, groups: tuple, home: str):
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.home = home

    def __eq__(self, other) -> bool:
        return isinstance(other, Identity) and (self.uid, self.gid, self.groups, self.home) == (
            other.uid, other.gid, other.groups, other.home,
        )

    def __repr__(self) -> str:
        return f"Identity(uid={self.uid}, gid={self.gid}, groups={self.groups}, home={self.home!r})"


def _number(text: str):
    """The id a purely decimal field stands for, or None for a name."""
    if text.isdigit() and text.isascii():
        value = int(text)
        if value > 0xFFFFFFFE:
            raise UserError(f'"{text}" is out of range: ids go up to 4294967294')
        return value
    return None


def parse_passwd(text: str) -> list:
    """(name, uid, gid, home) of each well-formed line; comments and broken lines are skipped, as libc does."""
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith("#"):
            continue
        uid, gid = _number(fields[2]), _number(fields[3])
        if uid is None or gid is None:
            continue
        entries.append((fields[0], uid, gid, fields[5]))
    return entries


def parse_group(text: str) -> list:
    """(name, gid, members) of each well-formed line."""
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        gid = _number(fields[2])
        if gid is None:
            continue
        members = tuple(member for member in fields[3].split(",") if member)
        entries.append((fields[0], gid, members))
    return entries


def _find_group(spec: str, groups: list, what: str) -> int:
    number = _number(spec)
    for name, gid, _ in groups:
        if (number is None and name == spec) or (number is not None and gid == number):
            return gid
    if number is not None:
        return number
    raise UserError(f'unable to find group "{spec}" ({what}): no matching entries in the image\'s /etc/group')


def resolve(user: str, group_add, passwd_text: str, group_text: str) -> Identity:
    """The identity of `user` ("", UID, NAME, UID:GID, NAME:GROUP) plus `group_add`, as Docker resolves it.

    A number not in /etc/passwd still works (gid 0, home /); a name must be there. Supplementary groups
    are those /etc/group lists the user's name in (only when no group is given, as runc), then
    `group_add`, without the primary group twice.
    """
    user_part, _, group_part = (user or "0").partition(":")
    passwd = parse_passwd(passwd_text)
    groups = parse_group(group_text)
    number = _number(user_part)
    match = None
    for entry in passwd:
        if (number is None and entry[0] == user_part) or (number is not None and entry[1] == number):
            match = entry
            break
    if match is None and number is None:
        raise UserError(f'unable to find user "{user_part}": no matching entries in the image\'s /etc/passwd')
    if match is None:
        name, uid, gid, home = "", number, 0, ROOT_HOME if number == 0 else "/"
    else:
        name, uid, gid, home = match
    if group_part:
        gid = _find_group(group_part, groups, f"--user {user}")
    supplementary = []
    # As runc: memberships only in the implicit form; USER:GROUP asks for exactly that group (plus --group-add).
    if name and not group_part:
        supplementary = [g_gid for _, g_gid, members in groups if name in members]
    for extra in group_add:
        supplementary.append(_find_group(extra, groups, "--group-add"))
    unique = []
    for g in supplementary:
        if g not in unique and g != gid:
            unique.append(g)
    return Identity(uid, gid, tuple(unique), home or "/")


def read_text(path: str) -> str:
    """An /etc file of the container, or "" when the image has none (numbers still resolve then)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""

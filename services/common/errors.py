"""Domain errors shared by every service; the gRPC boundary maps each class to one status code."""


class MydockerError(Exception):
    """Base of every error a service raises on purpose; the message is shown to users as is."""


class NotFound(MydockerError):
    """The named thing does not exist (NOT_FOUND)."""


class AlreadyExists(MydockerError):
    """Something with that identity exists already (ALREADY_EXISTS)."""


class InvalidArgument(MydockerError):
    """The request is wrong whatever the system's state (INVALID_ARGUMENT)."""


class FailedPrecondition(MydockerError):
    """The request cannot be done in the system's current state (FAILED_PRECONDITION)."""


class Unauthenticated(MydockerError):
    """A remote party (a registry) wants credentials, or refused the ones given (UNAUTHENTICATED)."""


class PermissionDenied(MydockerError):
    """A remote party knows who we are and refuses the operation (PERMISSION_DENIED)."""


class Unavailable(MydockerError):
    """A remote party did not answer: connection refused, unknown name, timeout, TLS failure (UNAVAILABLE)."""


class InvalidTransition(FailedPrecondition):
    """A record cannot move from its status to the requested one."""

    def __init__(self, what: str, current: str, target: str):
        super().__init__(f"{what}: invalid state transition from {current} to {target}")
        self.current = current
        self.target = target


class NoSpace(MydockerError):
    """A filesystem mydocker writes to is full (ENOSPC, EDQUOT, SQLite's "disk is full"): RESOURCE_EXHAUSTED."""

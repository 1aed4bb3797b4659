"""Frames between the executor and a shim's attach socket: a type byte, a 4-byte big-endian length, the payload."""

HEADER_SIZE = 5
MAX_PAYLOAD = 1 << 20

# Executor -> shim.
STDIN = b"i"  # bytes for the container's stdin
CLOSE_STDIN = b"c"  # end of input; empty payload
RESIZE = b"w"  # rows, cols as two big-endian u16
SIGNAL = b"k"  # signal number, big-endian i32
# Shim -> executor.
STDOUT = b"o"
STDERR = b"e"
EXIT = b"x"  # exit code, big-endian i32; always the last frame

KINDS = frozenset((STDIN, CLOSE_STDIN, RESIZE, SIGNAL, STDOUT, STDERR, EXIT))


class FrameError(ValueError):
    """The peer sent something that is not a frame of this protocol."""


def encode(kind: bytes, payload: bytes = b"") -> bytes:
    if kind not in KINDS:
        raise FrameError(f"unknown frame type {kind!r}")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"frame payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    return kind + len(payload).to_bytes(4, "big") + payload


def encode_int(value: int) -> bytes:
    return value.to_bytes(4, "big", signed=True)


def decode_int(payload: bytes) -> int:
    if len(payload) != 4:
        raise FrameError(f"integer payload of {len(payload)} bytes")
    return int.from_bytes(payload, "big", signed=True)


def encode_resize(rows: int, cols: int) -> bytes:
    return min(rows, 0xFFFF).to_bytes(2, "big") + min(cols, 0xFFFF).to_bytes(2, "big")


def decode_resize(payload: bytes) -> tuple[int, int]:
    if len(payload) != 4:
        raise FrameError(f"resize payload of {len(payload)} bytes")
    return int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:], "big")


class FrameReader:
    """Turns a byte stream into frames; feed() returns the frames completed so far."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER_SIZE:
            kind = self._buffer[:1]
            if kind not in KINDS:
                raise FrameError(f"unknown frame type {kind!r}")
            size = int.from_bytes(self._buffer[1:HEADER_SIZE], "big")
            if size > MAX_PAYLOAD:
                raise FrameError(f"frame payload of {size} bytes is over {MAX_PAYLOAD}")
            if len(self._buffer) < HEADER_SIZE + size:
                break
            frames.append((kind, self._buffer[HEADER_SIZE:HEADER_SIZE + size]))
            self._buffer = self._buffer[HEADER_SIZE + size:]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)

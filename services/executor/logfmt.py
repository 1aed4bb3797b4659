"""Docker's json-file log lines: encoded by the shim without importing json, decoded by the executor."""

import time

# Longest line kept whole; longer output is split into entries of this size, as docker does.
MAX_LINE = 16 * 1024

# JSON string escapes; bytes that are not UTF-8 were decoded as lone surrogates (surrogateescape)
# and are written as \udcXX, so decoding with surrogateescape gives back the exact bytes.
_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_ESCAPES.update({code: f"\\u{code:04x}" for code in range(0x20) if code not in _ESCAPES})
_ESCAPES.update({code: f"\\u{code:04x}" for code in range(0xDC80, 0xDD00)})
_ESCAPES[0x7F] = "\\u007f"


def rfc3339_nano(time_ns: int) -> str:
    """UTC time with nine fraction digits, e.g. 2024-05-01T12:00:00.000000001Z."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def parse_rfc3339_nano(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC time as written by rfc3339_nano (any fraction)."""
    import calendar

    if not text.endswith("Z"):
        raise ValueError(f"not a UTC RFC 3339 time: {text!r}")
    main, _, fraction = text[:-1].partition(".")
    seconds = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def encode_entry(stream: str, data: bytes, time_ns: int) -> bytes:
    """One json-file line: {"log": ..., "stream": ..., "time": ...} and a newline."""
    text = data.decode("utf-8", "surrogateescape").translate(_ESCAPES)
    return f'{{"log":"{text}","stream":"{stream}","time":"{rfc3339_nano(time_ns)}"}}\n'.encode()


def decode_entry(line: bytes) -> tuple[str, bytes, int]:
    """(stream, data, time in ns) of one json-file line; ValueError if it is not one."""
    import json

    record = json.loads(line)
    data = record["log"].encode("utf-8", "surrogateescape")
    return record["stream"], data, parse_rfc3339_nano(record["time"])


def split_lines(pending: bytes, chunk: bytes, max_line: int = MAX_LINE) -> tuple[list[bytes], bytes]:
    """Complete lines (newline kept, at most `max_line` bytes each) and the unfinished rest."""
    buffer = pending + chunk
    lines: list[bytes] = []
    start = 0
    while True:
        end = buffer.find(b"\n", start)
        if end < 0:
            break
        line_end = end + 1
        while line_end - start > max_line:
            lines.append(buffer[start:start + max_line])
            start += max_line
        lines.append(buffer[start:line_end])
        start = line_end
    while len(buffer) - start >= max_line:
        lines.append(buffer[start:start + max_line])
        start += max_line
    return lines, buffer[start:]

"""One AGI session adapter over pyst2, for both transports (stdio process AGI and FastAGI socket).

pyst2's ``AGI`` gives us the command vocabulary (answer, stream_file, say_digits, get_data,
set_variable...). Everything underneath is replaced here, because pyst2 0.5.1 on its own:
installs a SIGHUP handler in ``__init__`` (ValueError outside the main thread), writes ``str`` to
its streams, prints every line to stderr (Asterisk's console), turns the ``HANGUP`` line into a
ValueError and 511 into AGIUnknownError, has no timeout on any read, and ``_quote`` escapes
nothing (a newline in a caller name would become a second AGI command).

The protocol lives once, in :class:`Session` and :func:`parse_reply`; a transport only moves
bytes with a deadline (:class:`SocketTransport`, :class:`StdioTransport`).
"""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

from asterisk import agi as pyst2

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 8192  # one env line or reply line; longer lines are cut and the rest dropped
MAX_ENV_LINES = 256
MAX_ENV_BYTES = 64 * 1024
MAX_ARG_CHARS = 256  # a quoted argument longer than this is truncated
# Asterisk sends the env at once: a client still silent after this is not Asterisk (dropped
# well within 2 s, scheduling included).
ENV_TIMEOUT_S = 1.5
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\([A-Za-z0-9_,]*\))?$")
_REPLY = re.compile(r"^(\d{3})(?:[ -](.*))?$")
_RESULT = re.compile(r"result=(\S*)(?:\s+\((.*)\))?(?:\s+(.*))?$")


class AGIHangup(Exception):
    """The channel is gone: HANGUP line, 511 on a dead channel, result=-1, or EOF."""


class AGIDeadline(Exception):
    """Asterisk did not answer before the session's deadline."""


class AGIProtocolError(Exception):
    """A reply we cannot make sense of (510 invalid command, 520 usage, garbage)."""


@dataclass(frozen=True)
class Reply:
    code: int
    result: str
    data: str
    extra: str
    raw: str


def parse_reply(lines: list[str]) -> Reply:
    """Parse one complete AGI reply (several lines for 520). Pure; raises the typed errors."""
    first = lines[0] if lines else ""
    if first.strip() == "HANGUP":
        raise AGIHangup("HANGUP")
    m = _REPLY.match(first)
    if not m:
        raise AGIProtocolError(f"unparseable reply {first[:80]!r}")
    code, rest = int(m.group(1)), m.group(2) or ""
    if code == 200:
        r = _RESULT.search(rest)
        if not r:
            raise AGIProtocolError(f"200 without result: {first[:80]!r}")
        result, data, extra = r.group(1), r.group(2) or "", r.group(3) or ""
        if result == "-1":
            raise AGIHangup("result=-1")
        return Reply(200, result, data, extra, first)
    if code == 511:
        raise AGIHangup("511 dead channel")
    if code == 510:
        raise AGIProtocolError(f"510 invalid command: {rest[:80]}")
    if code == 520:
        raise AGIProtocolError("520 usage: " + " / ".join(line[:80] for line in lines[1:4]))
    raise AGIProtocolError(f"unexpected code {code}: {first[:80]!r}")


def quote(value: Any, max_chars: int = MAX_ARG_CHARS) -> str:
    """One AGI argument that Asterisk's parser reads back as exactly this one argument.

    Control characters (CR, LF, NUL and the rest) are dropped, not escaped: Asterisk has no escape
    for them. Backslash and double quote are escaped; the whole is wrapped in double quotes.
    """
    text = str(value)
    clean = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")[:max_chars]
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Transport:
    """Moves bytes to and from Asterisk; every read is bounded by a deadline."""

    def recv(self, timeout: float) -> bytes:
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SocketTransport(Transport):
    def __init__(self, sock: socket.socket):
        self.sock = sock

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(4096)
        except TimeoutError:
            raise AGIDeadline("no data from Asterisk in time") from None
        except OSError as exc:
            raise AGIHangup(f"socket error: {exc}") from None

    def send(self, data: bytes) -> None:
        self.sock.settimeout(2.0)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise AGIHangup(f"socket error: {exc}") from None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class StdioTransport(Transport):
    """Process AGI: Asterisk writes to our fd 0 and reads our fd 1."""

    def __init__(self, fd_in: int = 0, fd_out: int = 1):
        self.fd_in, self.fd_out = fd_in, fd_out
        self.hung_up = False  # set by the process's SIGHUP handler

    def recv(self, timeout: float) -> bytes:
        if self.hung_up:
            raise AGIHangup("SIGHUP from Asterisk")
        ready, _, _ = select.select([self.fd_in], [], [], max(timeout, 0))
        if not ready:
            raise AGIDeadline("no data from Asterisk in time")
        try:
            return os.read(self.fd_in, 4096)
        except OSError as exc:
            raise AGIHangup(f"stdin error: {exc}") from None

    def send(self, data: bytes) -> None:
        try:
            while data:
                written = os.write(self.fd_out, data)
                data = data[written:]
        except OSError as exc:  # EPIPE: Asterisk closed our stdout
            raise AGIHangup(f"stdout error: {exc}") from None


class _Null:
    """Where pyst2's own chatter would go (it writes to self.stderr in a few helpers)."""

    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class Session(pyst2.AGI):  # type: ignore[misc]
    """An AGI conversation with deadlines, safe quoting and typed hangups."""

    def __init__(self, transport: Transport, deadline_s: float = 10.0):
        # pyst2.AGI.__init__ is not called on purpose: it installs a signal handler, reads stdin
        # and prints to stderr. We set what its methods use.
        self.transport = transport
        self.stdin = self.stdout = None
        self.stderr = _Null()
        self._got_sighup = False
        self._buffer = b""
        self._eof = False
        self.deadline = time.monotonic() + deadline_s
        self.commands_sent = 0
        self.env: dict[str, str] = {}
        self._read_env()

    # -- byte level ----------------------------------------------------------------------------
    def _remaining(self, until: float | None = None) -> float:
        """Seconds left before the session deadline (or an earlier absolute `until`)."""
        end = self.deadline if until is None else min(self.deadline, until)
        left = end - time.monotonic()
        if left <= 0:
            raise AGIDeadline("session deadline passed")
        return left

    def _read_line(self, until: float | None = None) -> str:
        kept: bytes | None = None  # head of an over-long line whose tail we are skipping
        while True:
            idx = self._buffer.find(b"\n")
            if idx >= 0:
                raw = self._buffer[:idx] if kept is None else kept
                self._buffer = self._buffer[idx + 1:]
                return self._decode(raw)
            if len(self._buffer) > MAX_LINE_BYTES:
                if kept is None:
                    kept = self._buffer[:MAX_LINE_BYTES]
                self._buffer = b""
            if self._eof:
                if self._buffer or kept is not None:
                    raw = self._buffer if kept is None else kept
                    self._buffer = b""
                    return self._decode(raw)
                raise AGIHangup("connection closed by Asterisk")
            chunk = self.transport.recv(self._remaining(until))
            if not chunk:
                self._eof = True
            self._buffer += chunk

    @staticmethod
    def _decode(raw: bytes) -> str:
        return raw[:MAX_LINE_BYTES].decode("utf-8", errors="replace").rstrip("\r")

    def _read_env(self) -> None:
        total = 0
        until = time.monotonic() + ENV_TIMEOUT_S  # the whole env, not per line: no slowloris
        for _ in range(MAX_ENV_LINES):
            line = self._read_line(until)
            if line == "":
                return
            total += len(line)
            if total > MAX_ENV_BYTES:
                raise AGIProtocolError("AGI environment too large")
            key, sep, value = line.partition(":")
            key = key.strip()
            if sep and key.startswith("agi_") and key.replace("_", "").isalnum():
                self.env.setdefault(key, value.strip())  # first wins: duplicates are not ours
        raise AGIProtocolError("AGI environment without end")

    # -- pyst2 overrides -----------------------------------------------------------------------
    def _quote(self, string: Any) -> str:
        return quote(string)

    def test_hangup(self) -> None:
        if self._got_sighup:
            raise AGIHangup("SIGHUP from Asterisk")

    def execute(self, command: str, *args: Any) -> dict[str, tuple[str, str]]:
        self.test_hangup()
        self.send_command(command, *args)
        return self.get_result()

    def send_command(self, command: str, *args: Any) -> None:
        text = " ".join([command.strip(), *(str(a) for a in args)]).strip()
        if any(ch in text for ch in "\r\n\0"):
            # Only quote() output and our constants reach here; this is the last line of defence.
            raise AGIProtocolError("refusing to send a command containing a line break")
        self.commands_sent += 1
        self.transport.send((text + "\n").encode("utf-8"))

    def get_result(self, stdin: Any = None) -> dict[str, tuple[str, str]]:
        first = self._read_line()
        lines = [first]
        if first.startswith("520-"):
            # Multi-line usage text ends with a line starting "520 " ("520 End of proper usage.").
            for _ in range(200):
                line = self._read_line()
                lines.append(line)
                if line.startswith("520 "):
                    break
        reply = parse_reply(lines)
        return {"result": (reply.result, reply.data), "extra": (reply.extra, "")}

    # -- helpers with our semantics -------------------------------------------------------------
    def set_var(self, name: str, value: Any) -> None:
        """SET VARIABLE with a constant name and an escaped value."""
        if not _VARIABLE_NAME.match(name):
            raise ValueError(f"variable name must be a constant identifier: {name!r}")
        self.execute("SET VARIABLE", name, quote(value))

    def get_var(self, name: str) -> str:
        if not _VARIABLE_NAME.match(name):
            raise ValueError(f"variable name must be a constant identifier: {name!r}")
        reply = self.execute("GET VARIABLE", name)
        code, value = reply["result"]
        return value if code == "1" else ""

    def read_digits(self, prompt: str, timeout_ms: int, max_digits: int) -> str:
        """GET DATA: digits typed during the prompt count; '' on silence."""
        reply = self.execute("GET DATA", prompt, int(timeout_ms), int(max_digits))
        value, _data = reply["result"]
        return "".join(ch for ch in value if ch in "0123456789*#")

    def play(self, sound: str, escape: str = "") -> str:
        """STREAM FILE; returns the digit that interrupted it, or ''."""
        reply = self.execute("STREAM FILE", sound, quote(escape))
        value = reply["result"][0]
        return chr(int(value)) if value.isdigit() and int(value) > 0 else ""

    def say_code(self, digits: str, escape: str = "") -> str:
        reply = self.execute("SAY DIGITS", "".join(d for d in digits if d.isdigit()),
                             quote(escape))
        value = reply["result"][0]
        return chr(int(value)) if value.isdigit() and int(value) > 0 else ""

    def close(self) -> None:
        self.transport.close()

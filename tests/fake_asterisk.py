"""A fake Asterisk: plays Asterisk 22's side of (Fast)AGI so tests can drive the real handlers.

What it reproduces, from res/res_agi.c (Asterisk 22):

- the environment block, byte for byte in Asterisk's order: ``launch_netscript()`` first sends
  ``agi_network: yes`` and ``agi_network_script: <path after the host>`` (FastAGI only), then
  ``setup_env()`` sends agi_request ... agi_threadid, one ``agi_arg_N`` per AGI() argument after
  the script, and a blank line. Values are sent raw (no escaping: a caller name is whatever the
  trunk put there). For a process AGI, ``AGI(callscreen.agi,screen,X)`` gives ``agi_arg_1: screen``
  and ``agi_arg_2: X`` (the route is an argument like the others), while FastAGI
  ``AGI(agi://h/screen,X)`` gives ``agi_arg_1: X``.
- how ``run_agi()`` reads commands: ``fgets()`` into a 2048-byte buffer, so a line is cut after
  2047 bytes and the rest becomes the NEXT command (:func:`split_commands`), and how
  ``parse_args()`` splits a command into words (:func:`parse_args`).
- realistic replies per command (:func:`realistic_reply`): ``ANSWER`` -> ``200 result=0``,
  ``STREAM FILE`` -> ``200 result=0 endpos=8000``, ``GET DATA`` -> ``200 result= (timeout)``...
  and scripted misbehaviour: ``HANGUP`` in place of a reply, 511, 510, the multi-line 520 usage
  block, garbage, a slow peer (:class:`Slow`), closing mid-command (:data:`CLOSE`), never
  answering (:data:`SILENT`), side effects such as sending SIGHUP (:class:`Do`).

Every command line received is recorded (:attr:`FakeAsterisk.commands`, raw bytes in
:attr:`FakeAsterisk.received`). The same peer runs over a TCP connection to a FastAGIServer, over
a socketpair whose other end is wrapped in ``SocketTransport`` (direct ``handlers.run``), or over
a process AGI's stdin/stdout pipes.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# -- Asterisk's side of the parsing ------------------------------------------------------------

AGI_BUF_LEN = 2048  # res_agi.c: char buf[AGI_BUF_LEN] in run_agi()
MAX_ARGS = 128  # res_agi.c: #define MAX_ARGS 128


def parse_args(line: bytes) -> list[bytes]:
    """A faithful port of ``static int parse_args(char *s, int *max, const char *argv[])`` in
    res/res_agi.c (Asterisk 22, unchanged since 1.4): words split on space/tab outside double
    quotes; a backslash makes the next character literal (also inside quotes); quotes are removed
    and toggle the quoted state wherever they appear; a quote opening right after whitespace
    starts a word even if it stays empty (``""`` is an empty argument). Works on bytes like the C
    code; a NUL ends the string as in C. Past MAX_ARGS - 1 words, the characters that would start
    a new word are dropped ("Too many arguments, truncating").
    """
    buf = bytearray()  # the C code rewrites the line in place: cur <= s
    starts: list[int] = []
    quoted = escaped = False
    whitespace = True
    for c in line:
        if c == 0:  # while (*s): a C string ends at the first NUL
            break
        normal = False
        if c == ord('"'):
            if escaped:
                normal = True
            else:
                quoted = not quoted
                if quoted and whitespace:
                    # "If we're starting a quote, coming off white space start a new word, too"
                    starts.append(len(buf))
                    whitespace = False
                escaped = False
        elif c in (ord(" "), ord("\t")):
            if not quoted and not escaped:
                whitespace = True
                buf.append(0)  # *(cur++) = '\0': ends the previous argument
            else:
                normal = True
        elif c == ord("\\"):
            if escaped:
                normal = True
            else:
                escaped = True
        else:
            normal = True
        if normal:
            if whitespace:
                if len(starts) >= MAX_ARGS - 1:
                    continue  # ast_log("Too many arguments, truncating"); break out of the switch
                starts.append(len(buf))
                whitespace = False
            buf.append(c)
            escaped = False
    buf.append(0)
    return [bytes(buf[start:buf.index(0, start)]) for start in starts]


def split_commands(data: bytes) -> list[bytes]:
    """The command lines run_agi() reads out of a byte stream: fgets() into AGI_BUF_LEN bytes (a
    longer line is cut and its tail read as the next command), the trailing newline removed, and
    the C string ending at the first NUL."""
    out = []
    pos = 0
    while pos < len(data):
        chunk = data[pos:pos + AGI_BUF_LEN - 1]
        idx = chunk.find(b"\n")
        if idx >= 0:
            line, pos = chunk[:idx], pos + idx + 1
        else:
            line, pos = chunk, pos + len(chunk)
        out.append(line.split(b"\0", 1)[0])
    return out


# -- the environment block ----------------------------------------------------------------------

Value = str | bytes | int


@dataclass
class Channel:
    """What Asterisk knows about the channel when AGI() runs (fiction numbers only)."""

    callerid: Value = "+33353010001"
    calleridname: Value = "unknown"
    callingpres: int = 0
    dnid: Value = "0199000001"
    extension: Value | None = None  # defaults to dnid
    language: str = "en"
    context: str = "from-trunk"
    name: str = "PJSIP/trunk-00000001"
    tech: str = "PJSIP"
    uniqueid: str = "1764340000.1"
    accountcode: str = ""
    priority: int = 2
    version: str = "22.5.2"
    threadid: int = 140234567890


def _b(value: Value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _pairs(request: str, ch: Channel, args: Sequence[Value]) -> list[tuple[str, Value]]:
    """setup_env() in res_agi.c, in its order."""
    pairs: list[tuple[str, Value]] = [
        ("agi_request", request),
        ("agi_channel", ch.name),
        ("agi_language", ch.language),
        ("agi_type", ch.tech),
        ("agi_uniqueid", ch.uniqueid),
        ("agi_version", ch.version),
        ("agi_callerid", ch.callerid),
        ("agi_calleridname", ch.calleridname),
        ("agi_callingpres", ch.callingpres),
        ("agi_callingani2", 0),
        ("agi_callington", 0),
        ("agi_callingtns", 0),
        ("agi_dnid", ch.dnid),
        ("agi_rdnis", "unknown"),
        ("agi_context", ch.context),
        ("agi_extension", ch.dnid if ch.extension is None else ch.extension),
        ("agi_priority", ch.priority),
        ("agi_enhanced", "0.0"),
        ("agi_accountcode", ch.accountcode),
        ("agi_threadid", ch.threadid),
    ]
    pairs += [(f"agi_arg_{i}", arg) for i, arg in enumerate(args, start=1)]
    return pairs


def _render(pairs: list[tuple[str, Value]], overrides: Mapping[str, Value | None] | None,
            extra: Sequence[bytes], end: bool) -> bytes:
    overrides = dict(overrides or {})
    lines = []
    for key, value in pairs:
        if key in overrides:
            value = overrides.pop(key)  # type: ignore[assignment]
            if value is None:
                continue
        lines.append(key.encode() + b": " + _b(value) + b"\n")
    for key, value in overrides.items():  # keys Asterisk would not send: appended
        if value is not None:
            lines.append(key.encode() + b": " + _b(value) + b"\n")
    lines.extend(extra)
    if end:
        lines.append(b"\n")
    return b"".join(lines)


def fastagi_env(script: str = "screen", args: Sequence[Value] = ("0199000001",),
                ch: Channel | None = None, *, host: str = "127.0.0.1", port: int = 4573,
                overrides: Mapping[str, Value | None] | None = None,
                extra: Sequence[bytes] = (), end: bool = True) -> bytes:
    """The block Asterisk 22 sends for ``AGI(agi://host:port/<script>,<args...>)``.

    overrides: replace a value in place (None drops the line); unknown keys are appended.
    extra: raw lines (with their newline) added before the blank line. end=False: no blank line.
    """
    ch = ch or Channel()
    head: list[tuple[str, Value]] = [("agi_network", "yes")]
    if script:
        head.append(("agi_network_script", script))
    pairs = head + _pairs(f"agi://{host}:{port}/{script}", ch, args)
    return _render(pairs, overrides, extra, end)


def process_env(args: Sequence[Value] = ("screen", "0199000001", ""), ch: Channel | None = None,
                *, script: str = "callscreen.agi",
                overrides: Mapping[str, Value | None] | None = None,
                extra: Sequence[bytes] = (), end: bool = True) -> bytes:
    """The block Asterisk 22 writes on a process AGI's stdin for ``AGI(<script>,<args...>)``:
    no agi_network lines, and the route is agi_arg_1 (the dialplan runs
    ``AGI(callscreen.agi,${ARG1},${ARG2},${ARG3})``: a trailing empty argument is still sent)."""
    return _render(_pairs(script, ch or Channel(), args), overrides, extra, end)


# -- replies ------------------------------------------------------------------------------------

HANGUP = "HANGUP"
DEAD_511 = "511 Command Not Permitted on a dead channel or intercept routine"
INVALID_510 = "510 Invalid or unknown command"
USAGE_520 = [
    "520-Invalid command syntax.  Proper usage follows:",
    " Usage: GET DATA <file to be streamed> [timeout] [maxdigits]",
    "        Stream the given file, and receive DTMF data.",
    "520 End of proper usage.",
]
TIMEOUT = "200 result= (timeout)"


class _Marker:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


CLOSE = _Marker("CLOSE")  # close the connection instead of answering
SILENT = _Marker("SILENT")  # never answer this command (keep the connection open)


@dataclass
class Slow:
    """Wait, then answer (a slow Asterisk, or a caller slow to type)."""

    seconds: float
    then: Any = "200 result=1"


@dataclass
class Do:
    """A side effect at this point of the conversation (e.g. send SIGHUP to a process AGI)."""

    fn: Callable[[], None]


@dataclass
class Steps:
    """Several actions in order: e.g. Steps("200 result=-1", Do(send_sighup))."""

    actions: tuple[Any, ...]

    def __init__(self, *actions: Any):
        self.actions = actions


# Reply = str (one line) | bytes (sent raw) | list[str] (several lines) | CLOSE | SILENT | Slow |
#         Do | Steps
Reply = Any


@dataclass
class Command:
    index: int
    raw: bytes
    argv: list[str]

    @property
    def line(self) -> str:
        return self.raw.decode("utf-8", errors="replace")

    @property
    def verb(self) -> str:
        """'SET VARIABLE', 'GET DATA', 'STREAM FILE', 'SAY DIGITS', 'ANSWER'..."""
        words = [w.upper() for w in self.argv[:2]]
        two_words = {"SET", "GET", "STREAM", "SAY", "DATABASE", "CHANNEL", "RECEIVE", "RECORD",
                     "SEND", "SPEECH", "CONTROL", "WAIT", "GOSUB", "ASYNCAGI"}
        if len(words) == 2 and words[0] in two_words:
            return " ".join(words)
        return words[0] if words else ""


Responder = Callable[[Command, "FakeAsterisk"], Reply]


def realistic_reply(cmd: Command, _peer: FakeAsterisk | None = None) -> Reply:
    """What Asterisk answers on a live channel when nobody presses anything."""
    return {
        "ANSWER": "200 result=0",
        "STREAM FILE": "200 result=0 endpos=8000",
        "SAY DIGITS": "200 result=0",
        "GET DATA": TIMEOUT,
    }.get(cmd.verb, "200 result=1")


def by_verb(table: Mapping[str, Reply | Responder], default: Responder = realistic_reply
            ) -> Responder:
    """A responder: per-verb replies (a value, or a callable (cmd, peer) -> reply)."""

    def respond(cmd: Command, peer: FakeAsterisk) -> Reply:
        if cmd.verb in table:
            entry = table[cmd.verb]
            return entry(cmd, peer) if callable(entry) else entry
        return default(cmd, peer)

    return respond


def in_order(replies: Sequence[Reply], default: Responder = realistic_reply) -> Responder:
    """A responder: the n-th command gets replies[n]; later ones the default."""

    def respond(cmd: Command, peer: FakeAsterisk) -> Reply:
        return replies[cmd.index] if cmd.index < len(replies) else default(cmd, peer)

    return respond


def typed(digits: str) -> str:
    """GET DATA's reply when the caller typed these digits."""
    return f"200 result={digits}"


def type_code(transform: Callable[[str], str] = lambda code: code) -> Responder:
    """GET DATA answered with the code the screener put in SCREEN_CHALLENGE_CODE (transformed:
    e.g. a wrong digit)."""

    def respond(_cmd: Command, peer: FakeAsterisk) -> Reply:
        return typed(transform(peer.variables.get("SCREEN_CHALLENGE_CODE", "")))

    return respond


# -- byte transports for the peer --------------------------------------------------------------


class PeerIO:
    """Asterisk's end of the conversation: lines in, bytes out, bounded waits."""

    def __init__(self) -> None:
        self._buf = b""

    def _recv(self, timeout: float) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def read_line(self, timeout: float) -> bytes | None:
        """One line without its newline; None on EOF (a last unterminated line is returned
        first); TimeoutError when nothing complete arrives in time."""
        end = time.monotonic() + timeout
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line, self._buf = self._buf[:idx], self._buf[idx + 1:]
                return line
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete line from the AGI side")
            chunk = self._recv(left)
            if not chunk:
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line
                return None
            self._buf += chunk


class SocketIO(PeerIO):
    def __init__(self, sock: socket.socket):
        super().__init__()
        self.sock = sock

    def _recv(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not ready:
            raise TimeoutError("no data from the AGI side")
        try:
            return self.sock.recv(65536)
        except OSError:  # reset by the AGI side: as good as closed
            return b""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class PipeIO(PeerIO):
    """A process AGI: we write its stdin, read its stdout (the Popen file objects, used through
    their fds: no buffering in the way)."""

    def __init__(self, read_file: Any, write_file: Any):
        super().__init__()
        self.read_file, self.write_file = read_file, write_file

    def _recv(self, timeout: float) -> bytes:
        fd = self.read_file.fileno()
        ready, _, _ = select.select([fd], [], [], max(timeout, 0))
        if not ready:
            raise TimeoutError("no data from the AGI process")
        try:
            return os.read(fd, 65536)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        fd = self.write_file.fileno()
        while data:
            data = data[os.write(fd, data):]

    def close(self) -> None:
        """Close the process's stdin (what Asterisk does when run_agi() ends)."""
        try:
            self.write_file.close()
        except OSError:
            pass


# -- the peer -----------------------------------------------------------------------------------


@dataclass
class FakeAsterisk:
    io: PeerIO
    respond: Responder = realistic_reply
    idle_timeout: float = 10.0  # longest wait for the next command before giving up
    max_commands: int = 500
    commands: list[Command] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)
    set_history: list[tuple[str, str]] = field(default_factory=list)
    eof: bool = False  # the AGI side closed the conversation
    eof_at: float | None = None
    closed_by_peer: bool = False  # we closed (CLOSE)
    timed_out: bool = False
    error: BaseException | None = None
    env_error: OSError | None = None
    _thread: threading.Thread | None = None

    # -- env --
    def send_env(self, block: bytes, chunk: int | None = None, delay: float = 0.0) -> None:
        """Send the env block, at once or in chunks with a delay between them (slowloris)."""
        if chunk is None:
            self.io.write(block)
            return
        for i in range(0, len(block), chunk):
            self.io.write(block[i:i + chunk])
            if delay:
                time.sleep(delay)

    # -- conversation --
    def serve(self) -> None:
        """Answer commands until the AGI side closes (or we close, or nothing comes in time)."""
        try:
            while len(self.commands) < self.max_commands:
                try:
                    raw = self.io.read_line(self.idle_timeout)
                except TimeoutError:
                    self.timed_out = True
                    return
                if raw is None:
                    self.eof, self.eof_at = True, time.monotonic()
                    return
                self.received += raw + b"\n"
                raw = raw.rstrip(b"\r")
                cmd = Command(len(self.commands), raw,
                              [a.decode("utf-8", errors="replace") for a in parse_args(raw)])
                self.commands.append(cmd)
                if cmd.verb == "SET VARIABLE" and len(cmd.argv) >= 4:
                    self.set_history.append((cmd.argv[2], cmd.argv[3]))
                if not self._act(self.respond(cmd, self)):
                    return
        except BaseException as exc:  # noqa: BLE001 - reported to the test through .error
            self.error = exc

    def _act(self, reply: Reply) -> bool:
        """Carry out one reply; False when the conversation is over for us."""
        if isinstance(reply, Steps):
            return all(self._act(a) for a in reply.actions)
        if isinstance(reply, Slow):
            time.sleep(reply.seconds)
            return self._act(reply.then)
        if isinstance(reply, Do):
            reply.fn()
            return True
        if reply is CLOSE:
            self.closed_by_peer = True
            self.io.close()
            return False
        if reply is SILENT:
            return True
        if isinstance(reply, bytes):
            data = reply
        elif isinstance(reply, str):
            data = (reply + "\n").encode("utf-8")
        else:
            data = "".join(line + "\n" for line in reply).encode("utf-8")
        try:
            self.io.write(data)
        except OSError:
            self.eof, self.eof_at = True, time.monotonic()
            return False
        return True

    def start(self, env: bytes | None = None, **send: Any) -> FakeAsterisk:
        """Run (send env, then serve) in a daemon thread."""

        def main() -> None:
            try:
                if env is not None:
                    self.send_env(env, **send)
            except OSError as exc:  # the AGI side closed before reading it all: its right
                self.env_error = exc
                self.eof, self.eof_at = True, time.monotonic()
                return
            self.serve()

        self._thread = threading.Thread(target=main, name="fake-asterisk", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 10.0) -> FakeAsterisk:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the fake Asterisk is still talking"
        if self.error is not None:
            raise AssertionError(f"fake Asterisk failed: {self.error!r}") from self.error
        return self

    def close(self) -> None:
        self.io.close()

    # -- what the channel looks like --
    @property
    def lines(self) -> list[str]:
        return [c.line for c in self.commands]

    @property
    def verbs(self) -> list[str]:
        return [c.verb for c in self.commands]

    @property
    def variables(self) -> dict[str, str]:
        """Channel variables as set so far (last SET VARIABLE wins)."""
        return dict(self.set_history)

    def dialplan_view(self) -> dict[str, str]:
        """The channel variables once the [callscreen] subroutine returns: the screener answers
        either with the six SCREEN_* variables or with one SCREEN_RESULT that the dialplan splits
        with ${SHIFT(SCREEN_RESULT,|)} into action|reason|rule|score|number|degraded."""
        view = self.variables
        if "SCREEN_RESULT" in view:
            fields = view.pop("SCREEN_RESULT").split("|")
            for i, name in enumerate(SCREEN_FIELDS):
                view[name] = fields[i] if i < len(fields) else ""
        return view

    def screen_vars(self) -> dict[str, str]:
        """The verdict variables (SCREEN_* but the challenge code)."""
        return {k: v for k, v in self.dialplan_view().items()
                if k in SCREEN_FIELDS}


SCREEN_FIELDS = ("SCREEN_ACTION", "SCREEN_REASON", "SCREEN_RULE", "SCREEN_SCORE", "SCREEN_NUMBER",
                 "SCREEN_DEGRADED")


# -- wiring -------------------------------------------------------------------------------------


def socketpair_peer(respond: Responder = realistic_reply, idle_timeout: float = 10.0
                    ) -> tuple[socket.socket, FakeAsterisk]:
    """(our end for SocketTransport, the fake Asterisk on the other end)."""
    ours, theirs = socket.socketpair()
    return ours, FakeAsterisk(SocketIO(theirs), respond, idle_timeout=idle_timeout)


def tcp_peer(port: int, respond: Responder = realistic_reply, host: str = "127.0.0.1",
             idle_timeout: float = 10.0) -> FakeAsterisk:
    """A fake Asterisk connected to a FastAGI server, as res_agi's launch_netscript() does."""
    sock = socket.create_connection((host, port), timeout=5.0)
    return FakeAsterisk(SocketIO(sock), respond, idle_timeout=idle_timeout)


def run_direct(engine: Any, env: bytes, respond: Responder = realistic_reply,
               route_hint: str = "", transport_cls: Any = None) -> tuple[Any, FakeAsterisk]:
    """One call straight through handlers.run over a socketpair; returns (Outcome, peer)."""
    from callscreen import handlers
    from callscreen.agi import SocketTransport

    ours, peer = socketpair_peer(respond)
    peer.start(env)
    transport = (transport_cls or SocketTransport)(ours)
    outcome = handlers.run(transport, lambda: engine, route_hint)
    peer.join(10)
    peer.close()
    return outcome, peer

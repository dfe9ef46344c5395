"""The AGI protocol layer: parse_reply as a table of protocol lines (panoramisk style), then the
Session adapter over a socketpair against the fake Asterisk (tests/fake_asterisk.py).

No Redis here: this is the wire, not the decision.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asterisk import agi as pyst2
from fake_asterisk import (
    CLOSE,
    DEAD_511,
    HANGUP,
    INVALID_510,
    SILENT,
    TIMEOUT,
    USAGE_520,
    Channel,
    FakeAsterisk,
    Slow,
    by_verb,
    fastagi_env,
    in_order,
    socketpair_peer,
)

from callscreen.agi import (
    ENV_TIMEOUT_S,
    MAX_LINE_BYTES,
    AGIDeadline,
    AGIHangup,
    AGIProtocolError,
    Reply,
    Session,
    SocketTransport,
    parse_reply,
)

MARGIN_S = 1.0  # scheduling slack on a loaded machine; the budgets asserted stay far below a ring

# -- parse_reply: (lines, expected Reply or exception type, text the error must mention) ------

OK_CASES: list[tuple[list[str], Reply]] = [
    (["200 result=1"], Reply(200, "1", "", "", "200 result=1")),
    (["200 result=0 endpos=1234"], Reply(200, "0", "", "endpos=1234", "200 result=0 endpos=1234")),
    (["200 result= (timeout)"], Reply(200, "", "timeout", "", "200 result= (timeout)")),
    (["200 result=123 (timeout)"], Reply(200, "123", "timeout", "", "200 result=123 (timeout)")),
    (["200 result=1 (value with spaces)"],
     Reply(200, "1", "value with spaces", "", "200 result=1 (value with spaces)")),
    (["200 result=1 (a (nested) value)"],
     Reply(200, "1", "a (nested) value", "", "200 result=1 (a (nested) value)")),
    (["200 result=49 endpos=8000"], Reply(200, "49", "", "endpos=8000", "200 result=49 endpos=8000")),
    (["200 result=0"], Reply(200, "0", "", "", "200 result=0")),
]

ERROR_CASES: list[tuple[list[str], type[Exception], str]] = [
    (["200 result=-1"], AGIHangup, "result=-1"),
    (["200 result=-1 endpos=0"], AGIHangup, "result=-1"),
    ([HANGUP], AGIHangup, "HANGUP"),
    (["HANGUP "], AGIHangup, "HANGUP"),
    ([DEAD_511], AGIHangup, "511"),
    ([INVALID_510], AGIProtocolError, "510"),
    (USAGE_520, AGIProtocolError, "Usage: GET DATA"),
    (["520 Invalid command syntax.  Proper usage not available."], AGIProtocolError, "520"),
    (["garbage"], AGIProtocolError, "garbage"),
    (["200"], AGIProtocolError, "without result"),
    (["200 endpos=1"], AGIProtocolError, "without result"),
    (["20 result=1"], AGIProtocolError, "unparseable"),
    (["100 result=0 Trying..."], AGIProtocolError, "100"),
    ([""], AGIProtocolError, "unparseable"),
    ([], AGIProtocolError, "unparseable"),
]


@pytest.mark.parametrize(("lines", "expected"), OK_CASES, ids=[c[0][0] for c in OK_CASES])
def test_parse_reply_ok(lines: list[str], expected: Reply) -> None:
    assert parse_reply(lines) == expected


@pytest.mark.parametrize(("lines", "error", "mentions"), ERROR_CASES,
                         ids=[repr(c[0][:1]) for c in ERROR_CASES])
def test_parse_reply_errors(lines: list[str], error: type[Exception], mentions: str) -> None:
    with pytest.raises(error) as info:
        parse_reply(lines)
    assert mentions in str(info.value)


def test_parse_reply_520_error_carries_the_usage_not_the_markers() -> None:
    with pytest.raises(AGIProtocolError) as info:
        parse_reply(USAGE_520)
    text = str(info.value)
    assert "Usage: GET DATA <file to be streamed>" in text
    assert "Invalid command syntax" not in text  # the first line is the marker, not the usage


# -- Session over a socketpair --------------------------------------------------------------


class Conversation:
    """A Session (our side) and a FakeAsterisk (Asterisk's side) over a socketpair."""

    def __init__(self) -> None:
        self.peers: list[FakeAsterisk] = []
        self.sockets: list[socket.socket] = []

    def open(self, env: bytes | None = None, respond: Any = None, *, deadline_s: float = 10.0,
             start: bool = True, **send: Any) -> tuple[Callable[[], Session], FakeAsterisk]:
        ours, peer = socketpair_peer(respond or (lambda c, p: "200 result=1"), idle_timeout=15)
        self.sockets.append(ours)
        self.peers.append(peer)
        if start:
            peer.start(env, **send)
        return (lambda: Session(SocketTransport(ours), deadline_s=deadline_s)), peer

    def session(self, env: bytes | None = None, respond: Any = None, **kw: Any
                ) -> tuple[Session, FakeAsterisk]:
        make, peer = self.open(env if env is not None else fastagi_env(), respond, **kw)
        return make(), peer

    def close(self) -> None:
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
        for p in self.peers:
            if p._thread is not None:
                p._thread.join(5)
            p.close()


@pytest.fixture
def conv() -> Iterator[Conversation]:
    c = Conversation()
    yield c
    c.close()


def finish(session: Session, peer: FakeAsterisk) -> FakeAsterisk:
    session.close()
    return peer.join(5)


def test_env_as_asterisk_sends_it(conv: Conversation) -> None:
    env = fastagi_env("screen", ["0199000001", "B"], Channel(callerid="+33353010001"))
    session, peer = conv.session(env)
    assert session.env["agi_network"] == "yes"
    assert session.env["agi_network_script"] == "screen"
    assert session.env["agi_request"] == "agi://127.0.0.1:4573/screen"
    assert session.env["agi_callerid"] == "+33353010001"
    assert session.env["agi_arg_1"] == "0199000001" and session.env["agi_arg_2"] == "B"
    assert session.env["agi_accountcode"] == ""  # "agi_accountcode: " with nothing after it
    assert session.env["agi_version"] == "22.5.2"
    assert len(session.env) == 24  # 2 network + 20 setup_env + 2 args
    finish(session, peer)
    assert peer.commands == [] and peer.eof


def test_env_duplicates_first_wins_and_foreign_keys_are_ignored(conv: Conversation) -> None:
    env = fastagi_env(extra=[b"agi_callerid: +33199000001\n",  # a second one: not Asterisk's
                             b"foo: bar\n", b"agi_x y: z\n", b"agi_name_without_colon\n",
                             b"AGI_CALLERID: +33199000009\n", b": empty key\n"])
    session, peer = conv.session(env)
    assert session.env["agi_callerid"] == "+33353010001"
    assert "foo" not in session.env and "agi_x y" not in session.env
    assert "agi_name_without_colon" not in session.env and "AGI_CALLERID" not in session.env
    assert all(k.startswith("agi_") for k in session.env)
    finish(session, peer)


def test_env_invalid_utf8_cr_and_nul_are_survivable(conv: Conversation) -> None:
    env = fastagi_env(ch=Channel(calleridname=b"Caf\xe9 \xff\xfe Bob\r", callerid=b"+3335301\x000001"))
    session, peer = conv.session(env)
    assert session.env["agi_calleridname"] == "Caf\ufffd \ufffd\ufffd Bob"
    assert "\r" not in session.env["agi_calleridname"]
    assert session.env["agi_callerid"] == "+3335301\x000001"  # raw: numbers.normalise judges it
    assert session.env["agi_callingpres"] == "0"  # the next line is intact
    finish(session, peer)


def test_env_value_with_a_colon_keeps_it(conv: Conversation) -> None:
    env = fastagi_env(ch=Channel(calleridname="Dr: Who", name="PJSIP/sip:trunk-1"))
    session, peer = conv.session(env)
    assert session.env["agi_calleridname"] == "Dr: Who"
    assert session.env["agi_channel"] == "PJSIP/sip:trunk-1"
    finish(session, peer)


def test_env_huge_line_is_cut_and_the_next_line_still_parsed(conv: Conversation) -> None:
    huge = "A" * 100_000
    env = fastagi_env(ch=Channel(calleridname=huge))
    session, peer = conv.session(env)
    name = session.env["agi_calleridname"]
    assert name == "A" * (MAX_LINE_BYTES - len("agi_calleridname: "))
    assert session.env["agi_callingpres"] == "0"
    assert session.env["agi_arg_1"] == "0199000001"
    finish(session, peer)


def test_env_huge_multibyte_line_is_cut_on_bytes_and_decoded(conv: Conversation) -> None:
    env = fastagi_env(ch=Channel(calleridname="\U0001F600" * 30_000))  # 120 KB of 4-byte chars
    session, peer = conv.session(env)
    name = session.env["agi_calleridname"]
    assert len(name.encode("utf-8", errors="replace")) <= MAX_LINE_BYTES
    assert name.startswith("\U0001F600" * 100)
    assert session.env["agi_callingpres"] == "0"
    finish(session, peer)


def test_no_env_at_all_is_dropped_within_the_env_timeout(conv: Conversation) -> None:
    make, peer = conv.open(None)  # connects, sends nothing
    started = time.monotonic()
    with pytest.raises((AGIDeadline, AGIHangup)):
        make()
    elapsed = time.monotonic() - started
    assert elapsed < ENV_TIMEOUT_S + MARGIN_S
    assert elapsed >= ENV_TIMEOUT_S * 0.9  # the env timer, not an instant failure


def test_env_without_end_then_silence_is_dropped_within_the_env_timeout(conv: Conversation) -> None:
    make, peer = conv.open(fastagi_env(end=False))
    started = time.monotonic()
    with pytest.raises(AGIDeadline):
        make()
    assert time.monotonic() - started < ENV_TIMEOUT_S + MARGIN_S


def test_slowloris_env_is_bounded_as_a_whole(conv: Conversation) -> None:
    """One byte every 50 ms never ends a line quickly: the env timer covers the whole block."""
    make, peer = conv.open(fastagi_env(), chunk=1, delay=0.05)
    started = time.monotonic()
    with pytest.raises(AGIDeadline):
        make()
    assert time.monotonic() - started < ENV_TIMEOUT_S + MARGIN_S


def test_env_without_end_then_eof_is_a_hangup(conv: Conversation) -> None:
    make, peer = conv.open(None, start=False)
    peer.send_env(fastagi_env(end=False))
    peer.close()
    started = time.monotonic()
    with pytest.raises(AGIHangup):
        make()
    assert time.monotonic() - started < MARGIN_S


def test_env_endless_is_a_protocol_error(conv: Conversation) -> None:
    many = [f"agi_var_{i}: x\n".encode() for i in range(400)]
    make, peer = conv.open(fastagi_env(extra=many, end=False))
    with pytest.raises(AGIProtocolError):
        make()


def test_env_larger_than_the_cap_is_a_protocol_error(conv: Conversation) -> None:
    big = [f"agi_var_{i}: {'x' * 8000}\n".encode() for i in range(12)]  # ~96 KB in 12 lines
    make, peer = conv.open(fastagi_env(extra=big))
    with pytest.raises(AGIProtocolError):
        make()


def test_hangup_line_mid_command_is_agi_hangup(conv: Conversation) -> None:
    session, peer = conv.session(respond=lambda c, p: HANGUP)
    with pytest.raises(AGIHangup):
        session.execute("ANSWER")
    assert finish(session, peer).lines == ["ANSWER"]


@pytest.mark.parametrize("reply", [DEAD_511, "200 result=-1"])
def test_dead_channel_replies_are_agi_hangup(conv: Conversation, reply: str) -> None:
    session, peer = conv.session(respond=lambda c, p: reply)
    with pytest.raises(AGIHangup):
        session.execute("STREAM FILE", "beep", '""')
    finish(session, peer)


def test_peer_closing_mid_command_is_agi_hangup(conv: Conversation) -> None:
    session, peer = conv.session(respond=lambda c, p: CLOSE)
    started = time.monotonic()
    with pytest.raises(AGIHangup):
        session.execute("ANSWER")
    assert time.monotonic() - started < MARGIN_S
    session.close()


def test_520_usage_is_read_to_its_end_and_the_next_reply_is_right(conv: Conversation) -> None:
    session, peer = conv.session(respond=in_order([USAGE_520, "200 result=1 (second)"]))
    with pytest.raises(AGIProtocolError) as info:
        session.execute("GET DATA")
    assert "Usage: GET DATA" in str(info.value)
    reply = session.execute("GET VARIABLE", "X")
    assert reply["result"] == ("1", "second")
    assert finish(session, peer).lines == ["GET DATA", "GET VARIABLE X"]


def test_510_then_the_next_reply_is_right(conv: Conversation) -> None:
    session, peer = conv.session(respond=in_order([INVALID_510, "200 result=0 endpos=5"]))
    with pytest.raises(AGIProtocolError):
        session.execute("NO SUCH COMMAND")
    assert session.execute("STREAM FILE", "beep", '""')["result"] == ("0", "")
    finish(session, peer)


def test_garbage_reply_is_a_protocol_error(conv: Conversation) -> None:
    session, peer = conv.session(respond=lambda c, p: b"\x00\xffgarbage\n")
    with pytest.raises(AGIProtocolError):
        session.execute("ANSWER")
    finish(session, peer)


def test_slow_peer_past_the_session_deadline_is_agi_deadline(conv: Conversation) -> None:
    session, peer = conv.session(respond=lambda c, p: Slow(3.0), deadline_s=0.5)
    started = time.monotonic()
    with pytest.raises(AGIDeadline):
        session.execute("ANSWER")
    assert time.monotonic() - started < 0.5 + MARGIN_S
    session.close()


def test_silent_peer_is_bounded_by_the_session_deadline(conv: Conversation) -> None:
    session, peer = conv.session(respond=lambda c, p: SILENT, deadline_s=0.3)
    started = time.monotonic()
    with pytest.raises(AGIDeadline):
        session.set_var("SCREEN_ACTION", "allow")
    assert time.monotonic() - started < 0.3 + MARGIN_S
    session.close()


def test_a_slow_but_timely_peer_is_fine(conv: Conversation) -> None:
    session, peer = conv.session(respond=lambda c, p: Slow(0.2, "200 result=1"), deadline_s=5)
    session.set_var("SCREEN_ACTION", "allow")
    assert finish(session, peer).variables == {"SCREEN_ACTION": "allow"}


def test_reply_split_across_packets_and_crlf(conv: Conversation) -> None:
    session, peer = conv.session(respond=lambda c, p: b"200 res")
    sent = threading.Event()

    def complete() -> None:
        while not peer.commands:
            time.sleep(0.01)
        time.sleep(0.05)
        peer.io.write(b"ult=1 (x)\r\n")
        sent.set()

    threading.Thread(target=complete, daemon=True).start()
    assert session.execute("GET VARIABLE", "X")["result"] == ("1", "x")
    assert sent.wait(2)
    finish(session, peer)


@pytest.mark.parametrize("bad", ["a\nEXEC System x", "a\rb", "a\0b"])
def test_send_command_refuses_line_breaks_and_nul(conv: Conversation, bad: str) -> None:
    session, peer = conv.session()
    with pytest.raises(AGIProtocolError):
        session.send_command("SET VARIABLE", "X", bad)
    with pytest.raises(AGIProtocolError):
        session.send_command(f"VERBOSE {bad}")
    session.execute("ANSWER")
    assert finish(session, peer).lines == ["ANSWER"]  # nothing of the refused ones went out
    assert session.commands_sent == 1


@pytest.mark.parametrize("name", ["X Y", "A\nEXEC System(x)", "${EVIL}", "X\"", "1X", "",
                                  "X(a b)", "X)", "SCREEN_ACTION;rm"])
def test_set_var_refuses_a_non_constant_name(conv: Conversation, name: str) -> None:
    session, peer = conv.session()
    with pytest.raises(ValueError):
        session.set_var(name, "v")
    with pytest.raises(ValueError):
        session.get_var(name)
    assert finish(session, peer).commands == []


def test_set_var_accepts_constants_and_functions(conv: Conversation) -> None:
    session, peer = conv.session()
    session.set_var("SCREEN_ACTION", "allow")
    session.set_var("CHANNEL(language)", "fr")
    session.set_var("SCREEN_CHALLENGE_CODE", "")
    assert finish(session, peer).lines == [
        'SET VARIABLE SCREEN_ACTION "allow"',
        'SET VARIABLE CHANNEL(language) "fr"',
        'SET VARIABLE SCREEN_CHALLENGE_CODE ""',
    ]
    assert peer.variables == {"SCREEN_ACTION": "allow", "CHANNEL(language)": "fr",
                              "SCREEN_CHALLENGE_CODE": ""}


def test_hostile_value_is_one_command_with_the_value_intact(conv: Conversation) -> None:
    session, peer = conv.session()
    session.set_var("SCREEN_NUMBER", 'Bob"\nEXEC System "rm -rf /\\')
    assert finish(session, peer).verbs == ["SET VARIABLE"]
    assert peer.variables["SCREEN_NUMBER"] == 'Bob"EXEC System "rm -rf /\\'


def test_pyst2_own_set_variable_goes_through_our_quote(conv: Conversation) -> None:
    """pyst2's helpers quote with self._quote: ours, not pyst2's (which escapes nothing)."""
    session, peer = conv.session()
    session.set_variable("NAME", 'x"\nEXEC System "id')
    assert finish(session, peer).verbs == ["SET VARIABLE"]
    assert peer.commands[0].argv == ["SET", "VARIABLE", "NAME", 'x"EXEC System "id']


def test_pyst2_methods_used_by_our_code(conv: Conversation) -> None:
    replies = in_order([
        "200 result=0",  # ANSWER
        "200 result=0 endpos=8000",  # STREAM FILE, nothing pressed
        "200 result=49 endpos=1200",  # STREAM FILE interrupted by '1'
        "200 result=0",  # SAY DIGITS
        "200 result=50",  # SAY DIGITS interrupted by '2'
        "200 result=123",  # GET DATA
        TIMEOUT,  # GET DATA, silence
        "200 result=12 (timeout)",  # GET DATA, two digits then silence
        "200 result=1 (fr)",  # GET VARIABLE
        "200 result=0",  # GET VARIABLE, unset
    ])
    session, peer = conv.session(respond=replies)
    assert session.execute("ANSWER")["result"] == ("0", "")
    assert session.play("beep", "0123456789") == ""
    assert session.play("callscreen/challenge-intro", "0123456789") == "1"
    assert session.say_code("1a2-3", "0123456789") == ""
    assert session.say_code("123") == "2"
    assert session.read_digits("beep", 6000, 3) == "123"
    assert session.read_digits("beep", 6000, 3) == ""
    assert session.read_digits("beep", 6000, 3) == "12"
    assert session.get_var("CHANNEL(language)") == "fr"
    assert session.get_var("UNSET") == ""
    assert finish(session, peer).lines == [
        "ANSWER",
        'STREAM FILE beep "0123456789"',
        'STREAM FILE callscreen/challenge-intro "0123456789"',
        'SAY DIGITS 123 "0123456789"',
        'SAY DIGITS 123 ""',
        "GET DATA beep 6000 3",
        "GET DATA beep 6000 3",
        "GET DATA beep 6000 3",
        "GET VARIABLE CHANNEL(language)",
        "GET VARIABLE UNSET",
    ]


def test_pyst2_inherited_answer_works(conv: Conversation) -> None:
    session, peer = conv.session(respond=by_verb({"ANSWER": "200 result=0"}))
    assert session.answer() is None  # pyst2's answer() returns nothing; it must not raise
    assert finish(session, peer).lines == ["ANSWER"]


def test_nothing_reaches_stderr(conv: Conversation, capfd: pytest.CaptureFixture[str]) -> None:
    """pyst2 prints every env line, command and result to stderr (Asterisk's console)."""
    capfd.readouterr()
    env = fastagi_env(ch=Channel(calleridname="Bob"))
    session, peer = conv.session(env, respond=in_order(["200 result=0", "200 result=0 endpos=1",
                                                        "200 result=1", TIMEOUT]))
    session.execute("ANSWER")
    session.play("beep")
    session.set_variable("X", "y")
    session.read_digits("beep", 1000, 1)
    finish(session, peer)
    out, err = capfd.readouterr()
    assert err == "" and out == ""


def test_pyst2_itself_would_fail_in_a_thread() -> None:
    """The pitfall the adapter exists for (keeps the next test meaningful)."""
    errors: list[BaseException] = []

    def make() -> None:
        try:
            pyst2.AGI(stdin=io.StringIO("agi_request: x\n\n"), stdout=io.StringIO(),
                      stderr=io.StringIO())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=make)
    t.start()
    t.join(5)
    assert errors and isinstance(errors[0], ValueError)


def test_session_can_be_created_in_a_non_main_thread(conv: Conversation) -> None:
    make, peer = conv.open(fastagi_env())
    got: dict[str, Any] = {}

    def run() -> None:
        try:
            s = make()
            got["route"] = s.env.get("agi_network_script")
            s.set_var("SCREEN_ACTION", "allow")
            s.close()
        except BaseException as exc:  # noqa: BLE001
            got["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(5)
    assert "error" not in got, got.get("error")
    assert got["route"] == "screen"
    assert peer.join(5).variables == {"SCREEN_ACTION": "allow"}


def test_commands_after_close_are_hangups(conv: Conversation) -> None:
    session, peer = conv.session()
    peer.close()
    with pytest.raises(AGIHangup):
        for _ in range(3):  # the first send may still land in the socket buffer
            session.execute("ANSWER")
    session.close()

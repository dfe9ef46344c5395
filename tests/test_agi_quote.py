"""callscreen.agi.quote against Asterisk's own command parser.

fake_asterisk.parse_args is a faithful Python port of ``parse_args()`` in main/res_agi.c of
Asterisk 22 (res/res_agi.c in the source tree; the function is unchanged since 1.4): words split on
space/tab outside double quotes, a backslash escapes the next character, quotes are removed.
fake_asterisk.split_commands reproduces how ``run_agi()`` cuts the byte stream into command lines
(fgets() into a 2048-byte buffer). Whatever a caller puts in a value, the line we send must be ONE
command whose last word is exactly that value, minus control characters, capped in length.
"""

from __future__ import annotations

import unicodedata

import pytest
from fake_asterisk import AGI_BUF_LEN, parse_args, split_commands
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from callscreen.agi import MAX_ARG_CHARS, quote

PREFIX = "SET VARIABLE NAME "
INJECTION = 'Bob"\nEXEC System "rm -rf /'


def expected_value(text: str) -> str:
    """The documented contract: control characters (Unicode category C: CR, LF, NUL, TAB, the
    other Cc, and Cf/Cs/Co/Cn) dropped, then at most MAX_ARG_CHARS characters."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")[:MAX_ARG_CHARS]


def asterisk_reads(line: str) -> list[list[bytes]]:
    """What Asterisk does with the bytes we send for one command: the command lines it reads,
    each split into words."""
    data = (line + "\n").encode("utf-8")
    return [parse_args(cmd) for cmd in split_commands(data)]


# -- the port itself, on cases whose result is known from Asterisk's behaviour --------------

@pytest.mark.parametrize(("line", "words"), [
    (b"SET VARIABLE X 1", [b"SET", b"VARIABLE", b"X", b"1"]),
    (b'SET VARIABLE X "a b"', [b"SET", b"VARIABLE", b"X", b"a b"]),
    (b'SET VARIABLE X ""', [b"SET", b"VARIABLE", b"X", b""]),
    (b'SET VARIABLE X "a \\"b\\" c"', [b"SET", b"VARIABLE", b"X", b'a "b" c']),
    (b'SET VARIABLE X "a\\\\b"', [b"SET", b"VARIABLE", b"X", b"a\\b"]),
    (b"SET  VARIABLE\tX   y", [b"SET", b"VARIABLE", b"X", b"y"]),
    (b"SET VARIABLE X a\\ b", [b"SET", b"VARIABLE", b"X", b"a b"]),
    (b'SET VARIABLE X ab"c d"e', [b"SET", b"VARIABLE", b"X", b"abc de"]),
    (b'SET VARIABLE X "unterminated', [b"SET", b"VARIABLE", b"X", b"unterminated"]),
    (b'SET VARIABLE X "a"EXEC', [b"SET", b"VARIABLE", b"X", b"aEXEC"]),
    (b"SET VARIABLE X a\x00 EXEC", [b"SET", b"VARIABLE", b"X", b"a"]),
    (b"", []),
    (b"   ", []),
])
def test_parse_args_port(line: bytes, words: list[bytes]) -> None:
    assert parse_args(line) == words


def test_parse_args_port_caps_the_word_count() -> None:
    words = parse_args(b" ".join(b"w%d" % i for i in range(200)))
    assert len(words) == 127  # MAX_ARGS - 1: the rest is dropped with a warning
    assert words[-1] == b"w126"


def test_split_commands_cuts_like_fgets() -> None:
    assert split_commands(b"ANSWER\nSET VARIABLE X 1\n") == [b"ANSWER", b"SET VARIABLE X 1"]
    long = b"SET VARIABLE X " + b"a" * 3000 + b"\n"
    assert len(split_commands(long)) == 2  # why every command must stay under 2048 bytes


# -- quote ----------------------------------------------------------------------------------

def check_roundtrip(text: str) -> None:
    line = PREFIX + quote(text)
    raw = line.encode("utf-8")
    assert not any(b in raw for b in (b"\r", b"\n", b"\0"))
    commands = asterisk_reads(line)
    assert len(commands) == 1, f"{len(commands)} commands from one value"
    words = commands[0]
    assert len(words) == 4, words[:6]
    assert words[:3] == [b"SET", b"VARIABLE", b"NAME"]
    assert words[3].decode("utf-8") == expected_value(text)
    assert len(raw) + 1 < AGI_BUF_LEN  # with its newline, read by ONE fgets()


specials = st.sampled_from(['"', "\\", "\n", "\r", "\0", "\t", " ", "\x1b", "\x7f", "\u2028",
                            "\u200d", "\ufeff", "\U0001F600", "\U00010348", "é", "$", "{", "}",
                            "EXEC System ", "\\\"", "\"\\", "\r\n"])
chars = st.one_of(st.characters(), specials.filter(lambda s: len(s) == 1))
texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=chars, max_size=600),
    st.lists(st.one_of(specials, st.characters()), max_size=400).map("".join),
    st.text(min_size=2000, max_size=10_000),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(texts)
@example(INJECTION)
@example("\\" * 10_000)
@example('"' * 10_000)
@example("\U0001F600" * 10_000)
@example("a" * (MAX_ARG_CHARS - 1) + "\\")
@example("a" * (MAX_ARG_CHARS - 1) + '"')
@example("\\" + "\n" * 5 + '"')
@example("")
def test_quote_roundtrips_through_asterisk_parse_args(text: str) -> None:
    check_roundtrip(text)


@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.none()))
def test_quote_non_strings_like_str(value: object) -> None:
    words = asterisk_reads(PREFIX + quote(value))
    assert words == [[b"SET", b"VARIABLE", b"NAME", str(value).encode()]]


def test_injection_caller_name_is_one_command() -> None:
    line = PREFIX + quote(INJECTION)
    commands = asterisk_reads(line)
    assert len(commands) == 1
    assert commands[0] == [b"SET", b"VARIABLE", b"NAME", b'Bob"EXEC System "rm -rf /']
    assert "\n" not in line


def test_pyst2_quote_would_have_been_two_commands() -> None:
    """The reason quote() exists: pyst2's _quote only wraps in quotes."""
    from asterisk import agi as pyst2

    naive = PREFIX + pyst2.AGI._quote(None, INJECTION)
    commands = asterisk_reads(naive)
    assert len(commands) == 2
    assert commands[1][:2] == [b"EXEC", b"System"]


def test_quote_caps_in_characters_not_bytes() -> None:
    text = "\U0001F600" * (MAX_ARG_CHARS + 10)
    words = asterisk_reads(PREFIX + quote(text))[0]
    assert words[3].decode() == "\U0001F600" * MAX_ARG_CHARS


def test_quote_cap_never_splits_an_escape() -> None:
    """Truncation happens before escaping: a cut can never leave a lone backslash before the
    closing quote (which would swallow it and glue the next word on)."""
    for tail in ('"', "\\"):
        text = "x" * (MAX_ARG_CHARS - 1) + tail + "SECRET"
        words = asterisk_reads(PREFIX + quote(text) + " NEXT")[0]
        assert words == [b"SET", b"VARIABLE", b"NAME", ("x" * (MAX_ARG_CHARS - 1) + tail).encode(),
                         b"NEXT"]


def test_quote_custom_cap() -> None:
    assert asterisk_reads(PREFIX + quote("abcdef", max_chars=3))[0][3] == b"abc"

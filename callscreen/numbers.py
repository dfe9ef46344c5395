"""Caller-ID normalisation and number facts (pure: no I/O, no Redis).

Everything a trunk may put in a caller ID ends here: national (``0199000001``), international
(``+33...``, ``0033...``, ``33...``, ``011...``), NANP (``1NXX...``), separators, ``tel:``/``sip:``
URIs, technical prefixes from the config, withheld presentations and garbage. The only thing that
leaves this module to become a Redis key is ``NumberFacts.e164``: ``+`` and at most 15 ASCII digits
rebuilt by phonenumbers, never the raw input.

phonenumbers' geocoder and carrier modules are never imported here: they cost ~0.4 s and ~100 MB.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

# Raw input longer than this is garbage, whatever it contains: no trunk sends it.
MAX_RAW_LENGTH = 128
# E.164 allows 15 digits; a little slack for the prefixes we strip, then we give up.
MAX_DIGITS = 20

# Spellings of "no number" seen from trunks, SIP phones and Asterisk itself (agi_callerid is the
# literal "unknown" when absent).
ANONYMOUS_WORDS = frozenset(
    {
        "",
        "unknown",
        "anonymous",
        "anonymous caller",
        "private",
        "private number",
        "restricted",
        "unavailable",
        "not available",
        "withheld",
        "blocked",
        "no caller id",
        "nocallerid",
        "out of area",
        "p",  # NANP CNAM "P" = private
        "o",  # NANP CNAM "O" = out of area
        "0",
        "00",
    }
)

# Q.931 presentation indicator (bits 6-7 of Asterisk's CALLINGPRES): 01 restricted, 10 unavailable.
_PRES_MASK = 0x60
_PRES_RESTRICTED = 0x20
_PRES_UNAVAILABLE = 0x40
_PRES_WORDS_WITHHELD = ("prohib", "unavailable", "restricted")

_SEPARATORS = re.compile(r"[\s\-./()\[\]]")
_URI_SCHEME = re.compile(r"^(?:sips?|tel):", re.IGNORECASE)

# Leading digits of the national significant number that make two numbers "neighbours" (the
# spoofers' favourite trick): NANP NPA-NXX = 6, France ZABPQ = 5. Others fall back to DEFAULT.
DEFAULT_NEIGHBOUR_DIGITS: Mapping[str, int] = {"US": 6, "CA": 6, "NANP": 6, "FR": 5, "DEFAULT": 5}

_TYPE_NAMES = {
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
    PhoneNumberType.UNKNOWN: "unknown",
}
NUMBER_TYPES = frozenset(_TYPE_NAMES.values())

_E164 = re.compile(r"\A\+[1-9][0-9]{1,14}\Z")


@dataclass(frozen=True, slots=True)
class NumberFacts:
    """What the number itself says, before any Redis lookup."""

    e164: str | None  # the only form allowed into a Redis key; None when there is no number
    anonymous: bool  # withheld, absent or non-numeric
    possible: bool
    valid: bool
    number_type: str  # one of NUMBER_TYPES
    country: str | None  # ISO region (FR, US...) when known
    country_code: int | None
    national: str | None  # national significant number (digits)
    raw_kind: str  # how we read it: anonymous | garbage | too_long | parsed | unparseable

    @property
    def display(self) -> str:
        return self.e164 or "anonymous"


ANONYMOUS = NumberFacts(None, True, False, False, "unknown", None, None, None, "anonymous")


def is_e164(value: str) -> bool:
    return bool(_E164.match(value))


def _ascii_digits(text: str) -> str:
    """Fold full-width and other Unicode decimal digits to ASCII; keep everything else."""
    out = []
    for ch in text:
        if ch.isdecimal() and not ("0" <= ch <= "9"):
            out.append(str(unicodedata.digit(ch)))
        else:
            out.append(ch)
    return "".join(out)


def presentation_withheld(callingpres: str | None) -> bool:
    """True when Asterisk's agi_callingpres / CALLERID(pres) says the number must not be shown."""
    if not callingpres:
        return False
    value = callingpres.strip().lower()
    if value.isascii() and value.isdigit():
        bits = int(value) & _PRES_MASK
        return bits in (_PRES_RESTRICTED, _PRES_UNAVAILABLE)
    return value.startswith(_PRES_WORDS_WITHHELD)


def _strip_uri(text: str) -> str:
    """'<sip:+33199000001@pbx;user=phone>' or 'tel:+1-202-555-0101;ext=1' -> the user part."""
    text = text.strip().strip("<>").strip()
    if _URI_SCHEME.match(text):
        text = text.split(":", 1)[1]
        text = text.split("@", 1)[0]
        text = text.split(";", 1)[0]
    return text


def _dial_string(raw: str, strip_prefixes: Iterable[str]) -> str | None:
    """Reduce raw caller-ID text to '+digits' or 'digits', or None when it is not a number."""
    text = _ascii_digits(_strip_uri(raw))
    text = _SEPARATORS.sub("", text)
    if text.startswith("+"):
        body, plus = text[1:], "+"
    else:
        body, plus = text, ""
    if not body.isdigit() or not body.isascii():
        return None
    for prefix in strip_prefixes:
        if prefix and body.startswith(prefix) and len(body) > len(prefix) + 3:
            body = body[len(prefix) :]
            break
    return plus + body


def _candidates(dial: str, region: str) -> list[tuple[str, str]]:
    """Readings of a dial string to try in order: (text, region hint)."""
    if dial.startswith("+"):
        return [(dial, region)]
    readings: list[tuple[str, str]] = []
    nanp = phonenumbers.country_code_for_region(region) == 1
    if dial.startswith("00") and not nanp:
        readings.append(("+" + dial[2:], region))
    if dial.startswith("011") and nanp:
        readings.append(("+" + dial[3:], region))
    # National reading first (0199000001, 2025550101), then "country code without +" (33199000001,
    # 12025550101) which many SIP trunks send.
    readings.append((dial, region))
    readings.append(("+" + dial, region))
    return readings


def normalise(
    raw: str | None,
    region: str,
    *,
    callingpres: str | None = None,
    strip_prefixes: Iterable[str] = (),
) -> NumberFacts:
    """Normalise one caller ID. Never raises; anything odd becomes anonymous or invalid."""
    read = _read(raw, region, callingpres, strip_prefixes)
    return read if isinstance(read, NumberFacts) else facts_for(*read)


def read_number(
    raw: str, region: str, *, strip_prefixes: Iterable[str] = ()
) -> tuple[phonenumbers.PhoneNumber | None, bool, str]:
    """(parsed number or None, valid, raw kind): the reading normalise() makes, without the facts
    a bulk import does not need (number type, country), which cost as much again."""
    read = _read(raw, region, None, strip_prefixes)
    if isinstance(read, NumberFacts):
        return None, False, read.raw_kind
    parsed, region_code = read
    return parsed, region_code is not None, "parsed"


def _read(
    raw: str | None, region: str, callingpres: str | None, strip_prefixes: Iterable[str]
) -> NumberFacts | tuple[phonenumbers.PhoneNumber, str | None]:
    """The best reading of a caller ID and its region when valid, or the facts of a non-number."""
    if raw is None or presentation_withheld(callingpres):
        return ANONYMOUS
    if len(raw) > MAX_RAW_LENGTH:
        return NumberFacts(None, False, False, False, "unknown", None, None, None, "too_long")
    if raw.strip().strip("<>\"' ").lower() in ANONYMOUS_WORDS:
        return ANONYMOUS
    dial = _dial_string(raw, strip_prefixes)
    if dial is None:
        # Letters where a number should be: a CNAM spelling of "private" we do not know, or junk.
        return NumberFacts(None, True, False, False, "unknown", None, None, None, "garbage")
    if len(dial.lstrip("+")) > MAX_DIGITS:
        return NumberFacts(None, False, False, False, "unknown", None, None, None, "too_long")
    if len(dial.lstrip("+").strip("0")) == 0:
        return ANONYMOUS
    best: phonenumbers.PhoneNumber | None = None
    for text, hint in _candidates(dial, region):
        try:
            parsed = phonenumbers.parse(text, hint)
        except NumberParseException:
            continue
        # is_valid_number() is exactly these two calls; keeping the region saves finding it
        # again (the costly part for a country code shared by many regions, like +1).
        region_code = phonenumbers.region_code_for_number(parsed)
        if region_code is not None and phonenumbers.is_valid_number_for_region(parsed, region_code):
            return parsed, region_code
        if best is None and phonenumbers.is_possible_number(parsed):
            best = parsed
    if best is None:
        return NumberFacts(None, False, False, False, "unknown", None, None, None, "unparseable")
    return best, None


def facts_for(parsed: phonenumbers.PhoneNumber, valid_region: str | None) -> NumberFacts:
    """Facts of a parsed number; valid_region is its region when it is valid, else None."""
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not is_e164(e164):  # belt and braces: nothing but +digits ever becomes a key
        return NumberFacts(None, False, False, False, "unknown", None, None, None, "unparseable")
    valid = valid_region is not None
    region = valid_region
    if region is None:
        region = phonenumbers.region_code_for_country_code(parsed.country_code or 0)
        region = None if region == phonenumbers.UNKNOWN_REGION else region
    return NumberFacts(
        e164=e164,
        anonymous=False,
        possible=valid or phonenumbers.is_possible_number(parsed),
        valid=valid,
        number_type=_TYPE_NAMES.get(phonenumbers.number_type(parsed), "unknown"),
        country=region,
        country_code=parsed.country_code,
        national=phonenumbers.national_significant_number(parsed),
        raw_kind="parsed",
    )


def parse_e164(value: str) -> NumberFacts:
    """Facts for a number we already hold in E.164 (a DID from the config, a Redis member)."""
    return normalise(value, "ZZ") if is_e164(value) else ANONYMOUS


def neighbour_digits(
    country: str | None, country_code: int | None, overrides: Mapping[str, int]
) -> int:
    table = {**DEFAULT_NEIGHBOUR_DIGITS, **overrides}
    if country and country in table:
        return table[country]
    if country_code == 1:
        return table["NANP"]
    return table["DEFAULT"]


def is_neighbour(caller: NumberFacts, line: NumberFacts, overrides: Mapping[str, int]) -> bool:
    """Caller shares the leading national digits of our line (but is not the line itself)."""
    if caller.e164 is None or line.e164 is None or caller.e164 == line.e164:
        return False
    if caller.country_code != line.country_code or not caller.national or not line.national:
        return False
    digits = neighbour_digits(line.country, line.country_code, overrides)
    return caller.national[:digits] == line.national[:digits]


def prefixes_of(e164: str) -> list[str]:
    """'+33162123456' -> ['+3', '+33', '+331', ...] (every prefix a list entry could name)."""
    return [e164[:i] for i in range(2, len(e164))]

"""numbers: caller-ID normalisation and number facts (pure, no Redis).

Table tests for every notation a trunk may send, then Hypothesis properties: nothing raises,
only '+digits' ever comes out, one number in any notation gives one E.164, and no raw input can
shape a Redis key.
"""

from __future__ import annotations

import re

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callscreen import numbers
from callscreen.config import Reputation
from callscreen.numbers import is_neighbour, normalise, prefixes_of, presentation_withheld
from callscreen.store import BadKey, Store

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")


# -- table: notations ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        # France, national and international spellings
        ("0199000001", "FR", "+33199000001"),
        ("+33199000001", "FR", "+33199000001"),
        ("0033199000001", "FR", "+33199000001"),
        ("33199000001", "FR", "+33199000001"),
        ("01 99 00 00 01", "FR", "+33199000001"),
        ("01.99.00.00.01", "FR", "+33199000001"),
        ("01-99-00-00-01", "FR", "+33199000001"),
        ("(01) 99 00 00 01", "FR", "+33199000001"),
        ("+33 (0)1 99 00 00 01", "FR", "+33199000001"),
        ("  0261910001  ", "FR", "+33261910001"),
        ("tel:+33353010203", "FR", "+33353010203"),
        ("tel:+33-4-65-71-00-01;phone-context=example.net", "FR", "+33465710001"),
        ("sip:+33536490001@trunk.example.net;user=phone", "FR", "+33536490001"),
        ("<sip:0353010203@192.0.2.1:5060;user=phone>", "FR", "+33353010203"),
        ("SIP:0353010203@example.net", "FR", "+33353010203"),
        ("sips:+33353010203@example.net", "FR", "+33353010203"),
        ("０１９９０００００１", "FR", "+33199000001"),  # full-width digits
        ("٠١٩٩٠٠٠٠٠١", "FR", "+33199000001"),  # Arabic-Indic digits
        # United Kingdom, from France and at home
        ("+44 20 7946 0123", "FR", "+442079460123"),
        ("0044 20 7946 0123", "FR", "+442079460123"),
        ("020 7946 0123", "GB", "+442079460123"),
        # NANP: national, 1NXX, +1, 011 international from the US
        ("2025550101", "US", "+12025550101"),
        ("(202) 555-0101", "US", "+12025550101"),
        ("202.555.0101", "US", "+12025550101"),
        ("12025550101", "US", "+12025550101"),
        ("1-202-555-0101", "US", "+12025550101"),
        ("+1 202 555 0101", "US", "+12025550101"),
        ("12025550101", "FR", "+12025550101"),
        ("+1 202 555 0101", "FR", "+12025550101"),
        ("011 33 1 99 00 00 01", "US", "+33199000001"),
        ("011442079460123", "US", "+442079460123"),
        ("2025550101", "CA", "+12025550101"),
    ],
)
def test_normalise_notations(raw: str, region: str, e164: str) -> None:
    facts = normalise(raw, region)
    assert facts.e164 == e164
    assert facts.raw_kind == "parsed"
    assert not facts.anonymous


def test_normalise_facts_of_a_valid_french_fixed_line() -> None:
    facts = normalise("01 99 00 00 01", "FR")
    assert (facts.valid, facts.possible, facts.number_type, facts.country, facts.country_code,
            facts.national) == (True, True, "fixed_line", "FR", 33, "199000001")
    assert facts.display == "+33199000001"


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("06 39 98 00 01", "FR", "+33639980001"),
        ("+44 7700 900123", "FR", "+447700900123"),
        ("07700 900456", "GB", "+447700900456"),
    ],
)
def test_invalid_on_purpose_numbers_are_parsed_but_not_valid(raw: str, region: str,
                                                             e164: str) -> None:
    facts = normalise(raw, region)
    assert facts.e164 == e164
    assert facts.possible and not facts.valid
    assert not facts.anonymous


@pytest.mark.parametrize("raw", ["0162123456", "+33163000001", "0948123456", "0947712345"])
def test_arcep_ranges_keep_their_prefix(raw: str) -> None:
    facts = normalise(raw, "FR")
    assert facts.e164 is not None and facts.e164.startswith(("+33162", "+33163", "+33948",
                                                              "+339477"))


def test_strip_prefixes_removes_a_technical_prefix_once() -> None:
    assert normalise("90353010203", "FR", strip_prefixes=["9"]).e164 == "+33353010203"
    # not when what is left would be too short to be a number
    assert normalise("9123", "FR", strip_prefixes=["9"]).e164 != "+33123"


# -- table: no number ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw",
    [None, "", "   ", "unknown", "UNKNOWN", "anonymous", "Anonymous", "private", "Private Number",
     "restricted", "unavailable", "withheld", "blocked", "P", "O", "0", "00", "0000",
     '"Anonymous"', "<anonymous>", "sip:anonymous@anonymous.invalid"],
)
def test_anonymous_spellings(raw: str | None) -> None:
    facts = normalise(raw, "FR")
    assert facts.anonymous and facts.e164 is None
    assert facts.display == "anonymous"


@pytest.mark.parametrize("raw", ["Bob's phone", "CALL ME", "12ab34", "+33 1 99 ZZ 00 01", "*60"])
def test_non_numeric_text_is_anonymous_garbage(raw: str) -> None:
    facts = normalise(raw, "FR")
    assert facts.e164 is None and facts.anonymous and facts.raw_kind == "garbage"


@pytest.mark.parametrize("pres", ["32", "33", "35", "67", "64", "prohib", "prohib_passed_screen",
                                  "Prohib_Not_Screened", "unavailable", " 32 "])
def test_withheld_presentation_hides_a_good_number(pres: str) -> None:
    assert presentation_withheld(pres)
    assert normalise("0353010203", "FR", callingpres=pres).anonymous


@pytest.mark.parametrize("pres", [None, "", "0", "1", "3", "96", "allowed",
                                  "allowed_not_screened", "allowed_passed_screen"])
def test_allowed_presentation(pres: str | None) -> None:
    assert not presentation_withheld(pres)
    assert normalise("0353010203", "FR", callingpres=pres).e164 == "+33353010203"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("1" * 21, "too_long"),
        ("+" + "3" * 21, "too_long"),
        ("0033" + "1" * 19, "too_long"),
        ("1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1", "too_long"),
        ("0" * 129, "too_long"),  # longer than any caller ID, whatever it contains
        ("x" * 129, "too_long"),
        ("1" * 20, "unparseable"),
        ("12", "unparseable"),
        ("3535", "unparseable"),
    ],
)
def test_length_caps(raw: str, kind: str) -> None:
    facts = normalise(raw, "FR")
    assert facts.e164 is None
    assert facts.raw_kind == kind


# -- neighbours and prefixes ---------------------------------------------------------------------

FR_LINE = normalise("+33199000001", "FR")
US_LINE = normalise("+12025550100", "US")


@pytest.mark.parametrize(
    ("caller", "line", "overrides", "expected"),
    [
        ("0199000002", FR_LINE, {}, True),  # ZABPQ 19900 shared
        ("0199009999", FR_LINE, {}, True),
        ("0199010001", FR_LINE, {}, False),  # 6th digit differs only: 5 digits compared
        ("0199100001", FR_LINE, {}, False),
        ("0199000001", FR_LINE, {}, False),  # the line itself is not its own neighbour
        ("0261910001", FR_LINE, {}, False),
        ("+12025550142", US_LINE, {}, True),  # NPA-NXX 202-555 shared
        ("+12025560142", US_LINE, {}, False),
        ("+12035550142", US_LINE, {}, False),
        ("+12025550100", US_LINE, {}, False),
        ("+33199000002", US_LINE, {}, False),  # other country code
        ("+12025550142", FR_LINE, {}, False),
        ("0199010001", FR_LINE, {"FR": 4}, True),  # override: 4 digits
        ("0199000002", FR_LINE, {"FR": 9}, False),
        ("+12025560142", US_LINE, {"US": 5}, True),
        ("anonymous", FR_LINE, {}, False),
    ],
)
def test_is_neighbour(caller: str, line: numbers.NumberFacts, overrides: dict[str, int],
                      expected: bool) -> None:
    region = "US" if caller.startswith("+1") else "FR"
    assert is_neighbour(normalise(caller, region), line, overrides) is expected


def test_neighbour_digits_defaults() -> None:
    assert numbers.neighbour_digits("FR", 33, {}) == 5
    assert numbers.neighbour_digits("US", 1, {}) == 6
    assert numbers.neighbour_digits("CA", 1, {}) == 6
    assert numbers.neighbour_digits("JM", 1, {}) == 6  # any NANP country
    assert numbers.neighbour_digits("GB", 44, {}) == 5
    assert numbers.neighbour_digits("GB", 44, {"GB": 6, "DEFAULT": 4}) == 6
    assert numbers.neighbour_digits("DE", 49, {"DEFAULT": 4}) == 4


def test_prefixes_of() -> None:
    assert prefixes_of("+33162123456") == [
        "+3", "+33", "+331", "+3316", "+33162", "+331621", "+3316212", "+33162123",
        "+331621234", "+3316212345",
    ]
    assert prefixes_of("+12") == ["+1"]
    # never the whole number: an exact entry is looked up as itself
    assert "+33162123456" not in prefixes_of("+33162123456")


# -- properties ----------------------------------------------------------------------------------

CALLER_ALPHABET = "0123456789+ -.()<>;:@=tel:sip*#０１２٣\t\n\x00\u202e"
any_text = st.one_of(
    st.text(max_size=10_000),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.text(alphabet=CALLER_ALPHABET, max_size=40),
    st.from_regex(r"\A[+0]?[0-9 .\-]{1,30}\Z"),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=any_text, region=st.sampled_from(["FR", "US", "GB", "DE", "ZZ"]),
       pres=st.one_of(st.none(), st.text(alphabet=st.characters(codec="ascii"), max_size=20)))
def test_any_text_never_raises_and_yields_e164_or_none(raw: str, region: str,
                                                       pres: str | None) -> None:
    facts = normalise(raw, region, callingpres=pres, strip_prefixes=["9"])
    assert facts.e164 is None or E164.fullmatch(facts.e164)
    if facts.e164 is None:
        assert facts.national is None or facts.raw_kind != "parsed"
    assert facts.number_type in numbers.NUMBER_TYPES


@pytest.mark.parametrize("pres", ["²", "³", "①", "3²"])
def test_unicode_digit_presentation_does_not_raise(pres: str) -> None:
    facts = normalise("0353010203", "FR", callingpres=pres)
    assert facts.e164 in (None, "+33353010203")


FR_SERIES = ["19900", "26191", "35301", "46571", "53649"]
SEPARATORS = ["", " ", ".", "-", "  ", " - "]


@st.composite
def fr_fiction_in_any_notation(draw: st.DrawFn) -> tuple[str, str]:
    """A fiction FR number and one rendering of it: (expected E.164, raw caller ID)."""
    national = draw(st.sampled_from(FR_SERIES)) + draw(st.from_regex(r"\A[0-9]{4}\Z"))
    digits = "0" + national  # 10 digits, national notation
    groups = [digits[i:i + 2] for i in range(0, 10, 2)]
    sep = draw(st.sampled_from(SEPARATORS))
    pretty_national = sep.join(groups)
    intl_rest = sep.join([national[0]] + [national[i:i + 2] for i in range(1, 9, 2)])
    notation = draw(st.sampled_from(["national", "plus", "00", "bare33", "tel", "sip", "sipnat",
                                     "fullwidth"]))
    raw = {
        "national": pretty_national,
        "plus": f"+33{sep}{intl_rest}",
        "00": f"0033{sep}{intl_rest}",
        "bare33": f"33{national}",
        "tel": f"tel:+33{national}",
        "sip": f"sip:+33{national}@trunk.example.net;user=phone",
        "sipnat": f"<sip:{digits}@192.0.2.7;user=phone>",
        "fullwidth": "".join(chr(ord("０") + int(c)) for c in digits),
    }[notation]
    return "+33" + national, raw


@settings(max_examples=300, deadline=None)
@given(case=fr_fiction_in_any_notation())
def test_same_fr_number_in_any_notation_gives_same_e164(case: tuple[str, str]) -> None:
    expected, raw = case
    assert normalise(raw, "FR").e164 == expected


@settings(max_examples=200, deadline=None)
@given(npa=st.sampled_from(["202", "212", "312", "415", "617"]),
       last=st.integers(0, 99), notation=st.sampled_from(range(6)))
def test_same_us_number_in_any_notation_gives_same_e164(npa: str, last: int,
                                                        notation: int) -> None:
    line = f"01{last:02d}"
    raw = [f"{npa}555{line}", f"({npa}) 555-{line}", f"1{npa}555{line}", f"+1 {npa} 555 {line}",
           f"1-{npa}-555-{line}", f"tel:+1-{npa}-555-{line}"][notation]
    assert normalise(raw, "US").e164 == f"+1{npa}555{line}"


KEY_STORE = Store(redis.Redis(port=1), "cs:", Reputation())  # builds keys only, never connects


@settings(max_examples=400, deadline=None)
@given(raw=any_text)
def test_no_raw_input_can_shape_a_key(raw: str) -> None:
    """Whatever the caller ID, the only thing reaching a key is '+digits' after the prefix."""
    e164 = normalise(raw, "FR").e164
    if e164 is None:
        return
    keys = {
        "n:": KEY_STORE.k_record(e164),
        "v:": KEY_STORE.k_velocity(e164),
        "l:": KEY_STORE.k_list("block", e164),
        "l:c": KEY_STORE.k_contacts(e164),
        "l:t": KEY_STORE.k_trusted(e164),
        "l:r": KEY_STORE.k_recent(e164),
    }
    shapes = {
        "n:": r"cs:n:(?P<num>.*)", "v:": r"cs:v:(?P<num>.*)",
        "l:": r"cs:l:(?P<num>.*):block", "l:c": r"cs:l:(?P<num>.*):contacts",
        "l:t": r"cs:l:(?P<num>.*):trusted", "l:r": r"cs:l:(?P<num>.*):recent",
    }
    for name, key in keys.items():
        m = re.fullmatch(shapes[name], key)
        assert m is not None, key
        assert re.fullmatch(r"\+[0-9]+", m.group("num")), key
        assert key.isascii() and key.isprintable()
    assert re.fullmatch(r"cs:i:[0-9a-f]{4}", KEY_STORE.k_import(e164))  # import bucket


@pytest.mark.parametrize("bad", ["garbage", "", "0199000001", "+33 199000001", "+0199000001",
                                 "+331990000011234567", "*", "+33162*", "+３３199000001",
                                 "+33199000001:r", "\n+33199000001"])
def test_key_builders_refuse_anything_but_e164(bad: str) -> None:
    with pytest.raises(BadKey):
        KEY_STORE.k_record(bad)
    with pytest.raises(BadKey):
        KEY_STORE.k_list("allow", bad)


@pytest.mark.parametrize("bad", ["+33199000001\n"])
def test_key_builders_refuse_a_trailing_newline(bad: str) -> None:
    assert not numbers.is_e164(bad)
    with pytest.raises(BadKey):
        KEY_STORE.k_record(bad)

"""imports: public complaint lists as one more reporter (src:NAME), on the real session Redis.

Header checks write nothing; every reject reason is counted with its line; duplicates within a
file never reach Redis; a second run counts nothing new; imported records expire; one import alone
neither blocks nor sends to voicemail under the shipped rules; a 100k-row FTC file streams through
with exact counts. Fiction numbers only: US NPA-555-01xx.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import socket
import time
from pathlib import Path

import phonenumbers
import pytest
import redis

from callscreen.config import Config
from callscreen.engine import Engine
from callscreen.imports import (
    FTC_COLUMNS,
    ImportError_,
    ImportSummary,
    RejectedRow,
    estimate_rows,
    import_csv,
    import_ftc,
    parse_column,
)
from callscreen.store import Store

SAMPLE = Path(__file__).parent / "samples" / "ftc_sample.csv"
HEADER = ",".join(FTC_COLUMNS)
T0 = 1_780_000_000.0  # a fixed "now" in 2026
US_LINE = "+12025550100"
# Not a neighbour of the US line (202-555-...): neighbour-spoofing would challenge it anyway.
CALLER = "+12125550123"


def ftc_row(number: str, city: str = "Springfield") -> str:
    return f'{number},2024-03-04 00:00:00,2024-03-01 10:51:00,{city},Illinois,217,"Other, misc",Y'


def ftc_file(tmp_path: Path, *numbers: str, header: str = HEADER) -> Path:
    path = tmp_path / "ftc.csv"
    path.write_text("\n".join([header, *(ftc_row(n) for n in numbers)]) + "\n")
    return path


def score(store: Store, e164: str, now: float = T0) -> float:
    return store.facts(e164, None, now).record.score


# -- the hand-written sample -----------------------------------------------------------------------

def test_sample_file_summary(store: Store, cfg: Config, rdb: redis.Redis) -> None:
    summary = import_ftc(SAMPLE, store, cfg, now=T0)
    assert (summary.rows, summary.imported, summary.already, summary.duplicates) == (10, 5, 0, 2)
    assert summary.rejected == {"empty": 1, "unparseable": 1, "invalid": 1}
    assert summary.examples == [
        RejectedRow(6, "empty", ""),
        RejectedRow(7, "unparseable", "UNKNOWN"),
        RejectedRow(8, "invalid", "1235550100"),
    ]
    for e164 in ("+12125550123", "+13125550142", "+14155550177", "+16175550188", "+13055550111"):
        record = store.facts(e164, None, T0).record
        assert (record.score, record.reports, record.reporters) == (25.0, 1, 1)
        assert store.show(e164, None, T0)["reporters"] == ["src:ftc-dnc"]
    text = str(summary)
    assert "10 rows" in text and "src:ftc-dnc" in text
    assert "line 7: unparseable 'UNKNOWN'" in text
    assert summary.rows == (summary.imported + summary.already + summary.duplicates
                            + summary.rejected_total)


def test_reimport_is_idempotent(store: Store, cfg: Config) -> None:
    first = import_ftc(SAMPLE, store, cfg, now=T0)
    before = {n: store.facts(n, None, T0 + 60).record for n in ("+12125550123", "+13055550111")}
    second = import_ftc(SAMPLE, store, cfg, now=T0 + 60)
    assert (second.rows, second.imported, second.already, second.duplicates) == (10, 0, 5, 2)
    assert second.rejected == first.rejected
    after = {n: store.facts(n, None, T0 + 60).record for n in before}
    assert after == before


def test_another_source_is_another_vote(store: Store, cfg: Config) -> None:
    import_ftc(SAMPLE, store, cfg, now=T0)
    again = import_csv(SAMPLE, store, cfg, number_column="Company_Phone_Number", label="other-list",
                       region="US", now=T0)
    assert (again.imported, again.already) == (5, 0)
    record = store.facts("+12125550123", None, T0).record
    assert (record.score, record.reporters) == (50.0, 2)


def test_imported_records_expire(store: Store, cfg: Config, rdb: redis.Redis) -> None:
    import_ftc(SAMPLE, store, cfg, now=T0)
    ttl = cfg.reputation.record_ttl_days * 86400
    assert 0 < rdb.ttl(store.k_import(CALLER)) <= ttl
    assert store.facts(CALLER, None, T0 + ttl - 60).record.reports == 1
    assert store.facts(CALLER, None, T0 + ttl).record.reports == 0  # expired, even if the bucket
    # was renewed by a later import of another number
    assert rdb.exists(store.k_record(CALLER)) == 0  # an import writes no per-number keys


# -- weight: one import alone is only a hint ---------------------------------------------------------

def test_one_import_alone_neither_blocks_nor_voicemails(
    store: Store, cfg: Config, engine: Engine, tmp_path: Path
) -> None:
    now = time.time()
    summary = import_ftc(ftc_file(tmp_path, CALLER[2:]), store, cfg, now=now)
    assert summary.imported == 1 and summary.weight == cfg.reputation.report_weight
    line = engine.resolve_line(US_LINE, strict=True)
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    decision = engine.decide(engine.make_call(CALLER, line, at))
    assert decision.facts is not None and decision.facts.record.reports == 1
    assert decision.verdict.score == pytest.approx(cfg.reputation.report_weight, abs=0.01)
    assert decision.verdict.action not in ("block", "voicemail"), decision.verdict
    assert decision.verdict.reason != "reputation"


@pytest.mark.parametrize("weight", [0.0, -5.0, 150.0, 1000.0, float("nan")])
def test_weights_that_would_decide_alone_are_refused(
    store: Store, cfg: Config, rdb: redis.Redis, weight: float
) -> None:
    with pytest.raises(ImportError_, match="weight"):
        import_ftc(SAMPLE, store, cfg, weight=weight)
    assert rdb.dbsize() == 0


def test_explicit_weight(store: Store, cfg: Config) -> None:
    import_ftc(SAMPLE, store, cfg, now=T0, weight=10.0)
    assert score(store, CALLER) == 10.0


# -- header validation: a file-level error writes nothing ------------------------------------------

def test_missing_columns_are_named(store: Store, cfg: Config, rdb: redis.Redis,
                                   tmp_path: Path) -> None:
    header = "Company_Phone_Number,Created_Date,Consumer_City,Consumer_State,Subject"
    with pytest.raises(ImportError_) as err:
        import_ftc(ftc_file(tmp_path, "2125550123", header=header), store, cfg)
    message = str(err.value)
    assert "missing column(s) Violation_Date, Consumer_Area_Code, Recorded_Message_Or_Robocall" in message
    assert "Created_Date" not in message.split("(header")[0]
    assert rdb.dbsize() == 0


def test_missing_number_column(store: Store, cfg: Config, rdb: redis.Redis, tmp_path: Path) -> None:
    header = HEADER.replace("Company_Phone_Number", "Phone")
    with pytest.raises(ImportError_, match="missing column.s. Company_Phone_Number "):
        import_ftc(ftc_file(tmp_path, "2125550123", header=header), store, cfg)
    assert rdb.dbsize() == 0


@pytest.mark.parametrize("content", ["", "\n\n", '{"key": "n:+12125550123"}\n'])
def test_not_an_ftc_file(store: Store, cfg: Config, rdb: redis.Redis, tmp_path: Path,
                         content: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(content)
    with pytest.raises(ImportError_, match="empty file|missing column"):
        import_ftc(path, store, cfg)
    assert rdb.dbsize() == 0


def test_header_bom_case_order_and_extra_columns(store: Store, cfg: Config, tmp_path: Path) -> None:
    columns = list(reversed(FTC_COLUMNS)) + ["Extra"]
    header = ",".join(c.upper() if i % 2 else c for i, c in enumerate(columns))
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + header + "\n" + "Y,Other,217,IL,Springfield,d,d,2125550123,x\n")
                     .encode())
    summary = import_ftc(path, store, cfg, now=T0)
    assert (summary.rows, summary.imported) == (1, 1)
    assert score(store, CALLER) == 25.0


def test_missing_file(store: Store, cfg: Config, tmp_path: Path) -> None:
    with pytest.raises(ImportError_, match="cannot read"):
        import_ftc(tmp_path / "nope.csv", store, cfg)


# -- one reject reason at a time -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("N/A", "unparseable"),
        ("UNKNOWN", "unparseable"),
        ("0000000000", "unparseable"),
        ("212555012", "impossible"),  # 9 digits
        ("2125550123456789012345", "impossible"),  # far too long
        ("9115550100", "invalid"),  # N11 is no area code
        ("1235550100", "invalid"),
        ("+442079460123", "foreign"),  # UK fiction number: not North American
    ],
)
def test_reject_reasons(store: Store, cfg: Config, rdb: redis.Redis, tmp_path: Path,
                        number: str, reason: str) -> None:
    summary = import_ftc(ftc_file(tmp_path, number), store, cfg, now=T0)
    assert (summary.rows, summary.imported, summary.rejected) == (1, 0, {reason: 1})
    assert summary.examples == [RejectedRow(2, reason, number.strip())]
    assert rdb.dbsize() == 0


def test_bad_utf8(store: Store, cfg: Config, tmp_path: Path) -> None:
    """Undecodable bytes become U+FFFD: garbage in the number is rejected, elsewhere harmless."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + b"\n"
                     + ftc_row("212555\xff0123").encode("latin-1") + b"\n"
                     + ftc_row("3125550142", city="Bogot\xe1").encode("latin-1") + b"\n")
    summary = import_ftc(path, store, cfg, now=T0)
    assert (summary.rows, summary.imported, summary.rejected) == (2, 1, {"bad-encoding": 1})
    assert summary.examples == [RejectedRow(2, "bad-encoding", "212555\ufffd0123")]
    assert score(store, "+13125550142") == 25.0


def test_short_rows_and_line_numbers(store: Store, cfg: Config, tmp_path: Path) -> None:
    """Line numbers are the file's: a quoted field spanning lines and blank lines count."""
    path = tmp_path / "short.csv"
    path.write_text("name;note;phone\n"
                    "a;one;212-555-0123\n"
                    "\n"
                    'b;"two\nlines";212-555-0124\n'
                    "c;no phone\n"
                    "d;x;\n")
    summary = import_csv(path, store, cfg, number_column="phone", label="mylist", region="US",
                         delimiter=";", now=T0)
    assert (summary.rows, summary.imported) == (4, 2)
    assert summary.rejected == {"short-row": 1, "empty": 1}
    assert summary.examples == [RejectedRow(6, "short-row", ""), RejectedRow(7, "empty", "")]


# -- duplicates within a file ----------------------------------------------------------------------

def test_duplicates_in_any_notation(store: Store, cfg: Config, rdb: redis.Redis,
                                    tmp_path: Path) -> None:
    path = ftc_file(tmp_path, "2125550123", "2125550123", "(212) 555-0123", "12125550123",
                    "+1 212 555 0123", "212.555.0123", "3125550142")
    summary = import_ftc(path, store, cfg, now=T0)
    assert (summary.rows, summary.imported, summary.duplicates, summary.rejected) == (7, 2, 5, {})
    record = store.facts(CALLER, None, T0).record
    assert (record.score, record.reports) == (25.0, 1)


# -- any CSV list ----------------------------------------------------------------------------------

def test_generic_csv_semicolon_and_column_index(store: Store, cfg: Config, rdb: redis.Redis,
                                                tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("id;when;number;comment\n"
                    "1;2024-01-01;+1 212 555 0123;robot\n"
                    "2;2024-01-02;+1 312 555 0142;\"quoted; with delimiter\"\n"
                    "3;2024-01-03;01 99 00 00 42;FR fiction number, national notation\n"
                    "4;2024-01-04;+1 212 555 0123;again\n"
                    "5;2024-01-05;hello;nonsense\n")
    summary = import_csv(path, store, cfg, number_column=3, label="neighbours-2024",
                         delimiter=";", now=T0)
    assert (summary.rows, summary.imported, summary.duplicates) == (5, 3, 1)
    assert summary.rejected == {"unparseable": 1}
    assert summary.source == "neighbours-2024"
    # cfg.region is FR: the national French number is read as French.
    assert store.show("+33199000042", None, T0)["reporters"] == ["src:neighbours-2024"]
    assert score(store, "+13125550142") == 25.0


def test_generic_csv_without_header(store: Store, cfg: Config, tmp_path: Path) -> None:
    path = tmp_path / "bare.csv"
    path.write_text("2125550123\n3125550142\n")
    summary = import_csv(path, store, cfg, number_column=1, label="bare", region="US",
                         header=False, now=T0)
    assert (summary.rows, summary.imported) == (2, 2)


def test_generic_csv_strip_prefixes(store: Store, cfg: Config, tmp_path: Path) -> None:
    """A list exported from our own PBX carries the trunk's technical prefixes."""
    from dataclasses import replace
    pbx_cfg = replace(cfg, strip_prefixes=("9999",))
    path = tmp_path / "cdr.csv"
    path.write_text("src\n99990199000042\n")
    summary = import_csv(path, store, pbx_cfg, number_column="SRC", label="cdr", now=T0)
    assert summary.imported == 1 and score(store, "+33199000042") == 25.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"label": "Bad Label"}, "source name"),
        ({"label": "src:x"}, "source name"),
        ({"label": ""}, "source name"),
        ({"label": "x" * 33}, "source name"),
        ({"number_column": "telephone"}, "missing column 'telephone'"),
        ({"number_column": 5}, "no column 5: the header has 2"),
        ({"number_column": 0}, "start at 1"),
        ({"number_column": "phone", "header": False}, "needs a header"),
        ({"region": "XX"}, "region"),
        ({"delimiter": ";;"}, "one character"),
    ],
)
def test_generic_csv_bad_options(store: Store, cfg: Config, rdb: redis.Redis, tmp_path: Path,
                                 options: dict[str, object], message: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text("name,phone\na,2125550123\n")
    kwargs: dict[str, object] = {"number_column": "phone", "label": "good", "region": "US"}
    kwargs.update(options)
    with pytest.raises(ImportError_, match=message):
        import_csv(path, store, cfg, **kwargs)  # type: ignore[arg-type]
    assert rdb.dbsize() == 0


def test_parse_column() -> None:
    assert parse_column("3") == 3
    assert parse_column(" Phone ") == "Phone"
    assert parse_column("٣") == "٣"  # a non-ASCII digit is a name, not an index


# -- streams, progress, failures -------------------------------------------------------------------

def test_binary_and_text_streams(store: Store, cfg: Config) -> None:
    data = HEADER + "\n" + ftc_row("2125550123") + "\n"
    binary = io.BytesIO(data.encode())
    assert import_ftc(binary, store, cfg, now=T0).imported == 1
    assert not binary.closed  # the caller's file stays open
    assert import_ftc(io.StringIO(data), store, cfg, now=T0).already == 1


def test_progress_is_called_with_rows_done(store: Store, cfg: Config, tmp_path: Path) -> None:
    path = ftc_file(tmp_path, *[f"21255501{i % 100:02d}" for i in range(2500)])
    seen: list[int] = []
    summary = import_ftc(path, store, cfg, now=T0, progress=seen.append)
    assert seen == [1000, 2000, 2500]
    assert (summary.rows, summary.imported, summary.duplicates) == (2500, 100, 2400)
    assert estimate_rows(path) == 2500


def test_csv_error_midway_reports_what_was_imported(store: Store, cfg: Config,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "huge-field.csv"
    path.write_text("\n".join([HEADER, ftc_row("2125550123"), ftc_row("3125550142", "x" * 200_000),
                               ftc_row("4155550177")]) + "\n")
    with pytest.raises(ImportError_, match=r"huge-field.csv:3: CSV error") as err:
        import_ftc(path, store, cfg, now=T0)
    assert err.value.summary is not None and err.value.summary.rows == 1


def test_redis_down_says_how_far_it_got(cfg: Config, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Store(redis.Redis(port=port, socket_connect_timeout=0.2), "cs:", cfg.reputation)
    with pytest.raises(redis.ConnectionError) as err:
        import_ftc(SAMPLE, dead, cfg, now=T0)
    assert any("re-running is safe" in note for note in err.value.__notes__)


def test_summary_text() -> None:
    summary = ImportSummary(source="ftc-dnc", file="f.csv", rows=12, imported=5, already=2,
                            duplicates=3, rejected={"empty": 1, "invalid": 1}, seconds=2.0,
                            examples=[RejectedRow(4, "empty", "")], weight=25)
    text = str(summary)
    assert text.splitlines()[0] == "import of f.csv as src:ftc-dnc: 12 rows in 2.0 s (6 rows/s)"
    for fragment in ("imported", "already", "duplicates", "rejected", "line 4: empty ''"):
        assert fragment in text


# -- 100k rows -------------------------------------------------------------------------------------

def fiction_npas() -> list[str]:
    """Area codes where NPA-555-01xx is a valid (fiction) NANP number, per phonenumbers."""
    return [str(npa) for npa in range(201, 990)
            if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{npa}5550150"))]


def test_100k_rows(store: Store, cfg: Config, rdb: redis.Redis, tmp_path: Path) -> None:
    rows, garbage_each = 100_000, 10
    npas = fiction_npas()
    assert len(npas) >= 400, "phonenumbers metadata changed: fewer valid NPAs"
    distinct = [f"{npa}55501{line:02d}" for npa in npas[:400] for line in range(100)]
    invalid_npa = next(str(n) for n in range(201, 990) if str(n) not in npas)
    garbage = ([""] * garbage_each + ["N/A"] * garbage_each
               + [f"{invalid_npa}55501{i:02d}" for i in range(garbage_each)]
               + [f"2125550{i}" for i in range(garbage_each)])  # 8 digits
    rng = random.Random(20240304)
    dupes = rows - len(distinct) - len(garbage)

    def notation(n: str) -> str:  # some repeats in other notations (the slow path)
        pick = rng.random()
        return n if pick < 0.9 else f"({n[:3]}) {n[3:6]}-{n[6:]}" if pick < 0.95 else "1" + n

    numbers = distinct + garbage + [notation(rng.choice(distinct)) for _ in range(dupes)]
    rng.shuffle(numbers)
    path = tmp_path / "ftc-100k.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FTC_COLUMNS)
        for n in numbers:
            writer.writerow([n, "2024-03-04 00:00:00", "2024-03-01 10:51:00", "Springfield",
                             "Illinois", "217", "Reducing your debt (credit cards, mortgage)", "Y"])

    started = time.perf_counter()
    summary = import_ftc(path, store, cfg, now=T0)
    elapsed = time.perf_counter() - started
    print(f"\n100k FTC rows: {elapsed:.2f} s, {rows / elapsed:,.0f} rows/s\n{summary}")

    assert summary.rows == rows
    assert (summary.imported, summary.already, summary.duplicates) == (40_000, 0, dupes)
    assert summary.rejected == {"empty": 10, "unparseable": 10, "invalid": 10, "impossible": 10}
    assert len(summary.examples) == 5
    assert store.show("+1" + distinct[-1], None, T0)["reporters"] == ["src:ftc-dnc"]
    assert score(store, "+1" + distinct[12_345]) == 25.0


def test_a_foreign_bucket_value_is_read_defensively(store: Store, rdb: redis.Redis) -> None:
    """Import buckets are data from Redis, maybe written by another PBX: garbage is ignored,
    well-formed entries still count."""
    rdb.hset(store.k_import(CALLER), CALLER[1:],
             f"garbage,@@,x@y@z,bad@notatime@1,ok@{int(T0)}@25,\n@1@1")
    facts = store.facts(CALLER, None, T0)
    assert (facts.record.reports, facts.record.score) == (1, 25.0)
    assert store.show(CALLER, None, T0)["reporters"] == ["src:ok"]


def test_parser_processes_give_the_same_summary(store: Store, cfg: Config, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Several batches of rows parsed in other processes: same counts, same rejects at the same
    lines (in file order) as parsing here, and the processes really ran."""
    from callscreen import imports

    npas = fiction_npas()
    rng = random.Random(7)
    lines = ["date,number"]
    for i in range(3 * imports.PARSE_BATCH + 123):
        if i % 997 == 0:
            lines.append("2024-03-04,N/A")
        elif i % 1499 == 0:
            lines.append("2024-03-04")  # no number column: short-row
        else:
            n = f"{rng.choice(npas)}55501{rng.randrange(100):02d}"
            lines.append(f"2024-03-04,{n if i % 3 else f'({n[:3]}) {n[3:6]}-{n[6:]}'}")
    path = tmp_path / "batches.csv"
    path.write_text("\n".join(lines) + "\n")

    pools: list[int] = []

    class CountingPool(imports.ProcessPoolExecutor):
        def __init__(self, workers: int, **kwargs: object) -> None:
            pools.append(workers)
            super().__init__(workers, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(imports, "ProcessPoolExecutor", CountingPool)
    here = import_csv(path, store, cfg, number_column="number", region="US", now=T0,
                      label="here", workers=1)
    assert pools == []
    there = import_csv(path, store, cfg, number_column="number", region="US", now=T0,
                       label="there", workers=2)
    assert pools == [2]
    assert here.rows == there.rows == len(lines) - 1
    assert (here.imported, here.duplicates, here.rejected) == (
        there.imported, there.duplicates, there.rejected)
    assert here.examples == there.examples
    assert [e.line for e in here.examples] == sorted(e.line for e in here.examples)
    assert set(here.rejected) == {"unparseable", "short-row"}

"""Streaming imports of public complaint data into the reputation store.

An imported list is one more reporter, ``src:<source>``: each number it names gets ONE vote of
``reputation.report_weight`` (by default), expires with ``reputation.record_ttl_days`` like any
record, and re-importing the same list counts nothing new (:meth:`Store.import_reports`). With
the shipped thresholds one import alone moves a number to 25 points: below the challenge (30),
voicemail (60) and block (150) thresholds. It takes other evidence (a report from one of our lines,
a failed challenge, a second source) before an imported number is treated differently. A weight
that would block on its own is refused.

Files are read row by row with the csv module and fed to Redis in pipelined chunks: memory does
not grow with the file, except for the set of distinct numbers already seen in it (to count
duplicates within the file without sending them to Redis). That set holds one int per distinct
number, about 60-100 bytes each (measured ~70 B on CPython 3.11): 10 million distinct numbers
cost under 1 GB, which is fine up to tens of millions.

Every row ends in exactly one bucket: accepted (``imported`` + ``already``), ``duplicates`` or
one ``rejected`` reason; blank lines are not rows. Reasons:

``empty``         the number field is blank
``short-row``     the row has no field at the number column
``bad-encoding``  the number field held bytes that are not UTF-8 (decoded as U+FFFD)
``unparseable``   not a phone number at all (letters, "unknown", only zeros)
``impossible``    digits, but of a length no number has (too short, too long)
``invalid``       possible length, but not in an assigned range
``foreign``       (FTC only) parses, but outside the North American Numbering Plan
"""

from __future__ import annotations

import csv
import io
import logging
import math
import multiprocessing
import os
import re
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any, cast

import phonenumbers
import redis

from callscreen.config import Config
from callscreen.numbers import is_e164, read_number
from callscreen.store import Store

log = logging.getLogger(__name__)

FTC_COLUMNS = (
    "Company_Phone_Number",
    "Created_Date",
    "Violation_Date",
    "Consumer_City",
    "Consumer_State",
    "Consumer_Area_Code",
    "Subject",
    "Recorded_Message_Or_Robocall",
)
FTC_NUMBER_COLUMN = "Company_Phone_Number"
FTC_SOURCE = "ftc-dnc"

# What store.check_reporter accepts after "src:".
SOURCE_NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")

PROGRESS_EVERY = 1000  # rows between two progress() calls
CHUNK = 5000  # numbers per store.import_reports call: the counts survive a failure up to here
PIPELINE_BATCH = 1000  # numbers per Redis round trip inside one chunk
PARSE_BATCH = 2000  # rows handed to a parser process at a time
PARSE_AHEAD = 4  # batches in flight at most: memory stays bounded whatever the file's size
MAX_EXAMPLES = 5
_EXAMPLE_CHARS = 40

Source = str | os.PathLike[str] | IO[Any]
Progress = Callable[[int], None]


class ImportError_(Exception):  # trailing _: ImportError is a builtin
    """The file cannot be imported as asked (wrong format, missing column, bad option).

    Raised before anything is written, except for a CSV syntax error in the middle of a file:
    then ``summary`` says what was imported before it (re-running after a fix is safe: imports
    are idempotent)."""

    def __init__(self, message: str, summary: ImportSummary | None = None):
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True, slots=True)
class RejectedRow:
    line: int  # physical line of the file where the row ends (1 = the header)
    reason: str
    value: str  # the number field as read, shortened

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason} {self.value!r}"


@dataclass
class ImportSummary:
    source: str
    file: str = "<stream>"
    rows: int = 0  # data rows read (blank lines excluded)
    imported: int = 0  # new votes counted
    already: int = 0  # numbers this source had already voted for (an earlier run)
    duplicates: int = 0  # repeats of a number earlier in the same file
    rejected: dict[str, int] = field(default_factory=dict)
    examples: list[RejectedRow] = field(default_factory=list)  # the first MAX_EXAMPLES rejects
    seconds: float = 0.0
    weight: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def reject(self, line: int, reason: str, value: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(RejectedRow(line, reason, value[:_EXAMPLE_CHARS]))

    def __str__(self) -> str:
        out = [
            f"import of {self.file} as src:{self.source}: {self.rows} rows in "
            f"{self.seconds:.1f} s ({self.rows_per_second:,.0f} rows/s)",
            f"  imported    {self.imported:>10}  new votes (weight {self.weight:g} each)",
            f"  already     {self.already:>10}  imported by src:{self.source} before (unchanged)",
            f"  duplicates  {self.duplicates:>10}  repeated within this file",
            f"  rejected    {self.rejected_total:>10}",
        ]
        for reason, count in sorted(self.rejected.items(), key=lambda rc: (-rc[1], rc[0])):
            out.append(f"    {reason:<12}{count:>8}")
        if self.examples:
            out.append("  first rejected rows:")
            out.extend(f"    {example}" for example in self.examples)
        return "\n".join(out)


def import_ftc(
    path_or_file: Source,
    store: Store,
    cfg: Config,
    *,
    now: float | None = None,
    source: str = FTC_SOURCE,
    weight: float | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> ImportSummary:
    """Import the FTC Do Not Call "reported calls" CSV (all eight columns of FTC_COLUMNS).

    Numbers are read as US numbers whatever cfg.region says, and only North American numbers are
    kept (a 10-digit string that is not a valid NANP number could otherwise be read as
    "+<country><number>"). cfg.strip_prefixes is not applied: it describes our trunk's caller IDs,
    not the FTC's data."""
    source = _check_source(source)
    weight = _check_weight(cfg, weight)
    with _open(path_or_file) as (stream, name):
        reader = csv.reader(stream)
        header = _read_header(reader, name)
        columns = _column_index(header)
        missing = [c for c in FTC_COLUMNS if c.lower() not in columns]
        if missing:
            raise ImportError_(
                f"{name}: not an FTC Do Not Call complaints file: missing column(s) "
                f"{', '.join(missing)} (header: {_show_header(header)})"
            )
        return _run(reader, columns[FTC_NUMBER_COLUMN.lower()], name, store, source, weight,
                    now, "US", (), 1, progress, workers)


def import_csv(
    path_or_file: Source,
    store: Store,
    cfg: Config,
    *,
    number_column: str | int,
    label: str,
    region: str | None = None,
    delimiter: str = ",",
    header: bool = True,
    strip_prefixes: Sequence[str] | None = None,
    now: float | None = None,
    weight: float | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> ImportSummary:
    """Import any list of numbers, one per row: ``label`` becomes the source (``src:<label>``).

    number_column: a header name (str, case-insensitive) or a 1-based column index (int; use
    :func:`parse_column` for command-line text). header=False: the first row is data (only with
    an index). Numbers are read in ``region`` (default cfg.region) with cfg.strip_prefixes (a list
    exported from our own PBX has the trunk's notation; pass ``strip_prefixes=()`` to disable).

    workers: parser processes (default: one per CPU; 1 parses in this process). Numbers are
    parsed by batches of PARSE_BATCH rows, the first one here, so a small file starts none.
    """
    source = _check_source(label)
    weight = _check_weight(cfg, weight)
    region = (region or cfg.region).upper()
    if phonenumbers.country_code_for_region(region) == 0:
        raise ImportError_(f"region {region!r} is not an ISO country code known to phonenumbers")
    if len(delimiter) != 1:
        raise ImportError_(f"the delimiter must be one character, got {delimiter!r}")
    if isinstance(number_column, bool) or not isinstance(number_column, int | str):
        raise ImportError_(f"number_column must be a header name or an index, "
                           f"got {number_column!r}")
    if isinstance(number_column, int) and number_column < 1:
        raise ImportError_(f"column indexes start at 1, got {number_column}")
    if isinstance(number_column, str) and not header:
        raise ImportError_("a column given by name needs a header row")
    strip = tuple(cfg.strip_prefixes if strip_prefixes is None else strip_prefixes)
    with _open(path_or_file) as (stream, name):
        reader = csv.reader(stream, delimiter=delimiter)
        if isinstance(number_column, int):
            index = number_column - 1
            if header:
                names = _read_header(reader, name)
                if index >= len(names):
                    raise ImportError_(f"{name}: no column {number_column}: the header has "
                                       f"{len(names)} column(s) ({_show_header(names)})")
        else:
            names = _read_header(reader, name)
            columns = _column_index(names)
            if number_column.strip().lower() not in columns:
                raise ImportError_(f"{name}: missing column {number_column!r} "
                                   f"(header: {_show_header(names)})")
            index = columns[number_column.strip().lower()]
        return _run(reader, index, name, store, source, weight, now, region, strip, None,
                    progress, workers)


def parse_column(text: str) -> str | int:
    """Command-line --number-column: digits are a 1-based index, anything else a header name."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else text


def estimate_rows(path: str | os.PathLike[str]) -> int | None:
    """Lines in a regular file minus the header (for a progress bar's length); None otherwise.

    Counts newlines in binary chunks (about 1 GB/s): cheap next to the import itself."""
    try:
        if not os.path.isfile(path):
            return None
        lines = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
        return max(lines - 1, 0)
    except OSError:
        return None


# -- internals -------------------------------------------------------------------------------------

def _check_source(name: str) -> str:
    if not SOURCE_NAME.match(name):
        raise ImportError_(f"source name {name[:40]!r} must match [a-z0-9][a-z0-9_-]{{0,31}} "
                           "(lower-case letters, digits, '-' and '_')")
    return name


def _check_weight(cfg: Config, weight: float | None) -> float:
    """A complaint list adds reputation; alone it must never reach the block threshold."""
    value = cfg.reputation.report_weight if weight is None else float(weight)
    block = cfg.thresholds.block
    if not math.isfinite(value) or value <= 0 or value >= block:
        raise ImportError_(f"import weight must be > 0 and below the block threshold "
                           f"({block:g}): got {value:g}")
    return value


@contextmanager
def _open(path_or_file: Source) -> Iterator[tuple[IO[str], str]]:
    """Text over the file: UTF-8 (BOM allowed), undecodable bytes as U+FFFD, csv newlines."""
    if isinstance(path_or_file, str | os.PathLike):
        name = os.fspath(path_or_file)
        try:
            f = open(path_or_file, encoding="utf-8-sig", errors="replace", newline="")
        except OSError as exc:
            raise ImportError_(f"cannot read {name}: {exc.strerror or exc}") from exc
        with f:
            yield f, name
        return
    name = str(getattr(path_or_file, "name", "<stream>"))
    if isinstance(path_or_file, io.TextIOBase) or isinstance(
        getattr(path_or_file, "encoding", None), str
    ):
        yield cast(IO[str], path_or_file), name
        return
    wrapper = io.TextIOWrapper(path_or_file, encoding="utf-8-sig", errors="replace", newline="")
    try:
        yield wrapper, name
    finally:
        wrapper.detach()  # the caller owns the binary file: do not close it


def _read_header(reader: Iterator[list[str]], name: str) -> list[str]:
    try:
        for row in reader:
            if row:
                return row
    except csv.Error as exc:
        raise ImportError_(f"{name}: not a CSV file: {exc}") from exc
    raise ImportError_(f"{name}: empty file (no header row)")


def _column_index(header: list[str]) -> dict[str, int]:
    """Header name (stripped, case-folded, without a BOM) -> first index with that name."""
    columns: dict[str, int] = {}
    for i, title in enumerate(header):
        columns.setdefault(title.strip().lstrip("\ufeff").strip().lower(), i)
    return columns


def _show_header(header: list[str]) -> str:
    shown = ", ".join(h[:30] for h in header[:10])
    return shown + (", ..." if len(header) > 10 else "") if shown else "empty"


@dataclass
class _Cursor:
    done: bool = False


def _run(
    reader: Any,
    index: int,
    name: str,
    store: Store,
    source: str,
    weight: float,
    now: float | None,
    region: str,
    strip: tuple[str, ...],
    only_country_code: int | None,
    progress: Progress | None,
    workers: int | None,
) -> ImportSummary:
    summary = ImportSummary(source=source, file=name, weight=weight)
    started = time.perf_counter()
    when = time.time() if now is None else now
    cursor = _Cursor()
    parse = _Parse(region, strip, only_country_code)
    jobs = (os.cpu_count() or 1) if workers is None else max(1, workers)
    numbers = _numbers(reader, index, summary, parse, jobs, progress, cursor)
    try:
        while not cursor.done:
            counted, already = store.import_reports(islice(numbers, CHUNK), source, when, weight,
                                                    batch=PIPELINE_BATCH)
            summary.imported += counted
            summary.already += already
    except csv.Error as exc:
        summary.seconds = time.perf_counter() - started
        raise ImportError_(f"{name}:{reader.line_num}: CSV error: {exc}; stopped there "
                           f"(imported {summary.imported} before it)", summary) from exc
    except (redis.RedisError, OSError) as exc:
        exc.add_note(f"import of {name} interrupted after {summary.rows} rows: "
                     f"{summary.imported} new votes were counted (re-running is safe)")
        raise
    finally:
        numbers.close()  # stops the parser processes now, not when the traceback is freed
    summary.seconds = time.perf_counter() - started
    if progress is not None:
        progress(summary.rows)
    log.info("imported %s as src:%s: %d rows, %d new, %d already, %d duplicates, %d rejected",
             name, source, summary.rows, summary.imported, summary.already, summary.duplicates,
             summary.rejected_total)
    return summary


@dataclass(frozen=True, slots=True)
class _Parse:
    """How to read the numbers of one file; runs in parser processes too (picklable)."""
    region: str
    strip: tuple[str, ...]
    only_country_code: int | None

    def __call__(self, raws: list[str | None]) -> list[tuple[str | None, str]]:
        """(E.164, "") or (None, reject reason) per number field; None: the row had no such
        field."""
        return [(None, "short-row") if raw is None
                else _classify(raw, self.region, self.strip, self.only_country_code)
                for raw in raws]


def _numbers(
    reader: Any,
    index: int,
    summary: ImportSummary,
    parse: _Parse,
    workers: int,
    progress: Progress | None,
    cursor: _Cursor,
) -> Generator[str, None, None]:
    """E.164 numbers to vote for, once each; every other row is counted in the summary."""
    seen: set[int] = set()  # E.164 digits as ints: ~30 B less per number than the str
    # Repeats of a plain 10-digit NANP number (the FTC's notation) skip phonenumbers (~45 us a
    # row): its national reading is tried first by read_number(), so if "+1" + raw was seen,
    # that is what it would give again. Only without strip prefixes, which could change the
    # reading. (`seen` lags behind the batches in flight: a repeat it misses is parsed, then
    # counted as a duplicate all the same.)
    nanp_fast = phonenumbers.country_code_for_region(parse.region) == 1 and not parse.strip

    def batches() -> Iterator[tuple[list[int], list[str | None]]]:
        lines: list[int] = []
        raws: list[str | None] = []
        for row in reader:
            if not row:
                continue  # a blank line is not a row
            summary.rows += 1
            if progress is not None and summary.rows % PROGRESS_EVERY == 0:
                progress(summary.rows)
            raw = row[index].strip() if index < len(row) else None
            if (nanp_fast and raw is not None and len(raw) == 10 and raw.isascii()
                    and raw.isdigit() and int("1" + raw) in seen):
                summary.duplicates += 1
                continue
            lines.append(reader.line_num)
            raws.append(raw)
            if len(raws) == PARSE_BATCH:
                yield lines, raws
                lines, raws = [], []
        if raws:
            yield lines, raws

    for lines, raws, results in _parsed(batches(), parse, workers):
        for line, raw, (e164, reason) in zip(lines, raws, results, strict=True):
            if e164 is None:
                summary.reject(line, reason, raw or "")
                continue
            key = int(e164[1:])
            if key in seen:
                summary.duplicates += 1
                continue
            seen.add(key)
            yield e164
    cursor.done = True


def _parsed(
    batches: Iterator[tuple[list[int], list[str | None]]], parse: _Parse, workers: int
) -> Iterator[tuple[list[int], list[str | None], list[tuple[str | None, str]]]]:
    """Each batch with its parse results, in file order. From the second batch on, with
    workers > 1, parsing runs in that many processes (phonenumbers is pure Python: threads would
    share one core) while this one reads the file and writes to Redis."""
    pool: ProcessPoolExecutor | None = None
    pending: deque[tuple[list[int], list[str | None], Future[list[tuple[str | None, str]]]]]
    pending = deque()
    try:
        for number, (lines, raws) in enumerate(batches):
            if number == 1 and workers > 1:
                # fork: the children need nothing but this module, already imported.
                pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            if pool is None:
                yield lines, raws, parse(raws)
                continue
            pending.append((lines, raws, pool.submit(parse, raws)))
            if len(pending) >= PARSE_AHEAD:
                done_lines, done_raws, result = pending.popleft()
                yield done_lines, done_raws, result.result()
        while pending:
            done_lines, done_raws, result = pending.popleft()
            yield done_lines, done_raws, result.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _classify(
    raw: str, region: str, strip: tuple[str, ...], only_country_code: int | None
) -> tuple[str | None, str]:
    """(E.164, "") for a number worth a vote, else (None, reject reason)."""
    if not raw:
        return None, "empty"
    parsed, valid, kind = read_number(raw, region, strip_prefixes=strip)
    if parsed is None:
        if "\ufffd" in raw:
            return None, "bad-encoding"
        # Digits that make no number of any possible length, or no digits at all.
        return None, "impossible" if kind in ("unparseable", "too_long") else "unparseable"
    if not valid:
        return None, "invalid" if phonenumbers.is_possible_number(parsed) else "impossible"
    if only_country_code is not None and parsed.country_code != only_country_code:
        return None, "foreign"
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return (e164, "") if is_e164(e164) else (None, "unparseable")

"""Import rate of an FTC complaints file: `python -m bench.import_rate [--rows 1000000]`.

Writes an FTC Do Not Call "reported calls" CSV (all eight columns) and times
`callscreen import ftc-dnc FILE` (the real CLI, a child process, against a private redis-server)
against the floor: a bare loop in this process that reads the same file with the csv module and
parses + validates every number with phonenumbers, which is what any importer has to do.

Two files, because the importer skips phonenumbers for a number it has already seen in the file:

- ``repeated``: ``--rows`` rows over the 45,100 fiction NANP numbers (NPA-555-01xx of every
  valid area code, ~22 rows each, shuffled), like the FTC's data where a number is reported
  again and again;
- ``distinct``: each of those numbers once (at most ``--rows``), the worst case per row.

Target (issue 5): rows/s >= 80% of the floor's, bounded memory (peak RSS of the import
process is printed). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import phonenumbers
import redis

from bench.common import redis_server, write_config
from callscreen.imports import FTC_COLUMNS


def fiction_nanp() -> list[str]:
    """NPA-555-01xx for every area code where phonenumbers calls it valid (DESIGN.md's US range)."""
    npas = [npa for npa in range(200, 1000)
            if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{npa}5550100"))]
    return [f"{npa}55501{line:02d}" for npa in npas for line in range(100)]


def write_ftc(path: Path, numbers: list[str], rows: int, seed: int = 5) -> int:
    """Writes `rows` rows; returns how many distinct numbers they name."""
    rng = random.Random(seed)
    picks = (numbers * (rows // len(numbers) + 1))[:rows]
    rng.shuffle(picks)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(FTC_COLUMNS)
        for number in picks:
            writer.writerow([number, "2026-11-02 00:00:00", "2026-11-01 10:51:00", "Springfield",
                             "Illinois", number[:3], "Warranties & protection plans", "Y"])
    return len(set(picks))


def stored_numbers(r: redis.Redis) -> int:
    """Numbers in the import buckets: what the import really wrote."""
    return sum(int(r.hlen(key)) for key in r.scan_iter(match="cs:i:*", count=1000))


def floor_rows_per_s(path: Path) -> float:
    started = time.perf_counter()
    rows = 0
    with path.open(newline="") as stream:
        reader = csv.reader(stream)
        next(reader)
        for row in reader:
            number = phonenumbers.parse(row[0], "US")
            phonenumbers.is_valid_number(number)
            rows += 1
    return rows / (time.perf_counter() - started)


def import_once(path: Path, config: Path, rows: int) -> dict[str, float]:
    cli = [sys.executable, "-m", "callscreen", "--config", str(config), "import", "ftc-dnc",
           str(path)]
    started = time.perf_counter()
    proc = subprocess.run(cli, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"import failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"rows_per_s": round(rows / seconds), "seconds": round(seconds, 2)}


def peak_child_rss_mib() -> float:
    # ru_maxrss of the largest child so far (KiB on Linux): run the imports before any other child.
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    numbers = fiction_nanp()
    result: dict[str, object] = {"rows": args.rows, "distinct_numbers": len(numbers)}
    with tempfile.TemporaryDirectory(prefix="cs-bench-import-") as tmp, redis_server() as url:
        workdir = Path(tmp)
        config = write_config(workdir, url)
        files = {"repeated": (workdir / "ftc-repeated.csv", args.rows),
                 "distinct": (workdir / "ftc-distinct.csv", min(args.rows, len(numbers)))}
        r = redis.Redis.from_url(url)
        for name, (path, rows) in files.items():
            distinct = write_ftc(path, numbers, rows)
            floor = floor_rows_per_s(path)
            imported = import_once(path, config, rows)
            result[name] = {
                "rows": rows, "distinct": distinct, "stored": stored_numbers(r),
                "file_mib": round(os.path.getsize(path) / 2**20, 1),
                "floor_rows_per_s": round(floor), **imported,
                "ratio_to_floor": round(imported["rows_per_s"] / floor, 2),
                "peak_rss_mib_so_far": peak_child_rss_mib(),
            }
            # The next file's import must count its numbers again, not find them "already" there.
            r.flushall()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

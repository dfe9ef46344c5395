"""Redis memory per stored number: `python -m bench.store_memory [--count 100000]`.

Starts its own redis-server, writes N numbers through the Store API (the code the product runs)
and prints INFO used_memory delta / N for:

- full reputation records: one call to our line and one report by that line, as it stands right
  after (with the velocity windows) and once the windows have expired (the lasting cost). Records
  are written in chunks whose velocity windows are dropped before the next chunk, as they expire
  in real life while records accumulate: dropping them all at the end would leave Redis's key
  table sized for three times the keys and charge that to the records;
- imported entries: `import_reports` of a complaint list (the compact import buckets);
- list entries: a global blocklist of N numbers.

Targets (issue 5): <= 200 B per full record, <= 100 B per list/imported entry. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from bench.common import bench_numbers, redis_server
from callscreen.config import Reputation
from callscreen.store import Store

LINE = "+33199000001"  # fiction line (DESIGN.md)
WORKERS = 8  # record_call/vote are one round trip each: keep Redis busy from several threads
CHUNK = 10_000  # records written between two expiries of the velocity windows


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def per_number(r: redis.Redis, base: int, count: int) -> float:
    return round((used(r) - base) / count, 1)


def drop(r: redis.Redis, pattern: str) -> None:
    for key in r.scan_iter(match=pattern, count=1000):
        r.unlink(key)


def measure(url: str, count: int) -> dict[str, float | int]:
    r = redis.Redis.from_url(url, decode_responses=True, max_connections=WORKERS * 2)
    store = Store(r, "cs:", Reputation())
    now = time.time()
    numbers = bench_numbers(count)

    r.flushall()
    base = used(r)

    def call_and_report(number: str) -> None:
        store.record_call(number, LINE, now, "allow", "default")
        store.vote(number, LINE, now, rate_limited=False)

    first_hour = 0.0
    with ThreadPoolExecutor(WORKERS) as pool:
        for start in range(0, count, CHUNK):
            chunk = numbers[start:start + CHUNK]
            list(pool.map(call_and_report, chunk, chunksize=500))
            if start == 0:
                first_hour = per_number(r, base, len(chunk))
            drop(r, "cs:v:*")  # velocity windows: gone after velocity_window_minutes
            drop(r, "cs:vl:*")
    lasting = per_number(r, base, count)

    r.flushall()
    base = used(r)
    counted, _ = store.import_reports(numbers, "bench", now, 25.0)
    assert counted == count
    imported = per_number(r, base, count)

    r.flushall()
    base = used(r)
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda n: store.list_add("block", n, None, None, "import"), numbers,
                      chunksize=500))
    lists = per_number(r, base, count)
    return {"count": count,
            "bytes_per_reputation_record": lasting,
            "bytes_per_reputation_record_first_hour": first_hour,
            "bytes_per_imported_entry": imported,
            "bytes_per_list_entry": lists}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    with redis_server() as url:
        result = measure(url, args.count)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

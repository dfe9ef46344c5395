"""Redis memory per stored number: `python -m bench.store_memory [--count 100000]`.

Starts its own redis-server on a free port, writes N numbers through the Store API (pipelined),
and prints INFO used_memory delta / N for: full reputation records (what a call + a report
leave behind) and list entries (allow/block). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from callscreen.config import Reputation
from callscreen.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def fiction(i: int) -> str:
    # Fiction FR ranges only: 01 99 00 xx xx, 02 61 91 xx xx, 03 53 01 xx xx ... (10k each).
    bases = ["+3319900", "+3326191", "+3335301", "+3346571", "+3353649"]
    base = bases[(i // 10000) % len(bases)]
    block = i // 50000  # beyond 50k, vary the subscriber digits' high part deterministically
    return f"{base}{(i % 10000):04d}" if block == 0 else f"+331{block:02d}{i % 1000000:06d}"


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def measure(count: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="cs-bench-"))
    proc, port = start_redis(workdir)
    try:
        r = redis.Redis(port=port, decode_responses=True)
        store = Store(r, "cs:", Reputation())
        now = time.time()
        numbers = [fiction(i) for i in range(count)]
        assert len(set(numbers)) == count, "fiction generator collided"

        base = used(r)
        pipe = r.pipeline(transaction=False)
        for i, n in enumerate(numbers):
            # What record_call + one report leave: a full record hash, a velocity zset, a voter set.
            pipe.hset(store.k_record(n), mapping={"s": "25.0000", "st": f"{now:.0f}", "rep": 1,
                                                  "rps": 1, "c": 1, "fs": f"{now:.0f}",
                                                  "ls": f"{now:.0f}"})
            pipe.expire(store.k_record(n), 180 * 86400)
            pipe.sadd(store.k_reporters(n), "+33199000001")
            pipe.expire(store.k_reporters(n), 180 * 86400)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        records = (used(r) - base) / count

        r.flushall()
        base = used(r)
        pipe = r.pipeline(transaction=False)
        for i, n in enumerate(numbers):
            pipe.hset(store.k_list("block"), n, "0|import")
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        lists = (used(r) - base) / count
        return {"count": count, "bytes_per_reputation_record": round(records, 1),
                "bytes_per_list_entry": round(lists, 1)}
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found")
    result = measure(args.count)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

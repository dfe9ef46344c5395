"""FastAGI decision latency and throughput: `python -m bench.fastagi_load [--numbers 1000000]`.

Starts a redis-server (preloaded with N reputation records) and `callscreen serve` in its own
process, then an asyncio load generator plays Asterisk's side of FastAGI faithfully (the full
Asterisk 22 env block, then "200 result=1" to each command, until the server closes) for the
`screen` route on calls that need no challenge, at several concurrencies, with one server
process and with one per CPU (`serve --workers`). In the same run it
measures the floor: one Redis GET, the store's one-pipeline read, and phonenumbers
parse+validate. Prints a JSON table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import phonenumbers
import redis

from bench.common import (
    bench_numbers,
    free_port,
    percentiles,
    redis_server,
    start_callscreen,
    write_config,
)
from callscreen import config as config_mod
from callscreen.config import Reputation
from callscreen.store import Store

CALLERS = [f"+3335301{i:04d}" for i in range(2000)]  # ordinary fiction numbers: default allow


def env_block(caller: str, port: int) -> bytes:
    """What Asterisk 22 sends for AGI(agi://127.0.0.1:PORT/screen,0199000001)."""
    return (
        "agi_network: yes\n"
        f"agi_network_script: screen\n"
        f"agi_request: agi://127.0.0.1:{port}/screen\n"
        "agi_channel: PJSIP/trunk-0000a1b2\n"
        "agi_language: fr\n"
        "agi_type: PJSIP\n"
        "agi_uniqueid: 1764340000.4242\n"
        "agi_version: 22.10.1\n"
        f"agi_callerid: {caller}\n"
        "agi_calleridname: unknown\n"
        "agi_callingpres: 0\n"
        "agi_callingani2: 0\n"
        "agi_callington: 0\n"
        "agi_callingtns: 0\n"
        "agi_dnid: 0199000001\n"
        "agi_rdnis: unknown\n"
        "agi_context: from-trunk\n"
        "agi_extension: 0199000001\n"
        "agi_priority: 5\n"
        "agi_enhanced: 0.0\n"
        "agi_accountcode: \n"
        "agi_threadid: 140234567890\n"
        "agi_arg_1: 0199000001\n"
        "\n"
    ).encode()


async def one_call(port: int, caller: str) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(env_block(caller, port))
    await writer.drain()
    commands = 0
    while True:
        line = await reader.readline()
        if not line:
            break
        commands += 1
        writer.write(b"200 result=1\n")
        await writer.drain()
    writer.close()
    elapsed = time.perf_counter() - started
    if commands != 1:
        raise RuntimeError(f"expected 1 SET VARIABLE, got {commands}")
    return elapsed


async def load(port: int, concurrency: int, calls: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(calls))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            try:
                latencies.append(await one_call(port, CALLERS[i % len(CALLERS)]))
            except (OSError, RuntimeError) as exc:
                errors += 1
                if errors <= 3:
                    print(f"call failed: {exc!r}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def server_pids(pid: int) -> list[int]:
    """The server process and its workers (serve --workers N forks them)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def proc_cpu(pid: int) -> float:
    total = 0.0
    for one in server_pids(pid):
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def proc_threads_fds(pid: int) -> tuple[int, int]:
    threads = fds = 0
    for one in server_pids(pid):
        threads += next(int(line.split()[1]) for line in Path(f"/proc/{one}/status").read_text()
                        .splitlines() if line.startswith("Threads:"))
        fds += len(os.listdir(f"/proc/{one}/fd"))
    return threads, fds


def preload(url: str, count: int) -> None:
    """A store holding `count` numbers, as an imported complaint list leaves it (the bulk of a
    real store), through the Store API."""
    store = Store(redis.Redis.from_url(url, decode_responses=True), "cs:", Reputation())
    store.import_reports(bench_numbers(count), "bench", time.time(), 25.0)


def floors(url: str, config: Path, rounds: int = 2000) -> dict[str, float]:
    cfg = config_mod.load(config)
    store = Store.from_config(cfg)
    r = store.r
    r.get("warm")

    def median_us(fn: Any) -> float:
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return round(statistics.median(samples) * 1e6, 1)

    return {
        "redis_get_us": median_us(lambda: r.get("cs:nothing")),
        "store_facts_pipeline_us": median_us(
            lambda: store.facts("+33353010001", "+33199000001", time.time())),
        "phonenumbers_parse_validate_us": median_us(
            lambda: phonenumbers.is_valid_number(phonenumbers.parse("0353010001", "FR"))),
    }


def run_server(config: Path, workers: int, levels: list[int], calls: int, floor_s: float,
               leak_calls: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One `callscreen serve --workers N`: the load levels, then the growth check."""
    port = free_port()
    server = start_callscreen(config, port, workers)
    figures: dict[str, Any] = {}
    leak: dict[str, Any] = {}
    try:
        asyncio.run(load(port, 8, 500))  # warm-up
        for level in levels:
            cpu0 = proc_cpu(server.pid)
            latencies, errors, wall = asyncio.run(load(port, level, calls))
            per_call = (proc_cpu(server.pid) - cpu0) / max(1, len(latencies))
            figures[str(level)] = {
                "decisions_per_s": round(len(latencies) / wall, 1), "errors": errors,
                **percentiles(latencies),
                "server_cpu_ms_per_decision": round(per_call * 1000, 3),
                "cpu_vs_floor": round(per_call / floor_s, 1),
            }
        if leak_calls:
            before = proc_threads_fds(server.pid)
            latencies, errors, wall = asyncio.run(load(port, 64, leak_calls))
            time.sleep(1.0)
            after = proc_threads_fds(server.pid)
            leak = {"calls": leak_calls, "errors": errors,
                    "threads_before_after": [before[0], after[0]],
                    "fds_before_after": [before[1], after[1]],
                    "decisions_per_s": round(len(latencies) / wall, 1)}
    finally:
        server.terminate()
        server.wait(10)
    return figures, leak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--numbers", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=4000, help="calls per concurrency level")
    parser.add_argument("--levels", default="1,16,64,256")
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}",
                        help="comma-separated `serve --workers` values, each run in turn (the "
                             "growth check runs on the last)")
    parser.add_argument("--leak-calls", type=int, default=100_000,
                        help="calls before the thread/fd growth check (0 = skip)")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), url)
        started = time.perf_counter()
        preload(url, args.numbers)
        result["preloaded_numbers"] = args.numbers
        result["preload_s"] = round(time.perf_counter() - started, 1)
        result["floor"] = floors(url, config)
        result["fastagi"] = {}
        counts = list(dict.fromkeys(int(x) for x in args.workers.split(",")))
        for workers in counts:
            last = workers == counts[-1]
            result["fastagi"][f"workers={workers}"], leak = run_server(
                config, workers, [int(x) for x in args.levels.split(",")], args.calls,
                result["floor"]["store_facts_pipeline_us"] / 1e6,
                args.leak_calls if last else 0)
            if leak:
                result["leak_check"] = {"workers": workers, **leak}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

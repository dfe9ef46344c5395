"""Shared pieces of the benchmarks: a private redis-server, a config, percentiles."""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free port; yields its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found")
    workdir = Path(tempfile.mkdtemp(prefix="cs-bench-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(250):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def write_config(directory: Path, redis_url: str, did: str = "0199000001") -> Path:
    """Thousands of distinct unknown callers on one line is a callback storm: the benchmarks
    measure plain decisions, so storm detection is set out of reach."""
    path = directory / "callscreen.yaml"
    path.write_text(
        f"redis: {{url: '{redis_url}'}}\nregion: FR\nrules_dir: {REPO / 'rules'}\n"
        f"lines: [{{number: '{did}', name: home}}]\nlogging: {{level: WARNING}}\n"
        "storm: {min_callers: 100000000}\n")
    return path


def bench_numbers(count: int) -> list[str]:
    """Distinct numbers no one can own: country code +999 is unassigned, and DESIGN.md's fiction
    ranges hold too few numbers for a million. Twelve characters, like a French E.164."""
    return [f"+999{i:08d}" for i in range(count)]


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(p99 * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2)}

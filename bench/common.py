"""Shared pieces of the benchmarks: a private redis-server, the server process, a config,
percentiles."""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import sys
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


def start_redis(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:port, answering PING when this returns."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=0.2)
    for _ in range(250):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"redis-server did not start on port {port}")


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free port; yields its URL."""
    workdir = Path(tempfile.mkdtemp(prefix="cs-bench-redis-"))
    port = free_port()
    proc = start_redis(workdir, port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def start_callscreen(config: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    """`callscreen serve` in its own process (as in production), listening when this returns."""
    proc = subprocess.Popen([sys.executable, "-m", "callscreen", "--config", str(config),
                             "serve", "--port", str(port), "--workers", str(workers)],
                            cwd=REPO, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


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

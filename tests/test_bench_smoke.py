"""A few seconds of the benchmarks, so they keep running (figures are printed, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_bench(*args: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_store_memory_bench_reports_bytes_per_number() -> None:
    data = run_bench("bench.store_memory", "--count", "2000")
    assert data["count"] == 2000
    assert float(data["bytes_per_list_entry"]) > 0  # type: ignore[arg-type]
    assert float(data["bytes_per_reputation_record"]) > float(data["bytes_per_list_entry"])  # type: ignore[arg-type]


def test_fastagi_load_bench_runs_without_errors() -> None:
    data = run_bench("bench.fastagi_load", "--numbers", "1000", "--calls", "100",
                     "--levels", "1,8", "--leak-calls", "200", "--workers", "1,2")
    runs = data["fastagi"]
    assert isinstance(runs, dict) and set(runs) == {"workers=1", "workers=2"}
    for levels in runs.values():
        assert set(levels) == {"1", "8"}
        assert all(level["errors"] == 0 and level["decisions_per_s"] > 0
                   for level in levels.values())
    assert data["leak_check"]["errors"] == 0  # type: ignore[index]


def test_import_rate_bench_counts_every_row() -> None:
    data = run_bench("bench.import_rate", "--rows", "2000")
    for kind in ("repeated", "distinct"):
        figures = data[kind]
        assert isinstance(figures, dict)
        assert figures["stored"] == figures["distinct"] > 0  # the import wrote what the file held
        assert float(figures["rows_per_s"]) > 0 and float(figures["floor_rows_per_s"]) > 0


def test_idle_clients_bench_sees_every_client_dropped() -> None:
    data = run_bench("bench.idle_clients", "--clients", "100")
    assert data["dropped"] == 100 and data["not_dropped_within_10s"] == 0
    threads = data["threads_before_after"]
    assert isinstance(threads, list) and threads[0] == threads[1]

"""`python -m bench [all|memory|startup|fastagi|asterisk|import|soak|idle] [--quick]`: run benchmarks,
print each one's JSON and write them all to bench/results/latest.json. Benchmarks assert nothing.

all (default): memory at 100k numbers, process-AGI start-up, FastAGI load with 1M preloaded
numbers, calls through the Asterisk sandbox when it can run, and an FTC import of 1M rows
(--quick: smaller numbers everywhere). Not part of all: soak, a minute of calls through the
Asterisk sandbox while Redis is killed and paused, the server restarted and a broken rules file
reloaded; idle, 10,000 FastAGI clients that never finish their env.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from callscreen.sandbox import asterisk as sb_mod

RESULTS = Path(__file__).resolve().parent / "results"


def run(module: str, *args: str) -> dict[str, object]:
    print(f"== {module} {' '.join(args)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          check=False)
    print(proc.stdout, flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {"error": proc.stderr[-500:]}
    data: dict[str, object] = json.loads(proc.stdout)
    data["bench_seconds"] = round(time.perf_counter() - started, 1)
    return data


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("--")] or ["all"]
    wanted = ({"memory", "startup", "fastagi", "asterisk", "import"} if "all" in names
              else set(names))
    results: dict[str, object] = {"quick": quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if "memory" in wanted:
        results["memory"] = run("bench.store_memory", "--count", "20000" if quick else "100000")
    if "startup" in wanted:
        results["startup"] = run("bench.process_agi_startup", "--runs", "5" if quick else "20")
    if "fastagi" in wanted:
        args = (["--numbers", "20000", "--calls", "300", "--leak-calls", "1000"] if quick
                else ["--numbers", "1000000", "--calls", "4000", "--leak-calls", "100000"])
        results["fastagi"] = run("bench.fastagi_load", *args)
    if "asterisk" in wanted:
        reason = sb_mod.unavailable_reason()
        if reason:
            results["asterisk"] = {"skipped": reason}
            print(f"== asterisk skipped: {reason}")
        else:
            results["asterisk"] = run("bench.asterisk_calls", "--calls", "40" if quick else "200")
    if "import" in wanted:
        results["import"] = run("bench.import_rate", "--rows", "100000" if quick else "1000000")
    if "idle" in wanted:
        results["idle"] = run("bench.idle_clients", "--clients", "1000" if quick else "10000")
    if "soak" in wanted:
        reason = sb_mod.unavailable_reason()
        results["soak"] = ({"skipped": reason} if reason else
                           run("bench.soak", "--phase-seconds", "5" if quick else "10"))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    print(f"written to {RESULTS / 'latest.json'}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

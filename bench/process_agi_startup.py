"""Process-AGI start-up: `python -m bench.process_agi_startup [--runs 20]`.

Runs `agi_scripts/callscreen.agi screen` fed a recorded Asterisk 22 env over stdio (answering
each command like Asterisk does) against the floor `python -c "import asterisk.agi, redis,
phonenumbers, yaml"`, in the same run. Prints medians, the difference, and peak RSS. Asserts
nothing.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, redis_server, write_config

ENV = """agi_request: callscreen.agi
agi_channel: PJSIP/trunk-00000001
agi_language: en
agi_type: PJSIP
agi_uniqueid: 1764340000.1
agi_version: 22.10.1
agi_callerid: 0353010001
agi_calleridname: unknown
agi_callingpres: 0
agi_callingani2: 0
agi_callington: 0
agi_callingtns: 0
agi_dnid: 0199000001
agi_rdnis: unknown
agi_context: from-trunk
agi_extension: 0199000001
agi_priority: 5
agi_enhanced: 0.0
agi_accountcode:
agi_threadid: 140000000000000
agi_arg_1: screen
agi_arg_2: 0199000001

"""


def run_agi(config: Path) -> tuple[float, int]:
    env = dict(os.environ, CALLSCREEN_CONFIG=str(config), PYTHONPATH=str(REPO))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "agi_scripts" / "callscreen.agi"),
                             "screen"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin and proc.stdout
    proc.stdin.write(ENV.encode())
    proc.stdin.flush()
    commands = 0
    for _line in proc.stdout:
        commands += 1
        proc.stdin.write(b"200 result=1\n")
        proc.stdin.flush()
    proc.wait()
    return time.perf_counter() - started, commands


def run_floor() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import asterisk.agi, redis, phonenumbers, yaml"],
                   check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), url)
        # Bytecode as an install leaves it (pip compiles the package; the floor's libraries are
        # compiled too), even where PYTHONDONTWRITEBYTECODE is set.
        compileall.compile_dir(REPO / "callscreen", quiet=1)
        run_agi(config)  # warm the page cache, as on a live PBX
        run_floor()
        agi, floor, commands = [], [], 0
        for _ in range(args.runs):  # interleaved: both see the same machine noise
            seconds, commands = run_agi(config)
            agi.append(seconds)
            floor.append(run_floor())
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "runs": args.runs,
        "agi_screen_median_ms": round(statistics.median(agi) * 1000, 1),
        "floor_imports_median_ms": round(statistics.median(floor) * 1000, 1),
        "overhead_ms": round((statistics.median(agi) - statistics.median(floor)) * 1000, 1),
        "ratio": round(statistics.median(agi) / statistics.median(floor), 2),
        "agi_commands_per_call": commands,
        "peak_rss_mib_children": round(peak_kib / 1024, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

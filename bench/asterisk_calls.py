"""Calls through a real Asterisk 22: `python -m bench.asterisk_calls [--calls 200] [--concurrency 8]`.

In one run, N Local-channel calls from an allowed caller through:
  (a) a bare context (UserEvent + Hangup): Asterisk's own cost;
  (b) a minimal asyncio FastAGI responder that reads the env and sets the five SCREEN_* variables:
      the floor any FastAGI screener pays inside Asterisk;
  (c) Gosub(callscreen,s,1(...)) with the real `callscreen serve` code and a real Redis.
Latency is AMI Originate -> the context's UserEvent. Prints calls/s and p50/p99 per variant and
(c)'s ratios to (b). Needs root and mmdebstrap (the test sandbox). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, free_port, percentiles, redis_server, start_callscreen, wait_port
from callscreen.sandbox import asterisk as sb_mod
from callscreen.sandbox import product

DID = "0199000001"
CALLER = "+33353010001"
DIALPLAN = r"""
[bench-bare]
exten => _X.,1,UserEvent(Done)
 same => n,Hangup()

[bench-floor]
exten => _X.,1,AGI(agi://127.0.0.1:${FLOOR_PORT}/screen,${EXTEN})
 same => n,UserEvent(Done,ACTION: ${SCREEN_ACTION})
 same => n,Hangup()

[bench-callscreen]
exten => _X.,1,Gosub(callscreen,s,1(${EXTEN}))
 same => n,UserEvent(Done,ACTION: ${SCREEN_ACTION})
 same => n,Hangup()
"""


async def floor_handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Minimal FastAGI: read the env block, set the five variables, close (the floor the issue
    defines; callscreen itself answers with one SET VARIABLE that its subroutine splits)."""
    try:
        while (await reader.readline()).strip():
            pass
        for name, value in (("SCREEN_ACTION", "allow"), ("SCREEN_REASON", "default"),
                            ("SCREEN_RULE", "default"), ("SCREEN_SCORE", "0"),
                            ("SCREEN_NUMBER", CALLER)):
            writer.write(f'SET VARIABLE {name} "{value}"\n'.encode())
            await writer.drain()
            await reader.readline()
    except ConnectionError:
        pass  # Asterisk hung up first: nothing to measure here
    finally:
        writer.close()


def floor_server(port: int) -> None:
    async def serve() -> None:
        server = await asyncio.start_server(floor_handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def measure(sb: sb_mod.AsteriskSandbox, context: str, calls: int, concurrency: int
            ) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def worker(count: int) -> None:
        nonlocal errors
        for _ in range(count):
            started = time.perf_counter()
            try:
                sb.call(DID, context, callerid=CALLER).wait_user_event("Done", timeout=10)
            except Exception:  # noqa: BLE001 - counted and reported
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    per = [calls // concurrency + (1 if i < calls % concurrency else 0) for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(n,)) for n in per]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"calls": calls, "errors": errors, "calls_per_s": round(len(latencies) / wall, 1),
            **percentiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="callscreen serve --workers")
    parser.add_argument("--floor-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        floor_server(args.floor_server)
        return
    reason = sb_mod.unavailable_reason()
    if reason:
        raise SystemExit(f"Asterisk sandbox unavailable: {reason}")
    root = sb_mod.ensure_rootfs()
    product.install(root)
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # Servers in their own processes, as in production: the load generator's AMI parsing
        # must not share a GIL with what it measures.
        screener = product.Screener(workdir, root, url, DID)  # writes both configs
        port, floor_port = free_port(), free_port()
        servers = [
            start_callscreen(screener.config, port, args.workers),
            subprocess.Popen([sys.executable, "-m", "bench.asterisk_calls", "--floor-server",
                              str(floor_port)], cwd=REPO),
        ]
        wait_port(floor_port)
        try:
            with sb_mod.AsteriskSandbox(
                root, dialplan_files=[product.DIALPLAN_FILE], dialplan={"bench.conf": DIALPLAN},
                dialplan_globals={"CALLSCREEN_SERVER": f"127.0.0.1:{port}",
                                  "FLOOR_PORT": str(floor_port)},
                agi_scripts=[product.agi_script(workdir)], agi_debug=False, verbose=0,
            ) as sb:
                # Only the events the load generator waits for: parsing the dialplan and AGI
                # event flood in Python would slow the generator more than what it measures.
                assert sb.ami is not None
                sb.ami.action("Events", {"EventMask": "call,user"})
                for context in ("bench-bare", "bench-floor", "bench-callscreen"):
                    measure(sb, context, 20, 2)  # warm-up
                results = {name: measure(sb, f"bench-{name}", args.calls, args.concurrency)
                           for name in ("bare", "floor", "callscreen")}
        finally:
            for proc in servers:
                proc.terminate()
                proc.wait(10)
    b, c = results["floor"], results["callscreen"]
    results["ratios"] = {
        "floor_throughput_vs_bare": round(b["calls_per_s"] / results["bare"]["calls_per_s"], 2),
        "callscreen_throughput_vs_floor": round(c["calls_per_s"] / b["calls_per_s"], 2),
        "callscreen_p50_minus_floor_ms": round(c["p50_ms"] - b["p50_ms"], 2),
        "callscreen_p50_minus_bare_ms": round(c["p50_ms"] - results["bare"]["p50_ms"], 2),
    }
    results["concurrency"] = args.concurrency  # type: ignore[assignment]
    results["workers"] = args.workers  # type: ignore[assignment]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Pre-forked FastAGI workers (`callscreen serve --workers N`).

One server process is bound by the GIL to one core: decisions are CPU-bound Python. With N > 1
the listening socket is opened once, then N forked children accept on it (the kernel hands each
connection to one of them) and each runs the whole thread-per-call server with its own Redis
pool. The parent only supervises: it forwards SIGHUP (every worker reloads; a broken file keeps
the old config in that worker, as with one process), forwards SIGTERM/SIGINT (every worker drains
its calls) and replaces a worker that dies, so a crash never leaves the port without a listener.

What stays per worker: the circuit breaker, the "never the same code twice in a row" memory of
the challenge, counters. Storm end notices are sent once whatever N (the store hands them out
atomically).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from types import FrameType

from callscreen.server import FastAGIServer

log = logging.getLogger(__name__)

RESPAWN_PAUSE_S = 0.5  # a worker that dies at once is not restarted in a tight loop
FORWARDED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def run_workers(server: FastAGIServer, workers: int) -> int:
    """Serve with `workers` forked children of this process; returns when they are all gone
    after SIGTERM/SIGINT. The server must be open() and no thread started yet (fork copies only
    the calling thread)."""
    assert server.listener is not None, "open() the server before forking workers"
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False
    reloads = 0  # SIGHUPs so far: a worker started after one reloads before serving

    def spawn(number: int) -> None:
        # Signals wait until the child has its own handlers (the parent's would forward them).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                server.install_signals()
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                if reloads:
                    server.reload()  # the config in force now, not the one at start
                server.serve_forever()
                code = 0
            except BaseException:  # noqa: BLE001 - whatever happens, never return into the parent's code
                log.exception("worker %d failed", number)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = number  # before unblocking: a pending SIGTERM must reach it too
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        log.info("worker %d started (pid %d)", number, pid)

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping, reloads
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        elif sig == signal.SIGHUP:
            reloads += 1
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)
            except ProcessLookupError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    for number in range(workers):
        spawn(number)

    while children:
        try:
            pid, status = os.wait()  # retried after each signal handler (PEP 475)
        except ChildProcessError:
            break
        if pid not in children:
            continue
        number = children.pop(pid)
        if stopping:
            log.info("worker %d stopped", number)
            continue
        log.error("worker %d (pid %d) died (%s): starting another", number, pid,
                  _describe(status))
        time.sleep(RESPAWN_PAUSE_S)
        if not stopping:
            spawn(number)
    server.listener.close()
    log.info("FastAGI server stopped (%d workers)", workers)
    return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"

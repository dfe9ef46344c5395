"""FastAGI clients that never finish their env: `python -m bench.idle_clients [--clients 10000]`.

Starts a redis-server and `callscreen serve`, then opens connections in waves (below the server's
limit on calls in flight): half send nothing, half send half an env block and stop. Measures how
long the server takes to drop each one (target: within 2 s) and the server's threads and file
descriptors before and after (target: no growth). Prints JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import selectors
import socket
import tempfile
import time
from pathlib import Path

from bench.common import free_port, percentiles, redis_server, start_callscreen, write_config
from bench.fastagi_load import CALLERS, env_block, one_call, proc_threads_fds

WAVE = 400  # below server.MAX_CALLS (512): every connection gets a thread and its env timeout


def wave(port: int, count: int) -> list[float]:
    """Open `count` connections, half silent and half with half an env; seconds until each
    one is closed by the server."""
    half_env = env_block("+33353010001", port)[:200]
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            sock.sendall(half_env)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        opened[sock] = time.perf_counter()
    dropped: list[float] = []
    deadline = time.monotonic() + 10
    while opened and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except ConnectionError:
                data = b""
            if not data:
                dropped.append(time.perf_counter() - opened.pop(sock))
                sel.unregister(sock)
                sock.close()
    for sock in opened:  # never dropped: reported as missing
        sock.close()
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10_000)
    args = parser.parse_args()
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), url)
        port = free_port()
        server = start_callscreen(config, port)
        try:
            asyncio.run(one_call(port, CALLERS[0]))  # a real call: the Redis pool is open
            time.sleep(0.5)
            before = proc_threads_fds(server.pid)
            times: list[float] = []
            for start in range(0, args.clients, WAVE):
                times += wave(port, min(WAVE, args.clients - start))
            time.sleep(1.0)
            after = proc_threads_fds(server.pid)
        finally:
            server.terminate()
            server.wait(10)
    print(json.dumps({"clients": args.clients, "dropped": len(times),
                      "not_dropped_within_10s": args.clients - len(times),
                      "time_to_drop": percentiles(times),
                      "threads_before_after": [before[0], after[0]],
                      "fds_before_after": [before[1], after[1]]}, indent=2))


if __name__ == "__main__":
    main()

"""Writes that could not reach Redis, kept on disk until they can.

One JSON object per line: a write id (random, 128 bits), the Store method and its arguments.
Each line is fsync'd before add() returns. replay() applies the lines in order through
Store.apply_once, which records the write id in Redis in the same transaction as the write, so a
line is applied exactly once even if the replay is interrupted and run again, or two replayers
race. What is applied is removed from the file; what Redis refused again stays for the next try.

One ambiguity remains, on purpose: a write that TIMED OUT (Redis slow or paused rather than
gone) may still be applied by Redis when it wakes up, and is applied again from the spool: a
call counted twice. Not spooling it would lose it when Redis really was gone; marking every
call-path write with an id in Redis to tell the two apart would cost a key per call.

Several processes share one spool (FastAGI workers, process AGIs): appends and replays take an
exclusive lock on a separate lock file, so a replay never rewrites the file under an append.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPOOL_FILE = "writes.jsonl"
REJECTED_FILE = "writes.rejected.jsonl"  # lines Redis refused for good, kept for a human
MAX_SPOOL_BYTES = 64 * 2**20  # past this, new writes are dropped (logged): a disk is not Redis


class RetryLater(Exception):
    """Raised by apply_once when Redis cannot take the write now (down, slow, busy)."""


class Spool:
    def __init__(self, directory: str | os.PathLike[str]):
        self.dir = Path(directory)
        self.path = self.dir / SPOOL_FILE
        self.lock_path = self.dir / (SPOOL_FILE + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o660)
        _group_writable(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def add(self, op: str, args: dict[str, Any]) -> bool:
        """Keep one write; False (logged) when even the disk cannot take it. Never raises."""
        line = json.dumps({"id": secrets.token_hex(16), "op": op, "at": round(time.time(), 3),
                           "args": args}, separators=(",", ":")) + "\n"
        try:
            with self._locked():
                if self.path.exists() and self.path.stat().st_size > MAX_SPOOL_BYTES:
                    log.error("spool %s is full: %s lost", self.path, op)
                    return False
                _append(self.path, line.encode())
        except OSError as exc:
            log.error("cannot spool %s to %s: %s", op, self.path, exc)
            return False
        return True

    def pending(self) -> int:
        try:
            with self.path.open("rb") as fh:
                return sum(1 for _ in fh)
        except FileNotFoundError:
            return 0

    def replay(self, apply_once: Callable[[str, str, dict[str, Any]], bool]
               ) -> tuple[int, int, int]:
        """(applied, already applied before, left for later). Stops at the first write that
        must wait (apply_once raised RetryLater); a write refused for any other reason goes to
        writes.rejected.jsonl and the replay goes on; unreadable lines (a crash mid-write) are
        dropped with a log line."""
        applied = already = 0
        with self._locked():
            try:
                lines = self.path.read_bytes().splitlines()
            except FileNotFoundError:
                return 0, 0, 0
            done = 0
            for raw in lines:
                try:
                    entry = json.loads(raw)
                    write_id, op, args = str(entry["id"]), str(entry["op"]), dict(entry["args"])
                except (ValueError, KeyError, TypeError):
                    log.error("spool: unreadable line dropped: %r", raw[:120])
                    done += 1
                    continue
                try:
                    if apply_once(write_id, op, args):
                        applied += 1
                    else:
                        already += 1
                except RetryLater as exc:
                    log.warning("spool replay stopped (%s): %d write(s) left", exc,
                                len(lines) - done)
                    break
                except Exception as exc:  # noqa: BLE001 - refused for good: set aside, go on
                    log.error("spool: %s %s refused (%s): moved to %s", op, write_id, exc,
                              REJECTED_FILE)
                    _append(self.dir / REJECTED_FILE, raw + b"\n")
                done += 1
            if done:
                self._keep(lines[done:])
        if applied or already:
            log.info("spool: %d write(s) replayed, %d already applied", applied, already)
        return applied, already, len(lines) - done

    def _keep(self, lines: list[bytes]) -> None:
        if not lines:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o660)
        _group_writable(fd)
        try:
            _write_all(fd, b"".join(line + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)  # only once the whole rest is on disk


def _group_writable(fd: int) -> None:
    """The server and the process AGI run as different users of one group: whoever creates a
    spool file makes it group-writable whatever the umask (only the owner may; others skip)."""
    try:
        os.fchmod(fd, 0o660)
    except OSError:
        pass


def _append(path: Path, data: bytes) -> None:
    """One whole line or nothing: a short write is cut back off (it would spoil the next)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o660)
    _group_writable(fd)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a full disk): loop, or raise OSError."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("short write")
        view = view[written:]

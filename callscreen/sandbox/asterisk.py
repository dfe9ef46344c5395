"""A real Asterisk 22 (Debian sid) in a chroot, for integration tests.

Three pieces, usable on their own:

* :func:`ensure_rootfs` builds (once, atomically, under a file lock) a Debian sid chroot with
  Asterisk in it, using mmdebstrap, and reuses it afterwards.
* :class:`AsteriskSandbox` writes a minimal, known configuration into that chroot, starts
  ``asterisk -f`` inside it (in a private mount namespace, so the /proc and /dev bind mounts vanish
  with the process whatever happens), waits until AMI answers, and stops it again.
* :class:`AMI` is a small Asterisk Manager Interface client (actions, Command output, buffered
  events) with helpers to place calls without phones: :meth:`AMI.originate_local` returns a
  :class:`LocalCall` whose caller leg (``;1``) can type DTMF into the callee leg (``;2``).

Needs root, util-linux (unshare, setpriv, mount) and, for the first build only, mmdebstrap.
Stdlib only on purpose: the harness must not depend on the package it tests.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fcntl
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROOTFS_ENV = "CALLSCREEN_ASTERISK_ROOTFS"
REBUILD_ENV = "CALLSCREEN_ASTERISK_REBUILD"
DEFAULT_ROOTFS = Path("/var/cache/callscreen-tests/asterisk-sid")
SUITE = "sid"
BASE_PACKAGES: tuple[str, ...] = (
    "asterisk",
    "asterisk-core-sounds-en-gsm",
    # French prompts: the product targets French lines too, and the package is ~2 MB.
    "asterisk-core-sounds-fr-gsm",
    # The product's process AGI (the fallback when the FastAGI server is down) is Python.
    "python3",
    "python3-venv",
)
MARKER_NAME = ".callscreen-rootfs.json"
ROOTFS_FORMAT = 1
BUILD_TIMEOUT_S = 900.0

# Debian's layout (not upstream's /var/lib/asterisk/agi-bin): see DESIGN.md "Hard facts".
AGI_DIR = "/usr/share/asterisk/agi-bin"
ETC_DIR = "/etc/asterisk"
LOG_DIR = "/var/log/asterisk"
RUN_DIR = "/run/asterisk"
# Owned by the chroot's `asterisk` user, whose uid means someone else on the host: make them
# root's so that Asterisk, running as root without -U, can use them and host tools see sane owners.
_ASTERISK_DIRS = (
    "etc/asterisk",
    "var/lib/asterisk",
    "var/spool/asterisk",
    "var/log/asterisk",
    "var/cache/asterisk",
    "usr/share/asterisk",
    "run/asterisk",
)

# The smallest module set that boots and runs the product's dialplan shape; each is here for a
# reason (everything else, including app_system and func_shell, stays unloaded on purpose).
# Local channels, the manager, Answer/Wait/Set/GotoIf/SayDigits/Hangup are built into the core.
DEFAULT_MODULES: tuple[str, ...] = (
    "pbx_config.so",  # reads extensions.conf at all
    # A timing source: Local channels carry no media clock, so without it file playback and
    # DTMF durations are driven by nothing ("No timing module loaded" warnings).
    "res_timing_timerfd.so",
    "res_speech.so",  # res_agi.so fails to load without it (undefined symbol ast_speech_change)
    "res_agi.so",  # AGI(), FastAGI, the AGIExecStart/End events and `agi set debug`
    "app_stack.so",  # Gosub/Return: the product's entry point is a Gosub subroutine
    "app_userevent.so",  # UserEvent: how test dialplan reports results to the test
    "app_senddtmf.so",  # SendDTMF app and the AMI PlayDTMF action (the test's keypad)
    "app_read.so",  # Read(): DTMF collection in test dialplan
    "app_playback.so",  # Playback(): announcements (block message, etc.)
    "app_exec.so",  # ExecIf/TryExec: common in defensive dialplan
    "app_verbose.so",  # Verbose/Log: dialplan breadcrumbs in the full log
    "func_callerid.so",  # CALLERID(): the screened number and name
    "func_strings.so",  # FILTER, LEN, ...: sanitising values in dialplan
    "func_logic.so",  # IF, ISNULL, EXISTS
    "func_channel.so",  # CHANNEL(): language and state checks
    "func_global.so",  # GLOBAL(): dialplan-wide defaults (e.g. FastAGI address)
    "codec_gsm.so",  # the installed prompts are GSM; Local channels speak slin
    "format_gsm.so",  # ... and reading .gsm files
    "format_wav.so",  # test-provided prompts
    "format_sln.so",  # test-provided prompts, raw
)

# Core modules complain (ERROR lines) without these files; give them something harmless so the
# log only holds real problems.
_QUIET_CONFIGS: dict[str, str] = {
    "cdr.conf": "[general]\nenable = no\n",
    "cel.conf": "[general]\nenable = no\n",
    "features.conf": "",
    "acl.conf": "",
    "udptl.conf": "",
    "ccss.conf": "",
    "stasis.conf": "",
}


class SandboxError(RuntimeError):
    """The sandbox could not be built, started or driven."""


class SandboxUnavailable(SandboxError):
    """This machine cannot run the sandbox at all (not root, tools missing)."""


class AMIError(SandboxError):
    """An AMI action failed, timed out, or the connection dropped."""


# --------------------------------------------------------------------------------------------
# Root filesystem
# --------------------------------------------------------------------------------------------


def default_rootfs_dir() -> Path:
    """Where the chroot lives: $CALLSCREEN_ASTERISK_ROOTFS, else a fixed cache directory."""
    env = os.environ.get(ROOTFS_ENV, "").strip()
    return Path(env).absolute() if env else DEFAULT_ROOTFS


def rootfs_info(root: Path | str) -> dict[str, object] | None:
    """The marker written after a complete build, or None if the rootfs is absent or unfinished."""
    marker = Path(root) / MARKER_NAME
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != ROOTFS_FORMAT:
        return None
    return data


def _marker_packages(info: Mapping[str, object]) -> set[str]:
    packages = info.get("packages")
    return {str(p) for p in packages} if isinstance(packages, list) else set()


def unavailable_reason(cache_dir: Path | str | None = None) -> str | None:
    """Why the sandbox cannot run here (None if it can). Cheap; does not build anything."""
    if not sys.platform.startswith("linux"):
        return "the Asterisk sandbox needs Linux (chroot, mount namespaces)"
    if os.geteuid() != 0:
        return "the Asterisk sandbox needs root (chroot, mount)"
    for tool in ("unshare", "setpriv", "mount", "umount", "chroot"):
        if shutil.which(tool) is None:
            return f"the Asterisk sandbox needs `{tool}` (util-linux/coreutils)"
    root = Path(cache_dir) if cache_dir is not None else default_rootfs_dir()
    if rootfs_info(root) is None and shutil.which("mmdebstrap") is None:
        return (
            f"no Asterisk rootfs at {root} and `mmdebstrap` is missing to build one "
            "(apt-get install mmdebstrap)"
        )
    return None


def _lock_path(root: Path) -> Path:
    return root.parent / f"{root.name}.lock"


class _FileLock:
    """An exclusive fcntl lock on a file, with a bounded wait (fcntl has no timeout of its own)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, timeout: float, what: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise SandboxError(
                        f"timed out after {timeout:.0f}s waiting for {self.path} ({what})"
                    ) from None
                if not announced:
                    log.info("waiting for lock %s (%s), held by another process", self.path, what)
                    announced = True
                time.sleep(0.2)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @contextlib.contextmanager
    def held(self, timeout: float, what: str) -> Iterator[None]:
        self.acquire(timeout, what)
        try:
            yield
        finally:
            self.release()


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path | str) -> list[str]:
    """Mount points strictly below `path` in this mount namespace, deepest first."""
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 4:
                mount_point = _unescape_mountinfo(parts[4])
                if mount_point.startswith(real + "/"):
                    found.append(mount_point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _unmount_all_under(path: Path) -> None:
    """Remove mounts left under `path` by a crashed run or build; raise if any survive."""
    for mount_point in mounts_under(path):
        log.warning("unmounting stale mount %s", mount_point)
        if subprocess.run(["umount", mount_point], check=False).returncode != 0:
            # Busy: detach it lazily so the tree is at least no longer reachable through it.
            subprocess.run(["umount", "-l", mount_point], check=False)
    left = mounts_under(path)
    if left:
        raise SandboxError(f"could not unmount {left}; refusing to touch {path}")


def _safe_rmtree(path: Path) -> None:
    """rm -rf that first makes sure no bind mount (like the host's /dev) is reachable inside."""
    if not path.exists():
        return
    # A killed build can leave dpkg & co. running chrooted in it, and mmdebstrap's mounts.
    _kill_pids(pids_rooted_in(path), f"processes left in {path}")
    _unmount_all_under(path)
    shutil.rmtree(path)


def pids_rooted_in(root: Path | str) -> list[int]:
    """Processes whose root directory is `root` (i.e. running inside the chroot)."""
    real = os.path.realpath(root)
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/root") == real:
                pids.append(int(entry.name))
        except OSError:
            continue  # gone, or a kernel thread
    return pids


def _kill_pids(pids: Iterable[int], why: str, grace: float = 3.0) -> None:
    """SIGTERM then SIGKILL a set of processes we own (listed by pid, never by name)."""
    pids = [p for p in pids if p != os.getpid()]
    if not pids:
        return
    log.warning("killing %s: %s", why, pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie is dead, it only waits for its parent to reap it


def _chown_tree(path: Path) -> None:
    os.lchown(path, 0, 0)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), 0, 0)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def ensure_rootfs(
    cache_dir: Path | str | None = None,
    *,
    extra_packages: Sequence[str] = (),
    rebuild: bool | None = None,
    timeout: float = BUILD_TIMEOUT_S,
) -> Path:
    """Return a ready Debian sid chroot with Asterisk, building it with mmdebstrap if needed.

    The build goes to a temporary sibling directory that is renamed into place only once
    complete (with a marker file), so an interrupted build is never reused. A file lock next to
    the rootfs serialises builders across processes. An existing rootfs is reused when it has
    every requested package; otherwise it is rebuilt with the union of old and new packages.
    Set $CALLSCREEN_ASTERISK_REBUILD=1 (or rebuild=True) to force a fresh build (sid moves).
    """
    root = Path(cache_dir).absolute() if cache_dir is not None else default_rootfs_dir()
    wanted = set(BASE_PACKAGES) | set(extra_packages)
    if rebuild is None:
        rebuild = os.environ.get(REBUILD_ENV, "") in ("1", "true", "yes")

    def usable() -> bool:
        info = rootfs_info(root)
        return info is not None and wanted <= _marker_packages(info)

    if not rebuild and usable():
        return root
    reason = unavailable_reason(root)
    if reason is not None:
        raise SandboxUnavailable(reason)
    if shutil.which("mmdebstrap") is None:
        raise SandboxUnavailable("`mmdebstrap` is missing (apt-get install mmdebstrap)")

    # The lock also guards running sandboxes (see AsteriskSandbox), so a rebuild never swaps the
    # tree under a live Asterisk. Wait long enough for another process's complete build.
    with _FileLock(_lock_path(root)).held(timeout + 120, "Asterisk rootfs build"):
        if not rebuild and usable():
            return root  # another process built it while we waited
        old_info = rootfs_info(root)
        if root.exists() and old_info is None and any(root.iterdir()):
            # Never rm -rf a directory we did not build: the env var may point somewhere wrong.
            raise SandboxError(f"{root} exists, is not empty and has no {MARKER_NAME}; remove it")
        packages = sorted(wanted | (_marker_packages(old_info) if old_info else set()))
        for leftover in root.parent.glob(f".{root.name}.*-*"):
            log.warning("removing leftover of an interrupted build: %s", leftover)
            _safe_rmtree(leftover)
        tmp = root.parent / f".{root.name}.build-{os.getpid()}"
        try:
            _build_rootfs(tmp, packages, timeout)
            if root.exists():
                _kill_pids(pids_rooted_in(root), "stale processes in the old rootfs")
                _unmount_all_under(root)
                old = root.parent / f".{root.name}.old-{os.getpid()}"
                root.rename(old)
                tmp.rename(root)
                _safe_rmtree(old)
            else:
                tmp.rename(root)  # the atomic commit point
        except BaseException:
            _safe_rmtree(tmp)
            raise
    return root


def _build_rootfs(tmp: Path, packages: Sequence[str], timeout: float) -> None:
    tmp.parent.mkdir(parents=True, exist_ok=True)
    build_log = tmp.parent / f"{tmp.name.lstrip('.').split('.build-')[0]}.build.log"
    cmd = [
        # If we die mid-build, so does mmdebstrap (its TERM handler cleans up its mounts)
        # instead of writing on into a directory the next builder is about to delete.
        "setpriv",
        "--pdeathsig",
        "TERM",
        "--",
        "mmdebstrap",
        "--variant=apt",
        # sid's Release files may be "expired" from the point of view of a snapshot/mirror clock.
        '--aptopt=Acquire::Check-Valid-Until "false"',
        # Documentation is dead weight in a test chroot.
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        f"--include={','.join(packages)}",
        SUITE,
        str(tmp),
    ]
    log.info("building Asterisk rootfs in %s (%s); log: %s", tmp, " ".join(packages), build_log)
    started = time.monotonic()
    with open(build_log, "wb") as out:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"mmdebstrap took more than {timeout:.0f}s; see {build_log}") from None
    if proc.returncode != 0:
        raise SandboxError(f"mmdebstrap failed ({proc.returncode}); see {build_log}:\n{_tail(build_log)}")
    (tmp / "run/asterisk").mkdir(parents=True, exist_ok=True)
    for rel in _ASTERISK_DIRS:
        if (tmp / rel).is_dir() and not (tmp / rel).is_symlink():
            _chown_tree(tmp / rel)
    sounds = tmp / "usr/share/asterisk/sounds"
    if (sounds / "fr_CA_f_June").is_dir() and not os.path.lexists(sounds / "fr"):
        # sid's fr package registers no `fr` alternative (unlike en): without this link a
        # channel with CHANNEL(language)=fr would find no prompts.
        (sounds / "fr").symlink_to("fr_CA_f_June")
    # Keep Debian's sample configs for reference; each sandbox writes its own /etc/asterisk.
    (tmp / "etc/asterisk").rename(tmp / "etc/asterisk.dist")
    (tmp / "etc/asterisk").mkdir()
    version = subprocess.run(
        ["chroot", str(tmp), "/usr/sbin/asterisk", "-V"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    seconds = time.monotonic() - started
    info = {
        "format": ROOTFS_FORMAT,
        "suite": SUITE,
        "packages": list(packages),
        "asterisk_version": version,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
    }
    # Written last: a rootfs without this marker is an unfinished build.
    (tmp / MARKER_NAME).write_text(json.dumps(info, indent=2) + "\n")
    log.info("built %s in %.1fs", version, seconds)


# --------------------------------------------------------------------------------------------
# AMI client
# --------------------------------------------------------------------------------------------


class AMIMessage(dict[str, str]):
    """One AMI block. Repeated keys (Output:, ChanVariable:) are joined with newlines in the
    mapping; `fields` keeps every line in order."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        super().__init__()
        self.fields = fields
        for key, value in fields:
            self[key] = f"{self[key]}\n{value}" if key in self else value

    def getall(self, key: str) -> list[str]:
        return [value for k, value in self.fields if k == key]

    @property
    def name(self) -> str:
        return self.get("Event", "") or self.get("Response", "")


EventPredicate = Callable[[AMIMessage], bool]


def event_matcher(event: str, **headers: str) -> EventPredicate:
    """A predicate for wait_event: the event name plus exact header values."""

    def match(msg: AMIMessage) -> bool:
        return msg.get("Event") == event and all(msg.get(k) == v for k, v in headers.items())

    return match


class AMI:
    """A small, thread-backed AMI client.

    A reader thread parses blank-line-terminated blocks: responses go to the action that waits for
    them (matched by ActionID), events to a bounded buffer that :meth:`wait_event` searches and
    consumes (so an event that arrives before the test starts waiting is not missed). Every wait is
    bounded by a timeout.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        timeout: float = 10.0,
        max_events: int = 50_000,
    ) -> None:
        self.timeout = timeout
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._events: collections.deque[AMIMessage] = collections.deque(maxlen=max_events)
        self._responses: dict[str, AMIMessage] = {}
        self._pending: set[str] = set()
        self._names: dict[str, str] = {}  # Uniqueid -> channel name, for DTMF/hangup by id
        self._closed = False
        self._prefix = secrets.token_hex(4)
        self._counter = 0
        self.banner = self._read_banner()
        self._sock.settimeout(None)  # the reader blocks; close() wakes it with shutdown()
        self._reader = threading.Thread(target=self._read_loop, name="ami-reader", daemon=True)
        self._reader.start()
        try:
            self.action("Login", {"Username": username, "Secret": secret, "Events": "on"})
        except BaseException:
            self.close()
            raise

    # -- plumbing --------------------------------------------------------------------------------

    def _read_banner(self) -> str:
        # The banner is one CRLF line, not a block: it has to be read before block parsing.
        data = b""
        while b"\r\n" not in data:
            chunk = self._sock.recv(256)
            if not chunk:
                raise AMIError("AMI closed the connection before its banner")
            data += chunk
        line, rest = data.split(b"\r\n", 1)
        self._initial = rest
        banner = line.decode("utf-8", "replace")
        if not banner.startswith("Asterisk Call Manager"):
            raise AMIError(f"not an AMI server: {banner!r}")
        return banner

    def _read_loop(self) -> None:
        buf = self._initial
        try:
            while True:
                while b"\r\n\r\n" in buf:
                    block, buf = buf.split(b"\r\n\r\n", 1)
                    if block.strip():
                        self._dispatch(self._parse(block))
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            if not self._closed:
                log.debug("AMI reader stopped: %s", exc)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    @staticmethod
    def _parse(block: bytes) -> AMIMessage:
        fields = []
        for raw in block.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = raw.partition(":")
            if sep:
                fields.append((key.strip(), value[1:] if value.startswith(" ") else value))
            elif raw:
                fields.append(("", raw))  # should not happen in AMI 22; kept, not dropped
        return AMIMessage(fields)

    def _dispatch(self, msg: AMIMessage) -> None:
        with self._cond:
            # OriginateResponse's Channel is the dial string on failure, not a channel name.
            if "Uniqueid" in msg and "Channel" in msg and msg.get("Event") != "OriginateResponse":
                self._names[msg["Uniqueid"]] = msg.get("Newname") or msg["Channel"]  # Rename
            if "Event" in msg:
                self._events.append(msg)
            elif msg.get("ActionID") in self._pending:
                self._responses[msg["ActionID"]] = msg
            else:
                log.debug("AMI: unsolicited %r", dict(msg))
            self._cond.notify_all()

    def _next_action_id(self) -> str:
        with self._cond:
            self._counter += 1
            return f"{self._prefix}-{self._counter}"

    @staticmethod
    def _encode(action: str, fields: Mapping[str, str | Sequence[str]]) -> bytes:
        lines = [f"Action: {action}"]
        for key, value in fields.items():
            values = [value] if isinstance(value, str) else list(value)
            for item in values:
                if "\r" in item or "\n" in item:
                    raise ValueError(f"AMI field {key} must be one line: {item!r}")
                lines.append(f"{key}: {item}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    # -- public ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return not self._closed

    def action(
        self,
        action: str,
        fields: Mapping[str, str | Sequence[str]] | None = None,
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> AMIMessage:
        """Send an action and return its Response block. A list value repeats the header
        (e.g. several `Variable:` lines). Raises AMIError on `Response: Error` if check."""
        fields = dict(fields or {})
        action_id = str(fields.pop("ActionID", None) or self._next_action_id())
        payload = self._encode(action, {**fields, "ActionID": action_id})
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            if self._closed:
                raise AMIError(f"AMI connection is closed (action {action})")
            self._pending.add(action_id)
        try:
            with self._send_lock:
                self._sock.sendall(payload)
            with self._cond:
                while action_id not in self._responses:
                    left = deadline - time.monotonic()
                    if self._closed:
                        raise AMIError(f"AMI connection closed while waiting for {action}")
                    if left <= 0:
                        raise AMIError(f"no AMI response to {action} within the timeout")
                    self._cond.wait(left)
                response = self._responses.pop(action_id)
        finally:
            with self._cond:
                self._pending.discard(action_id)
                self._responses.pop(action_id, None)
        if check and response.get("Response") == "Error":
            raise AMIError(f"{action} failed: {response.get('Message', '')}")
        return response

    def command(self, cli: str, *, timeout: float | None = None) -> str:
        """Run a CLI command; Asterisk 22 returns its output as `Output:` lines."""
        response = self.action("Command", {"Command": cli}, timeout=timeout)
        return "\n".join(response.getall("Output"))

    def wait_event(
        self,
        predicate: EventPredicate,
        timeout: float = 10.0,
        *,
        consume: bool = True,
        description: str = "a matching event",
        abort: EventPredicate | None = None,
    ) -> AMIMessage:
        """First buffered or future event matching `predicate`; removed from the buffer if
        consume (so two waits for the same kind of event get two different events).
        An event matching `abort` that comes first ends the wait at once (e.g. the callee hung
        up: what we wait for will never come)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self._events:
                    if predicate(msg):
                        if consume:
                            self._events.remove(msg)
                        return msg
                    if abort is not None and abort(msg):
                        details = {k: msg[k] for k in ("Channel", "Cause", "Cause-txt") if k in msg}
                        raise AMIError(f"AMI: gave up waiting for {description}: {msg.name} {details}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AMIError(f"AMI: no {description} within {timeout}s")
                if self._closed:
                    raise AMIError(f"AMI connection closed while waiting for {description}")
                self._cond.wait(left)

    def events(self) -> list[AMIMessage]:
        """A snapshot of the buffered (unconsumed) events, oldest first."""
        with self._cond:
            return list(self._events)

    def clear_events(self) -> None:
        with self._cond:
            self._events.clear()

    def channel_name(self, uniqueid: str, timeout: float = 5.0) -> str:
        """The current name of the channel with this Uniqueid (learnt from its events)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while uniqueid not in self._names:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise AMIError(f"no channel seen with Uniqueid {uniqueid}")
                self._cond.wait(left)
            return self._names[uniqueid]

    def originate(
        self,
        channel: str,
        *,
        context: str | None = None,
        exten: str | None = None,
        priority: int = 1,
        application: str | None = None,
        data: str | None = None,
        callerid: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout_ms: int = 30_000,
        async_: bool = True,
        channel_id: str | None = None,
        other_channel_id: str | None = None,
    ) -> AMIMessage:
        """AMI Originate. With async_ the Response only says "queued"; the outcome comes later as
        an OriginateResponse event with the same ActionID (see LocalCall.wait_answered)."""
        fields: dict[str, str | Sequence[str]] = {"Channel": channel, "Timeout": str(timeout_ms)}
        if application is not None:
            fields["Application"] = application
            if data is not None:
                fields["Data"] = data
        else:
            if context is None or exten is None:
                raise ValueError("originate needs context+exten or application")
            fields.update(Context=context, Exten=exten, Priority=str(priority))
        if callerid is not None:
            fields["CallerID"] = callerid
        if variables:
            fields["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        if channel_id:
            fields["ChannelId"] = channel_id
        if other_channel_id:
            fields["OtherChannelId"] = other_channel_id
        fields["Async"] = "true" if async_ else "false"
        # A synchronous originate only answers after the far end does: wait for that too.
        wait = None if async_ else timeout_ms / 1000 + self.timeout
        return self.action("Originate", fields, timeout=wait)

    def originate_local(
        self,
        exten: str,
        context: str,
        *,
        callerid: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout_ms: int = 30_000,
        hold_seconds: int = 120,
    ) -> LocalCall:
        """Place a call into `exten@context` as if from a phone.

        Originates `Local/<exten>@<context>/n`: the `;2` leg runs the dialplan under test with
        CallerID and the variables (Local copies both from `;1`); the `;1` leg plays the caller
        and just runs Wait(hold_seconds) once `;2` answers. Type digits with LocalCall.send_dtmf.
        `/n` keeps the Local pair from optimising itself away so `;1` stays addressable.
        """
        base = f"sb{secrets.token_hex(6)}"
        call = LocalCall(self, f"{base}-1", f"{base}-2", action_id=self._next_action_id())
        self.action(
            "Originate",
            self._originate_fields(exten, context, call, callerid, variables, timeout_ms, hold_seconds),
        )
        return call

    def _originate_fields(
        self,
        exten: str,
        context: str,
        call: LocalCall,
        callerid: str | None,
        variables: Mapping[str, str] | None,
        timeout_ms: int,
        hold_seconds: int,
    ) -> dict[str, str | Sequence[str]]:
        fields: dict[str, str | Sequence[str]] = {
            "ActionID": call.action_id,
            "Channel": f"Local/{exten}@{context}/n",
            "Application": "Wait",
            "Data": str(hold_seconds),
            "Timeout": str(timeout_ms),
            "Async": "true",
            "ChannelId": call.caller_uniqueid,
            "OtherChannelId": call.callee_uniqueid,
        }
        if callerid is not None:
            fields["CallerID"] = callerid
        if variables:
            fields["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        return fields

    def play_dtmf(self, channel: str, digits: str, *, duration_ms: int = 120, gap_s: float = 0.08) -> None:
        """Send DTMF out of `channel`, one PlayDTMF per digit (each blocks for its duration)."""
        for digit in digits:
            if digit not in "0123456789*#ABCDabcd":
                raise ValueError(f"not a DTMF digit: {digit!r}")
            self.action("PlayDTMF", {"Channel": channel, "Digit": digit, "Duration": str(duration_ms)})
            time.sleep(gap_s)  # a real keypad leaves gaps; back-to-back digits can merge

    def hangup(self, channel: str) -> None:
        self.action("Hangup", {"Channel": channel})

    def getvar(self, channel: str, variable: str) -> str:
        return self.action("Getvar", {"Channel": channel, "Variable": variable}).get("Value", "")

    def close(self) -> None:
        if self._closed and not self._reader.is_alive():
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(timeout=5)

    def __enter__(self) -> AMI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LocalCall:
    """A call placed with AMI.originate_local; legs are known by the Uniqueids we assigned.

    caller leg = `;1` (the test's phone), callee leg = `;2` (runs the dialplan under test).
    Every channel of the call (both legs, anything they Dial) shares Linkedid == caller_uniqueid.
    """

    ami: AMI
    caller_uniqueid: str
    callee_uniqueid: str
    action_id: str

    def caller_channel(self, timeout: float = 5.0) -> str:
        return self.ami.channel_name(self.caller_uniqueid, timeout)

    def callee_channel(self, timeout: float = 5.0) -> str:
        return self.ami.channel_name(self.callee_uniqueid, timeout)

    def _callee_gone(self, msg: AMIMessage) -> bool:
        return msg.get("Event") == "Hangup" and msg.get("Uniqueid") == self.callee_uniqueid

    def _mine(self, msg: AMIMessage) -> bool:
        return msg.get("Linkedid") == self.caller_uniqueid or msg.get("Uniqueid") in (
            self.caller_uniqueid,
            self.callee_uniqueid,
        )

    def wait_event(self, event: str, timeout: float = 10.0, **headers: str) -> AMIMessage:
        """An event of this call, by name and exact header values."""
        match = event_matcher(event, **headers)
        return self.ami.wait_event(
            lambda m: match(m) and self._mine(m),
            timeout,
            description=f"{event} {headers} on call {self.caller_uniqueid}",
            abort=None if event == "Hangup" else self._callee_gone,
        )

    def wait_user_event(self, name: str, timeout: float = 10.0) -> AMIMessage:
        """A UserEvent(name,...) raised by this call's dialplan; its fields are headers."""
        return self.wait_event("UserEvent", timeout, UserEvent=name)

    def wait_answered(self, timeout: float = 35.0) -> AMIMessage:
        """The OriginateResponse: Response is Success once `;2` answered, Failure otherwise."""
        return self.ami.wait_event(
            event_matcher("OriginateResponse", ActionID=self.action_id),
            timeout,
            description=f"OriginateResponse for call {self.caller_uniqueid}",
        )

    def wait_app(self, app: str, timeout: float = 10.0) -> AMIMessage:
        """The callee leg reached dialplan application `app` (a Newexten event)."""
        return self.ami.wait_event(
            lambda m: (
                m.get("Event") == "Newexten"
                and m.get("Application") == app
                and m.get("Uniqueid") == self.callee_uniqueid
            ),
            timeout,
            description=f"Newexten {app}() on {self.callee_uniqueid}",
            abort=self._callee_gone,
        )

    def wait_agi(self, command_prefix: str, timeout: float = 10.0) -> AMIMessage:
        """The callee leg's AGI started a command (AGIExecStart), e.g. "GET DATA"."""
        prefix = command_prefix.upper()
        return self.ami.wait_event(
            lambda m: (
                m.get("Event") == "AGIExecStart"
                and m.get("Command", "").upper().startswith(prefix)
                and m.get("Uniqueid") == self.callee_uniqueid
            ),
            timeout,
            description=f"AGIExecStart {command_prefix!r} on {self.callee_uniqueid}",
            abort=self._callee_gone,
        )

    def send_dtmf(self, digits: str, *, duration_ms: int = 120, gap_s: float = 0.08) -> None:
        """Type digits on the caller's keypad: PlayDTMF out of `;1`, which Local delivers as
        incoming DTMF on `;2`. Send only while `;2` is collecting (after wait_app("Read") or
        wait_agi("GET DATA")): AGI discards digits that arrive between two commands."""
        self.ami.play_dtmf(self.caller_channel(), digits, duration_ms=duration_ms, gap_s=gap_s)

    def hangup(self) -> None:
        """The caller hangs up (Local tears the other leg down too)."""
        self.ami.hangup(self.caller_channel())

    def wait_hangup(self, timeout: float = 10.0) -> AMIMessage:
        """The callee leg hung up (the Hangup event carries Cause and Cause-txt)."""
        return self.ami.wait_event(
            event_matcher("Hangup", Uniqueid=self.callee_uniqueid),
            timeout,
            description=f"Hangup of {self.callee_uniqueid}",
        )


# --------------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------------


# Rootfs paths with a sandbox running in this process: a second start would otherwise wait on
# our own file lock until lock_timeout.
_RUNNING: set[Path] = set()
_RUNNING_LOCK = threading.Lock()


def _free_tcp_port() -> int:
    # Small race (someone may take it before Asterisk binds): the boot check would then fail
    # loudly rather than talk to the wrong server, since we log in with a random secret.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AsteriskSandbox:
    """Asterisk 22 running in the chroot `rootfs`, configured from scratch for one test run.

    One sandbox per rootfs at a time (a file lock enforces it): each start rewrites the chroot's
    /etc/asterisk, clears its logs (kept after stop for debugging) and astdb.

    dialplan_files: host files copied UNCHANGED into /etc/asterisk and #included (the product's
        config/extensions_callscreen.conf is meant to go here).
    dialplan: extra {file name: text} written into /etc/asterisk and #included after those.
    configs: other files for /etc/asterisk, not #included: {file name: text, or a host Path copied
        unchanged} (voicemail.conf, a file that a dialplan file #includes itself...). May replace
        the generated ones except asterisk.conf, modules.conf, manager.conf and extensions.conf.
    dialplan_globals: the [globals] section of extensions.conf.
    extra_modules: loaded after DEFAULT_MODULES (e.g. "app_dial.so", "bridge_simple.so").
    agi_scripts: host files installed (mode 755) into the chroot's agi-bin at start; agi-bin is
        emptied at every start. They run inside the chroot: their interpreter must exist there.
    """

    _GENERATED = ("asterisk.conf", "modules.conf", "manager.conf", "extensions.conf")

    def __init__(
        self,
        rootfs: Path | str,
        *,
        dialplan_files: Sequence[Path | str] = (),
        dialplan: Mapping[str, str] | None = None,
        configs: Mapping[str, str | Path] | None = None,
        dialplan_globals: Mapping[str, str] | None = None,
        extra_modules: Sequence[str] = (),
        agi_scripts: Sequence[Path | str] = (),
        agi_debug: bool = True,
        verbose: int = 3,
        boot_timeout: float = 30.0,
        lock_timeout: float = 300.0,
    ) -> None:
        self.root = Path(rootfs).absolute()
        self.dialplan_files = [Path(p) for p in dialplan_files]
        self.dialplan = dict(dialplan or {})
        self.configs = dict(configs or {})
        self.dialplan_globals = dict(dialplan_globals or {})
        self.agi_scripts = [Path(p) for p in agi_scripts]
        self.modules = list(DEFAULT_MODULES) + [m for m in extra_modules if m not in DEFAULT_MODULES]
        self.agi_debug = agi_debug
        self.verbose = verbose
        self.boot_timeout = boot_timeout
        self.lock_timeout = lock_timeout
        self.etc_dir = self.host_path(ETC_DIR)
        self.log_dir = self.host_path(LOG_DIR)
        self.agi_dir = self.host_path(AGI_DIR)
        self.full_log = self.log_dir / "full"  # everything, incl. AGI debug lines
        self.console_log = self.log_dir / "console.out"  # asterisk's own stdout/stderr
        self.ami_port = 0
        self.ami: AMI | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.boot_seconds = 0.0
        self._secret = secrets.token_hex(16)
        self._lock = _FileLock(_lock_path(self.root))
        self._locked = False
        self._check_names()

    # -- paths and files -------------------------------------------------------------------------

    def host_path(self, chroot_path: str) -> Path:
        """The host path of `chroot_path`. Lexical only: symlinks inside the chroot (var/run ->
        /run) must not be resolved against the host."""
        norm = os.path.normpath("/" + chroot_path.lstrip("/"))
        if norm.startswith("/.."):
            raise ValueError(f"path escapes the chroot: {chroot_path!r}")
        return self.root / norm.lstrip("/")

    def write_file(self, chroot_path: str, content: str | bytes, mode: int = 0o644) -> Path:
        """Create a file inside the chroot (parents too); returns its host path."""
        dest = self.host_path(chroot_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        dest.write_bytes(content)
        dest.chmod(mode)
        return dest

    def copy_into(self, src: Path | str, chroot_path: str, mode: int | None = None) -> Path:
        """Copy a host file into the chroot; returns its host path."""
        dest = self.host_path(chroot_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        dest.chmod(mode if mode is not None else (Path(src).stat().st_mode & 0o777))
        return dest

    def install_agi_script(self, src: Path | str, name: str | None = None) -> str:
        """Copy an executable into the chroot's agi-bin; returns the name to give AGI().
        It runs inside the chroot: its interpreter must exist there."""
        name = name or Path(src).name
        self.copy_into(src, f"{AGI_DIR}/{name}", mode=0o755)
        return name

    def read_full_log(self) -> str:
        try:
            return self.full_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def agi_debug_lines(self) -> list[str]:
        """The `agi set debug on` transcript from the full log: lines like
        `<Local/...;2>AGI Tx >> agi_callerid: ...` and `<Local/...;2>AGI Rx << GET DATA ...`."""
        return [
            line for line in self.read_full_log().splitlines() if "AGI Tx >>" in line or "AGI Rx <<" in line
        ]

    # -- config ----------------------------------------------------------------------------------

    def _check_names(self) -> None:
        names = [p.name for p in self.dialplan_files] + list(self.dialplan)
        clashes = {n for n in names if names.count(n) > 1}
        clashes |= {n for n in names + list(self.configs) if n in self._GENERATED}
        clashes |= set(names) & set(self.configs)
        bad = [n for n in names + list(self.configs) if "/" in n or n.startswith(".")]
        if clashes or bad:
            raise ValueError(f"config file names clash or are not plain names: {sorted(clashes | set(bad))}")
        paths = [p for p in self.configs.values() if isinstance(p, Path)]
        for path in self.dialplan_files + self.agi_scripts + paths:
            if not path.is_file():
                raise FileNotFoundError(path)

    def _config_files(self) -> dict[str, str | Path]:
        files: dict[str, str | Path] = dict(_QUIET_CONFIGS)
        dist = self.root / "etc/asterisk.dist/indications.conf"
        if dist.is_file():
            files["indications.conf"] = dist.read_text()  # ring/busy tones on Local channels
        files["asterisk.conf"] = (
            "[directories](!)\n"
            f"astetcdir => {ETC_DIR}\n"
            f"astmoddir => {self._module_dir()}\n"
            "astvarlibdir => /var/lib/asterisk\n"
            "astdbdir => /var/lib/asterisk\n"
            "astkeydir => /var/lib/asterisk\n"
            "astdatadir => /usr/share/asterisk\n"
            f"astagidir => {AGI_DIR}\n"
            "astspooldir => /var/spool/asterisk\n"
            f"astrundir => {RUN_DIR}\n"
            f"astlogdir => {LOG_DIR}\n"
            "astsbindir => /usr/sbin\n"
            "astcachedir => /var/cache/asterisk\n"
            "[options]\n"
            f"verbose = {self.verbose}\n"
            "debug = 0\n"
            "nocolor = yes\n"
            # Like a real phone, a waiting leg sends (silent) audio: without it Answer() on the
            # other Local leg waits 500 ms for a first voice frame on every call.
            "transmit_silence = yes\n"
            # No runuser: we are root already, and not switching user keeps setpriv's
            # parent-death signal (credential changes clear it).
        )
        files["modules.conf"] = "[modules]\nautoload = no\n" + "".join(f"load => {m}\n" for m in self.modules)
        files["manager.conf"] = (
            "[general]\n"
            "enabled = yes\n"
            f"port = {self.ami_port}\n"
            "bindaddr = 127.0.0.1\n"
            "displayconnects = no\n"
            "[sandbox]\n"
            f"secret = {self._secret}\n"
            "deny = 0.0.0.0/0.0.0.0\n"
            "permit = 127.0.0.1/255.255.255.255\n"
            "read = all\n"
            "write = all\n"
        )
        files["logger.conf"] = (
            "[general]\n"
            "dateformat = %F %T.%3q\n"
            "queue_log = no\n"
            "[logfiles]\n"
            # verbose carries dialplan tracing and the AGI debug transcript.
            "full => notice,warning,error,verbose,dtmf,debug\n"
            "console => notice,warning,error\n"
        )
        includes = [p.name for p in self.dialplan_files] + list(self.dialplan)
        files["extensions.conf"] = (
            "; Generated by tests/asterisk/sandbox.py on every sandbox start.\n"
            "[general]\n"
            "static = yes\n"
            "writeprotect = yes\n"
            "clearglobalvars = yes\n\n"
            "[globals]\n"
            + "".join(f"{k} = {v}\n" for k, v in self.dialplan_globals.items())
            + "\n"
            + "".join(f'#include "{name}"\n' for name in includes)
        )
        files.update(self.configs)
        files.update(self.dialplan)
        return files

    def _module_dir(self) -> str:
        for candidate in sorted((self.root / "usr/lib").glob("*/asterisk/modules")):
            return "/" + str(candidate.relative_to(self.root))
        return "/usr/lib/x86_64-linux-gnu/asterisk/modules"

    def _prepare_tree(self) -> None:
        if rootfs_info(self.root) is None:
            raise SandboxError(f"{self.root} is not a finished rootfs (run ensure_rootfs first)")
        # We hold the lock, so anything still running or mounted in the chroot is a leftover
        # of a crashed run (e.g. pytest killed with SIGKILL before setpriv's signal existed).
        _kill_pids(pids_rooted_in(self.root), "leftover processes in the Asterisk chroot")
        _unmount_all_under(self.root)
        if self.etc_dir.exists():
            shutil.rmtree(self.etc_dir)
        self.etc_dir.mkdir(parents=True)
        for name, content in self._config_files().items():
            if isinstance(content, Path):
                shutil.copyfile(content, self.etc_dir / name)
            else:
                (self.etc_dir / name).write_text(content)
        for path in self.dialplan_files:
            shutil.copyfile(path, self.etc_dir / path.name)  # byte for byte: "unchanged"
        # Per-run state: logs (kept after stop for debugging), control socket, AGI scripts.
        for directory in (self.log_dir, self.host_path(RUN_DIR), self.agi_dir):
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
        for script in self.agi_scripts:
            self.install_agi_script(script)
        # A fresh astdb per run: DB() state must not leak between test sessions.
        for leftover in self.host_path("/var/lib/asterisk").glob("astdb*"):
            leftover.unlink()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> AsteriskSandbox:
        reason = unavailable_reason(self.root)
        if reason is not None:
            raise SandboxUnavailable(reason)
        with _RUNNING_LOCK:
            if self.root in _RUNNING:
                raise SandboxError(
                    f"a sandbox is already running on {self.root} in this process; "
                    "stop it first (one sandbox per rootfs at a time)"
                )
            _RUNNING.add(self.root)
        try:
            self._lock.acquire(self.lock_timeout, "an Asterisk sandbox on this rootfs")
        except BaseException:
            with _RUNNING_LOCK:
                _RUNNING.discard(self.root)
            raise
        self._locked = True
        try:
            self._start_locked()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_locked(self) -> None:
        started = time.monotonic()
        self.ami_port = _free_tcp_port()
        self._prepare_tree()
        root = shlex.quote(str(self.root))
        # Private mount namespace: the binds exist only for this process tree and disappear
        # when its last process exits, so a crash cannot leave the host's /dev mounted in the
        # cache dir. setpriv: Asterisk gets SIGTERM if the thread that started it dies.
        script = (
            "set -e; "
            f"mount --bind /dev {root}/dev; "
            f"mount -t proc proc {root}/proc; "
            f"exec setpriv --pdeathsig TERM -- chroot {root} "
            f"/usr/sbin/asterisk -f -n -C {ETC_DIR}/asterisk.conf"
        )
        with open(self.console_log, "wb") as out:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
        log.info(
            "started Asterisk (pid %d) in %s, AMI on 127.0.0.1:%d", self.process.pid, self.root, self.ami_port
        )
        self.ami = self._connect_ami(started + self.boot_timeout)
        # FullyBooted: AMI listens before all modules are loaded; this says loading is over.
        self.ami.wait_event(
            event_matcher("FullyBooted"), max(1.0, started + self.boot_timeout - time.monotonic())
        )
        if self.agi_debug:
            self.ami.command("agi set debug on")
        self.boot_seconds = time.monotonic() - started
        log.info("Asterisk ready in %.2fs", self.boot_seconds)

    def _connect_ami(self, deadline: float) -> AMI:
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise SandboxError(
                    f"Asterisk exited ({self.process.returncode}) during boot; "
                    f"{self.console_log}:\n{_tail(self.console_log)}"
                )
            try:
                return AMI("127.0.0.1", self.ami_port, "sandbox", self._secret, timeout=5.0)
            except (OSError, AMIError) as exc:
                last = exc
                time.sleep(0.05)
        raise SandboxError(
            f"AMI did not answer within {self.boot_timeout}s ({last}); "
            f"{self.console_log}:\n{_tail(self.console_log)}"
        )

    def stop(self) -> None:
        """Stop Asterisk (core stop now, then SIGTERM, then SIGKILL), kill anything it left in
        the chroot, release the lock. Safe to call twice and after a failed start."""
        try:
            if self.process is not None and self.process.poll() is None:
                asked = False
                if self.ami is not None and self.ami.connected:
                    with contextlib.suppress(AMIError, OSError):
                        # Asterisk closes AMI without answering this: AMIError is expected.
                        self.ami.command("core stop now", timeout=5)
                    asked = True
                self._wait_or_kill(self.process, asked)
            if self.ami is not None:
                self.ami.close()
            # Process AGI scripts survive their Asterisk; they would hold the namespace open.
            _kill_pids(pids_rooted_in(self.root), "processes left in the Asterisk chroot")
            left = mounts_under(self.root)
            if left:  # only possible if someone mounted outside our namespace
                log.warning("mounts left under %s: %s", self.root, left)
                _unmount_all_under(self.root)
        finally:
            self.ami = None
            self.process = None
            if self._locked:
                self._lock.release()
                self._locked = False
                with _RUNNING_LOCK:
                    _RUNNING.discard(self.root)

    @staticmethod
    def _wait_or_kill(process: subprocess.Popen[bytes], asked: bool) -> None:
        steps: list[tuple[signal.Signals | None, float]] = [(signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)]
        if asked:
            steps.insert(0, (None, 10.0))  # give `core stop now` its chance first
        for sig, grace in steps:
            if sig is not None:
                log.log(logging.WARNING if asked else logging.INFO, "stopping Asterisk with %s", sig.name)
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
            try:
                process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
        raise SandboxError(f"Asterisk (pid {process.pid}) survived SIGKILL")

    def __enter__(self) -> AsteriskSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- conveniences ----------------------------------------------------------------------------

    def _require_ami(self) -> AMI:
        if self.ami is None:
            raise SandboxError("the sandbox is not running")
        return self.ami

    def cli(self, command: str, timeout: float | None = None) -> str:
        """Run an Asterisk CLI command through AMI and return its output."""
        return self._require_ami().command(command, timeout=timeout)

    def reload_dialplan(self) -> str:
        """Re-read extensions.conf and its includes (after editing them in etc_dir)."""
        return self.cli("dialplan reload")

    def call(
        self,
        exten: str,
        context: str,
        *,
        callerid: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout_ms: int = 30_000,
        hold_seconds: int = 120,
    ) -> LocalCall:
        """Shortcut for self.ami.originate_local(...)."""
        return self._require_ami().originate_local(
            exten,
            context,
            callerid=callerid,
            variables=variables,
            timeout_ms=timeout_ms,
            hold_seconds=hold_seconds,
        )


# What the `asterisk_sandbox_factory` fixture returns: make(**AsteriskSandbox kwargs).
SandboxFactory = Callable[..., AsteriskSandbox]

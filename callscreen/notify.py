"""Telling the administrator: storm start/end as a log line, an AMI UserEvent, a command.

Everything here runs in the background and is bounded: a slow AMI or a hanging command never
touches a call.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import threading

from callscreen.config import StormConfig

log = logging.getLogger(__name__)

AMI_EVENT = "CallscreenStorm"
_AMI_URL = re.compile(r"\Aami://(?P<user>[^:@/]+):(?P<secret>[^@/]+)@(?P<host>[^:/]+):(?P<port>\d+)\Z")
_TIMEOUT_S = 3.0


def _clean(value: str) -> str:
    """AMI headers are lines: nothing that could end one."""
    return "".join(ch for ch in value if ch.isprintable())[:64]


def ami_user_event(url: str, fields: dict[str, str]) -> bool:
    m = _AMI_URL.match(url)
    if not m:
        return False
    lines = [f"Action: Login\r\nUsername: {_clean(m['user'])}\r\nSecret: {_clean(m['secret'])}"
             "\r\nEvents: off\r\n\r\n",
             f"Action: UserEvent\r\nUserEvent: {AMI_EVENT}\r\n"
             + "".join(f"{_clean(k)}: {_clean(v)}\r\n" for k, v in fields.items()) + "\r\n",
             "Action: Logoff\r\n\r\n"]
    try:
        with socket.create_connection((m["host"], int(m["port"])), timeout=_TIMEOUT_S) as sock:
            sock.settimeout(_TIMEOUT_S)
            sock.recv(256)  # the banner
            for block in lines:
                sock.sendall(block.encode())
            reply = b""
            while b"Goodbye" not in reply and len(reply) < 8192:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
        return b"Authentication failed" not in reply
    except OSError as exc:
        log.warning("storm notice: AMI %s:%s unreachable: %s", m["host"], m["port"], exc)
        return False


def storm(cfg: StormConfig, state: str, line: str, callers: int = 0) -> threading.Thread:
    """Announce a storm 'start' or 'end' on a line, in the background."""
    log.warning("callback storm %s on line %s (%d unknown callers in the window)",
                "STARTED" if state == "start" else "ended", line, callers)

    def work() -> None:
        fields = {"Line": line, "State": state, "Callers": str(callers)}
        if cfg.notify_ami:
            ami_user_event(cfg.notify_ami, fields)
        if cfg.notify_command:
            env = dict(os.environ, CALLSCREEN_EVENT=f"storm-{state}", CALLSCREEN_LINE=line,
                       CALLSCREEN_CALLERS=str(callers))
            try:
                subprocess.run(list(cfg.notify_command), env=env, timeout=30, check=False,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("storm notify_command failed: %s", exc)

    thread = threading.Thread(target=work, name="storm-notice", daemon=True)
    thread.start()
    return thread

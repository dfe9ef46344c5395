"""Process AGI entry point: the same handlers as the FastAGI server, over stdin/stdout.

Used where the daemon does not run, and as the dialplan's fallback when it is unreachable.
Start-up is kept lean: no click, no holidays until a rule asks, one Redis connection.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from callscreen import config as config_mod
from callscreen import handlers, rules
from callscreen.agi import StdioTransport
from callscreen.config import ConfigError
from callscreen.engine import Engine
from callscreen.store import Store

log = logging.getLogger("callscreen.agi")


def main(argv: list[str]) -> int:
    route = argv[0] if argv else "screen"
    transport = StdioTransport()

    def on_sighup(_sig: int, _frame: FrameType | None) -> None:
        # Asterisk's SIGHUP means the channel hung up; the default action would kill us before
        # the after-call writes. The next read then reports the hangup.
        transport.hung_up = True

    signal.signal(signal.SIGHUP, on_sighup)
    try:
        cfg = config_mod.load()
        _setup_logging(cfg.logging.level, cfg.logging.target)
        engine = Engine(cfg, rules.load_dir(cfg.rules_dir), Store.from_config(cfg))
    except (ConfigError, rules.RulesError) as exc:
        # No config or rules: say so on Asterisk's console and let the dialplan default apply.
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        log.error("callscreen cannot start: %s", exc)
        engine = None
    if engine is None:
        return 0
    handlers.run(transport, lambda: engine, route_hint=route)
    return 0  # a failed screen is not Asterisk's business: the dialplan default covers it


def _setup_logging(level: str, target: str) -> None:
    if target == "stderr":
        # Asterisk shows a process AGI's stderr on its console: warnings only.
        logging.basicConfig(level=max(logging.WARNING, logging.getLevelName(level)),
                            stream=sys.stderr, format="callscreen: %(message)s")
    elif target == "syslog":
        from logging.handlers import SysLogHandler
        handler = SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("callscreen[agi]: %(levelname)s %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, filename=target,
                            format="%(asctime)s %(levelname)s callscreen.agi: %(message)s")

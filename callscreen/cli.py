"""`callscreen` command line: explain decisions and administer the store.

Exit codes: 0 done, 1 the store or a file failed, 2 bad input (nothing was written).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import logging.handlers
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import click
import phonenumbers
import redis
import yaml

from callscreen import __version__, imports, numbers, rules
from callscreen import config as config_mod
from callscreen.config import Config, ConfigError, Line
from callscreen.engine import Engine, UnknownLine
from callscreen.store import (
    ADMIN,
    BadKey,
    Store,
    StoreUnavailable,
    check_record,
    json_line,
)

log = logging.getLogger("callscreen")

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class State:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self._cfg: Config | None = None
        self._store: Store | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            try:
                self._cfg = config_mod.load(self.config_path)
            except ConfigError as exc:
                fail(1, "configuration error:\n" + str(exc))
            setup_logging(self._cfg)
        return self._cfg

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.from_config(self.cfg)
        return self._store

    def ruleset(self) -> rules.RuleSet:
        try:
            return rules.load_dir(self.cfg.rules_dir)
        except rules.RulesError as exc:
            fail(1, "rules error:\n" + str(exc))


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"callscreen: {message}", err=True)
    sys.exit(code)


def setup_logging(cfg: Config) -> None:
    root = logging.getLogger()
    if root.handlers:
        return
    target = cfg.logging.target
    handler: logging.Handler
    if target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    elif target == "syslog":
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(cfg.logging.level)


def parse_duration(text: str | None) -> int | None:
    if text is None:
        return None
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise click.BadParameter(f"'{text}' is not a duration like 30d, 12h, 2w", param_hint="--for")
    return int(m.group(1)) * _UNITS[m.group(2)]


def number_arg(cfg: Config, raw: str) -> str:
    """A caller number in any notation -> E.164, or exit 2."""
    facts = numbers.normalise(raw, cfg.region, strip_prefixes=cfg.strip_prefixes)
    if facts.e164 is None or not facts.possible:
        raise click.BadParameter(
            f"'{raw}' is not a phone number (region {cfg.region}): {facts.raw_kind}",
            param_hint="NUMBER",
        )
    return facts.e164


def entry_arg(cfg: Config, raw: str) -> str:
    """A number, or a prefix ending in '*' ('+33162*', '0162*', '1202555*') -> list entry."""
    if not raw.endswith("*"):
        return number_arg(cfg, raw)
    digits = re.sub(r"[\s.\-()]", "", raw[:-1])
    if digits.startswith("+"):
        body = digits[1:]
        prefix = "+" + body
    elif digits.startswith("00"):
        body = digits[2:]
        prefix = "+" + body
    else:
        body = digits
        meta = phonenumbers.PhoneMetadata.metadata_for_region(cfg.region)
        national = (meta.national_prefix if meta else None) or ""
        cc = phonenumbers.country_code_for_region(cfg.region)
        if national and body.startswith(national):
            body = body[len(national):]
        prefix = f"+{cc}{body}"
    if not body.isdigit() or not body.isascii() or not 2 <= len(prefix) <= 16 or prefix[1] == "0":
        raise click.BadParameter(f"'{raw}' is not a number prefix like +33162* or 0162*",
                                 param_hint="NUMBER")
    return prefix + "*"


def line_arg(engine: Engine, raw: str | None) -> Line | None:
    try:
        return engine.resolve_line(raw, strict=True)
    except UnknownLine as exc:
        raise click.BadParameter(str(exc), param_hint="--to/--line") from None


def store_call(what: Callable[[], Any]) -> Any:
    try:
        return what()
    except (redis.RedisError, OSError, StoreUnavailable) as exc:
        fail(1, f"Redis is unavailable: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar="CALLSCREEN_CONFIG",
              help="Main config file (default /etc/callscreen/callscreen.yaml; its callscreen.d/ "
                   "overrides are read too).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Call screening for Asterisk: explain decisions, manage lists and reputation."""
    ctx.obj = State(config_path)


@main.command()
@click.argument("number")
@click.option("--to", "to", metavar="DID", help="The called line (one of config 'lines').")
@click.option("--at", "at", metavar="ISO-TIME",
              help="When the call happens (default now); without offset: the line's time zone.")
@click.option("--attestation", type=click.Choice(["A", "B", "C", "failed"]),
              help="STIR/SHAKEN attestation of the call (default unknown).")
@click.option("--pres", "callingpres", metavar="CALLINGPRES",
              help="Asterisk CALLINGPRES value, e.g. 32 for a withheld number.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def check(state: State, number: str, to: str | None, at: str | None, attestation: str | None,
          callingpres: str | None, as_json: bool) -> None:
    """Explain what would happen to a call from NUMBER (writes nothing)."""
    cfg = state.cfg
    engine = Engine(cfg, state.ruleset(), state.store)
    line = line_arg(engine, to)
    when = parse_time(at, line.timezone if line else cfg.timezone)
    call = engine.make_call(number, line, when, attestation or "unknown", callingpres)
    decision = engine.decide(call)
    v = decision.verdict
    if as_json:
        click.echo(json.dumps({
            "number": call.caller.e164, "anonymous": call.caller.anonymous,
            "valid": call.caller.valid, "number_type": call.caller.number_type,
            "country": call.caller.country, "line": line.did if line else None,
            "at": call.at.isoformat(), "action": v.action, "rule": v.rule, "reason": v.reason,
            "score": v.score, "degraded": v.degraded,
            "trace": [{"rule": s.rule, "matched": s.matched, "detail": s.detail,
                       "effect": s.effect} for s in v.trace],
        }, indent=2))
        return
    c = call.caller
    desc = "anonymous" if c.anonymous else (
        f"{c.e164} ({c.number_type}, {c.country or '?'}, {'valid' if c.valid else 'INVALID'})"
        if c.e164 else f"unusable caller ID ({c.raw_kind})")
    click.echo(f"caller   {desc}")
    if line:
        local = call.at.astimezone(ZoneInfo(line.timezone))
        click.echo(f"line     {line.did} {line.name} ({local:%a %Y-%m-%d %H:%M %Z})")
    else:
        local = call.at.astimezone(ZoneInfo(cfg.timezone))
        click.echo(f"line     none ({local:%a %Y-%m-%d %H:%M %Z})")
    if decision.facts is not None:
        r, f = decision.facts.record, decision.facts
        click.echo(f"store    score {r.score:g}, reports {r.reports} ({r.reporters} reporters), "
                   f"calls {r.calls}, challenge {r.passes}/{r.fails}/{r.abandons} "
                   f"pass/fail/abandon, velocity {f.velocity}")
    else:
        click.echo(f"store    UNAVAILABLE ({decision.store_error})")
    click.echo("trace")
    for step in v.trace:
        click.echo(f"  {step}")
    flag = " (degraded)" if v.degraded else ""
    click.echo(f"verdict  {v.action.upper()}{flag}  rule={v.rule} reason={v.reason} "
               f"score={v.score:g}")


def parse_time(text: str | None, tz: str) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"'{text}' is not an ISO time like 2026-12-01T10:30",
                                 param_hint="--at") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(tz))
    return when


def _list_command(kind: str, add: bool) -> Callable[..., None]:
    @click.argument("entry", metavar="NUMBER-OR-PREFIX*")
    @click.option("--line", metavar="DID", help="Only for this line (default: all lines).")
    @click.pass_obj
    def command(state: State, /, entry: str, line: str | None, **opts: Any) -> None:
        cfg = state.cfg
        engine = Engine(cfg, rules.RuleSet((), ()), None)
        target = entry_arg(cfg, entry)
        line_obj = line_arg(engine, line) if line else None
        did = line_obj.did if line_obj else None
        scope = f"line {did}" if did else "all lines"
        if add:
            ttl = parse_duration(opts.get("duration"))
            expires = time.time() + ttl if ttl else None
            store_call(lambda: state.store.list_add(kind, target, did, expires,
                                                    opts.get("label") or ADMIN))
            until = (f" until {dt.datetime.fromtimestamp(expires):%Y-%m-%d %H:%M}"
                     if expires else "")
            click.echo(f"{kind}ed {target} for {scope}{until}")
        else:
            removed = store_call(lambda: state.store.list_remove(kind, target, did))
            click.echo(f"removed {target} from the {kind} list of {scope}" if removed
                       else f"{target} was not on the {kind} list of {scope}")

    if add:
        command = click.option("--for", "duration", metavar="DURATION",
                               help="Expire after e.g. 30d, 12h, 2w (default never).")(command)
        command = click.option("--label", metavar="TEXT", help="Why (shown by `lists`).")(command)
    return command


for _kind in ("allow", "block"):
    main.command(_kind, help=f"Put a number or prefix on the {_kind} list.")(
        _list_command(_kind, True))
    main.command(f"un{_kind}", help=f"Remove a number or prefix from the {_kind} list.")(
        _list_command(_kind, False))


@main.command()
@click.argument("number")
@click.option("--line", metavar="DID", help="Also show what this line knows.")
@click.pass_obj
def show(state: State, number: str, line: str | None) -> None:
    """Everything the store holds about NUMBER."""
    cfg = state.cfg
    e164 = number_arg(cfg, number)
    engine = Engine(cfg, rules.RuleSet((), ()), None)
    line_obj = line_arg(engine, line) if line else None
    data = store_call(lambda: state.store.show(e164, line_obj.did if line_obj else None,
                                               time.time()))
    click.echo(json.dumps(data, indent=2, default=str))


@main.command()
@click.argument("number")
@click.option("--line", metavar="DID", help="Report as this line (one vote per line).")
@click.pass_obj
def report(state: State, number: str, line: str | None) -> None:
    """Report NUMBER as unwanted (administrator report, or as a line)."""
    cfg = state.cfg
    e164 = number_arg(cfg, number)
    engine = Engine(cfg, rules.RuleSet((), ()), None)
    line_obj = line_arg(engine, line) if line else None
    reporter = line_obj.did if line_obj else ADMIN
    counted, why = store_call(lambda: state.store.vote(e164, reporter, time.time()))
    score = store_call(lambda: state.store.facts(e164, None, time.time())).record.score
    if counted:
        outcome = "counted"
    elif why == "repeat":
        outcome = "already reported by this reporter, not counted again"
    else:
        outcome = "not counted: this reporter's hourly limit is reached"
    click.echo(f"reported {e164} as {reporter}: {outcome}; score now {score:g}")


@main.command()
@click.argument("number")
@click.pass_obj
def forgive(state: State, number: str) -> None:
    """Reset NUMBER's reputation (score, reports, velocity). Lists are kept."""
    e164 = number_arg(state.cfg, number)
    existed = store_call(lambda: state.store.forgive(e164))
    click.echo(f"forgave {e164}" if existed else f"{e164} had no reputation")


@main.command("lists")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def lists_cmd(state: State, as_json: bool) -> None:
    """Print the allow and block lists (global and per line)."""
    entries = store_call(lambda: state.store.list_entries(time.time()))
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        click.echo("no list entries")
    for e in entries:
        scope = f"line {e['line']}" if e["line"] else "global"
        until = (f" until {dt.datetime.fromtimestamp(e['expires']):%Y-%m-%d %H:%M}"
                 if e["expires"] else "")
        click.echo(f"{e['list']:<6} {scope:<20} {e['entry']:<18} {e['label']}{until}")


@main.command()
@click.pass_obj
def stats(state: State) -> None:
    """Counts of stored numbers, lines, list entries and Redis memory."""
    for key, value in store_call(lambda: state.store.stats()).items():
        click.echo(f"{key:<14} {value}")


@main.command("export")
@click.argument("output", type=click.File("w"), default="-")
@click.pass_obj
def export_cmd(state: State, output: Any) -> None:
    """Write everything callscreen stores as JSON lines (to OUTPUT or stdout)."""
    def run() -> int:
        count = 0
        for record in state.store.export():
            output.write(json_line(record) + "\n")
            count += 1
        return count

    count = store_call(run)
    click.echo(f"exported {count} keys", err=True)


class _ImportGroup(click.Group):
    """`callscreen import FILE` restores a backup (as it always did); `import ftc-dnc FILE` and
    `import csv FILE ...` import public complaint data."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and (args[0] == "-" or not (args[0] in self.commands or args[0].startswith("-"))):
            args = ["backup", *args]
        return super().parse_args(ctx, args)


@main.group("import", cls=_ImportGroup)
def import_group() -> None:
    """Restore a backup (import FILE) or import public complaint data (ftc-dnc, csv)."""


@import_group.command("backup")
@click.argument("source", type=click.File("r"))
@click.pass_obj
def import_backup(state: State, source: Any) -> None:
    """Restore a JSON-lines export (keys of the same name are replaced)."""
    records = []
    for lineno, text in enumerate(source, 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            check_record(record)
        except (ValueError, BadKey) as exc:
            fail(2, f"{source.name}:{lineno}: {exc}; nothing imported")
        records.append(record)
    count = store_call(lambda: state.store.import_records(records))
    click.echo(f"imported {count} keys")


_WEIGHT_HELP = "Weight of each imported vote (default reputation.report_weight)."
_WORKERS_HELP = "Processes that parse numbers (default: one per CPU; 1: none)."


@import_group.command("ftc-dnc")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--source", default=imports.FTC_SOURCE, show_default=True,
              help="Reporter name (src:NAME): rolled back with `reporter rollback src:NAME`.")
@click.option("--weight", type=float, help=_WEIGHT_HELP)
@click.option("--workers", type=click.IntRange(min=1), help=_WORKERS_HELP)
@click.pass_obj
def import_ftc_cmd(state: State, path: str, source: str, weight: float | None,
                   workers: int | None) -> None:
    """Import the FTC Do Not Call reported-calls CSV: one vote per number, counted once."""
    run_import(state, path, lambda progress: imports.import_ftc(
        _import_source(path), state.store, state.cfg, source=source, weight=weight,
        progress=progress, workers=workers))


@import_group.command("csv")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--number-column", required=True, metavar="NAME|N",
              help="Header name of the number column, or its 1-based index.")
@click.option("--label", required=True, help="Source name: votes count as reporter src:LABEL.")
@click.option("--region", metavar="CC", help="Country of national numbers (default: region).")
@click.option("--delimiter", default=",", show_default=True)
@click.option("--no-header", is_flag=True, help="The first row is data (needs a column index).")
@click.option("--weight", type=float, help=_WEIGHT_HELP)
@click.option("--workers", type=click.IntRange(min=1), help=_WORKERS_HELP)
@click.pass_obj
def import_csv_cmd(state: State, path: str, number_column: str, label: str, region: str | None,
               delimiter: str, no_header: bool, weight: float | None,
               workers: int | None) -> None:
    """Import any CSV list of nuisance numbers under a source name of your choice."""
    run_import(state, path, lambda progress: imports.import_csv(
        _import_source(path), state.store, state.cfg,
        number_column=imports.parse_column(number_column), label=label, region=region,
        delimiter=delimiter, header=not no_header, weight=weight, progress=progress,
        workers=workers))


def _import_source(path: str) -> imports.Source:
    return sys.stdin if path == "-" else path


def run_import(state: State, path: str,
               do: Callable[[imports.Progress | None], imports.ImportSummary]) -> None:
    """Run an import with a progress bar on a terminal; print its summary; exit 2 on bad input."""
    state.cfg  # noqa: B018 - configuration errors first
    total = imports.estimate_rows(path) if path != "-" and sys.stderr.isatty() else None
    try:
        if total:
            with click.progressbar(length=total, label="importing", file=sys.stderr) as bar:
                def progress(rows: int) -> None:
                    bar.update(rows - bar.pos)

                summary = store_call(lambda: do(progress))
        else:
            summary = store_call(lambda: do(None))
    except imports.ImportError_ as exc:
        if exc.summary is not None:
            click.echo(str(exc.summary))
        fail(2, str(exc))
    click.echo(str(summary))


@main.command()
@click.option("--bind", metavar="ADDRESS", help="Listen address (default: server.bind, 127.0.0.1).")
@click.option("--port", type=int, help="Listen port (default: server.port, 4573).")
@click.option("--workers", type=click.IntRange(1, 64),
              help="Server processes sharing the port (default: server.workers, 1).")
@click.pass_obj
def serve(state: State, bind: str | None, port: int | None, workers: int | None) -> None:
    """Run the FastAGI server (SIGHUP reloads config and rules, SIGTERM drains and stops)."""
    from callscreen.server import FastAGIServer, load_engine

    cfg = state.cfg  # validates and sets up logging
    try:
        engine = load_engine(state.config_path)
    except rules.RulesError as exc:
        fail(1, "rules error:\n" + str(exc))
    server = FastAGIServer(engine, state.config_path, bind=bind, port=port)
    try:
        host, bound = server.open()
    except OSError as exc:
        fail(1, f"cannot listen on {bind or cfg.server.bind}:{port or cfg.server.port}: {exc}")
    workers = cfg.server.workers if workers is None else workers
    log.info("callscreen %s serving %d rules for %d line(s) on %s:%d (%d worker%s)", __version__,
             len(engine.ruleset.rules), len(cfg.lines), host, bound, workers,
             "" if workers == 1 else "s")
    if workers > 1:
        from callscreen.workers import run_workers

        run_workers(server, workers)
        return
    server.install_signals()
    server.serve_forever()


@main.group("spool")
def spool_group() -> None:
    """Writes kept on disk while Redis was away (spool_dir), applied once when it is back."""


def _spool_dir(state: State) -> str:
    if not state.cfg.spool_dir:
        fail(1, "no spool: spool_dir is empty in the configuration")
    return state.cfg.spool_dir


@spool_group.command("status")
@click.pass_obj
def spool_status(state: State) -> None:
    """How many writes wait in the spool."""
    from callscreen.spool import Spool

    directory = _spool_dir(state)
    click.echo(f"{Spool(directory).pending()} write(s) waiting in {directory}")


@spool_group.command("replay")
@click.pass_obj
def spool_replay(state: State) -> None:
    """Apply the waiting writes now (the FastAGI server does it every 15 s). Exit 1 if some are
    left (Redis refused them again)."""
    _spool_dir(state)
    store = state.store
    spool = store.spool
    assert spool is not None  # spool_dir is set
    applied, already, left = store_call(lambda: spool.replay(store.apply_once))
    click.echo(f"{applied} applied, {already} already applied before, {left} left")
    if left:
        sys.exit(1)


def _line_did(state: State, line: str) -> str:
    engine = Engine(state.cfg, rules.RuleSet((), ()), None)
    line_obj = line_arg(engine, line)
    assert line_obj is not None
    return line_obj.did


@main.group()
def storm() -> None:
    """Callback storms: a spoofed line's owner shielded from angry callbacks."""


@storm.command("status")
@click.option("--line", required=True, metavar="DID")
@click.pass_obj
def storm_status(state: State, line: str) -> None:
    """Is the line in a storm, since when, how many callers."""
    did = _line_did(state, line)
    info = store_call(lambda: state.store.storm_state(did))
    if not info:
        click.echo(f"line {did}: no storm")
        return
    started = dt.datetime.fromtimestamp(float(info.get("started", 0)))
    kind = "forced by an admin" if info.get("forced") == "1" else "detected"
    click.echo(f"line {did}: STORM ({kind}) since {started:%Y-%m-%d %H:%M}, "
               f"{info.get('callers', 0)} unknown callers, ends after "
               f"{int(info.get('ttl_s', 0)) // 60} quiet minutes")


@storm.command("start")
@click.option("--line", required=True, metavar="DID")
@click.pass_obj
def storm_start(state: State, line: str) -> None:
    """Force a storm on a line (until `stop` or storm.max_hours)."""
    did = _line_did(state, line)
    store_call(lambda: state.store.storm_start(did, time.time()))
    click.echo(f"line {did}: storm started; unknown callers now hear the explanation")


@storm.command("stop")
@click.option("--line", required=True, metavar="DID")
@click.pass_obj
def storm_stop(state: State, line: str) -> None:
    """End a line's storm now."""
    did = _line_did(state, line)
    stopped = store_call(lambda: state.store.storm_stop(did))
    click.echo(f"line {did}: storm stopped" if stopped else f"line {did}: no storm")


@storm.command("evidence")
@click.option("--line", required=True, metavar="DID")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv")
@click.pass_obj
def storm_evidence(state: State, line: str, fmt: str) -> None:
    """Callers, times and what they heard during storms (for a complaint)."""
    did = _line_did(state, line)
    rows = store_call(lambda: state.store.storm_evidence(did))
    for row in rows:
        row["time_iso"] = dt.datetime.fromtimestamp(float(row["time"]), dt.UTC).isoformat()
    if fmt == "json":
        click.echo(json.dumps({"line": did, "calls": rows}, indent=2))
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["time_iso", "caller", "heard", "outcome", "time"])
    writer.writeheader()
    writer.writerows(rows)
    click.echo(out.getvalue().rstrip("\n"))


@main.command()
@click.argument("number")
@click.option("--for", "duration", metavar="DURATION", help="How long (default reputation.spoofed_days).")
@click.option("--clear", is_flag=True, help="Remove the flag.")
@click.pass_obj
def spoofed(state: State, number: str, duration: str | None, clear: bool) -> None:
    """Flag NUMBER as shown by someone else: challenged, never blocked on reputation alone."""
    e164 = number_arg(state.cfg, number)
    if clear:
        store_call(lambda: state.store.set_spoofed(e164, None))
        click.echo(f"{e164} is no longer flagged as spoofed")
        return
    seconds = parse_duration(duration) or state.cfg.reputation.spoofed_days * 86400
    until = time.time() + seconds
    store_call(lambda: state.store.set_spoofed(e164, until))
    click.echo(f"{e164} flagged as spoofed until {dt.datetime.fromtimestamp(until):%Y-%m-%d %H:%M}")


@main.group()
def reporter() -> None:
    """Reporters: the lines, admins and import sources whose votes shape reputation."""


@reporter.command("rollback")
@click.argument("who", metavar="LINE|admin|src:NAME")
@click.pass_obj
def reporter_rollback(state: State, who: str) -> None:
    """Undo every counted vote of a reporter (a line that reported in bad faith, an import)."""
    if who == ADMIN or who.startswith("src:"):
        target = who
    else:
        target = _line_did(state, who)
    try:
        undone = store_call(lambda: state.store.reporter_rollback(target, time.time()))
    except BadKey as exc:
        raise click.BadParameter(str(exc), param_hint="WHO") from None
    click.echo(f"rolled back {undone} vote(s) of {target}")


@main.command()
def demo() -> None:
    """Try callscreen without a PBX: a real Asterisk sandbox, five calls, what happened and why.

    Needs root, mmdebstrap and redis-server, from a source checkout.
    """
    from callscreen import demo as demo_mod

    sys.exit(demo_mod.run(click.echo))


@main.group("config")
def config_group() -> None:
    """Configuration tools."""


@config_group.command("check")
@click.pass_obj
def config_check(state: State) -> None:
    """Validate the configuration and print the merged result."""
    try:
        cfg = config_mod.load(state.config_path)
    except ConfigError as exc:
        fail(1, "configuration error:\n" + str(exc))
    data = config_mod.as_dict(cfg)
    data["redis"]["url"] = mask_password(data["redis"]["url"])
    click.echo("# read: " + (", ".join(cfg.sources) or "built-in defaults only"))
    click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())


def mask_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


@main.group("rules")
def rules_group() -> None:
    """Rules tools."""


@rules_group.command("lint")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.pass_obj
def rules_lint(state: State, directory: Path | None) -> None:
    """Check every rules file; print each problem with file:line."""
    target = directory or state.cfg.rules_dir
    try:
        ruleset = rules.load_dir(target)
    except rules.RulesError as exc:
        for problem in exc.problems:
            click.echo(problem)
        fail(1, f"{len(exc.problems)} problem(s) in {target}")
    click.echo(f"{len(ruleset.rules)} rules OK in {len(ruleset.files)} files:")
    for rule in ruleset.rules:
        effect = f"action {rule.action}" if rule.action else f"score {rule.score:+g}"
        click.echo(f"  {rule.name:<28} {effect:<18} {rule.where}")


if __name__ == "__main__":
    main()

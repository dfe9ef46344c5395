"""Configuration: load, layer and validate.

Layers, later wins: built-in defaults (identical to the shipped ``config/callscreen.yaml``), the main
file (``/etc/callscreen/callscreen.yaml``, or ``--config``, or ``$CALLSCREEN_CONFIG``), then every
``callscreen.d/*.yaml`` beside it in lexical order. Mappings merge key by key; lists replace.
Every error names the file and line it comes from. Relative paths are relative to the main file.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import phonenumbers

from callscreen import numbers, yamlsrc
from callscreen.yamlsrc import SourceDict, SourceList, YamlError

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/callscreen/callscreen.yaml")
ENV_PATH = "CALLSCREEN_CONFIG"
ACTIONS = ("allow", "challenge", "voicemail", "block")
FAIL_MODES = {"open": "allow", "challenge": "challenge", "closed": "voicemail"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """One or more problems, each 'file:line: message'."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "cs:"
    socket_timeout_ms: int = 200
    connect_timeout_ms: int = 200
    max_connections: int = 64
    breaker_failures: int = 3
    breaker_cooldown_ms: int = 5000
    # Redis Sentinel: the master of `sentinel_service` as the sentinels report it (the url then
    # gives only the database, user, password and TLS).
    sentinel_service: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    # TLS (rediss:// urls): the CA that signed the server's certificate, and this client's own
    # certificate and key when the server asks for one (tls-auth-clients). Empty: system CAs.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass(frozen=True)
class Line:
    did: str  # E.164
    name: str
    timezone: str
    language: str
    facts: numbers.NumberFacts = field(compare=False, repr=False)

    @property
    def country(self) -> str | None:
        return self.facts.country


@dataclass(frozen=True)
class Thresholds:
    challenge: float = 30.0
    voicemail: float = 60.0
    block: float = 150.0


@dataclass(frozen=True)
class Reputation:
    half_life_days: float = 30.0
    report_weight: float = 25.0
    admin_report_weight: float = 40.0
    challenge_fail_weight: float = 10.0
    abandon_weight: float = 15.0
    pass_weight: float = -20.0
    record_ttl_days: int = 180
    velocity_window_minutes: int = 60
    recent_calls_kept: int = 50
    recent_ttl_days: int = 7
    vote_window_days: int = 30
    reporter_rate_per_hour: int = 20
    weight_attestation_c: float = 0.5
    weight_failed_verification: float = 0.25
    spoofed_days: int = 30


@dataclass(frozen=True)
class StormConfig:
    window_minutes: int = 60
    min_callers: int = 6
    factor: float = 3.0
    baseline_days: int = 7
    quiet_minutes: float = 30.0
    max_hours: int = 24
    press1: str = "allow"
    evidence_days: int = 90
    notify_command: tuple[str, ...] = ()
    notify_ami: str = ""  # ami://user:secret@127.0.0.1:5038 to raise a UserEvent


@dataclass(frozen=True)
class Learning:
    greylist_minutes: int = 0
    neighbour_burst_window_minutes: int = 60


# Emergency numbers per region (dialled from our phones): after one, every call rings for a while.
EMERGENCY_DEFAULTS: dict[str, tuple[str, ...]] = {
    "FR": ("15", "17", "18", "112", "114", "115", "119", "191", "196", "197"),
    "US": ("911", "112"), "CA": ("911", "112"), "GB": ("999", "112"), "IE": ("999", "112"),
    "AU": ("000", "112"), "NZ": ("111", "112"), "DEFAULT": ("112",),
}


@dataclass(frozen=True)
class Emergency:
    minutes: int = 120
    numbers: tuple[str, ...] = ()  # empty: EMERGENCY_DEFAULTS of the region


@dataclass(frozen=True)
class ChallengeConfig:
    digits: int = 3
    attempts: int = 2
    timeout_ms: int = 6000
    on_fail: str = "voicemail"
    trust_days: int = 90
    language: str = ""  # empty: follow the channel's language
    sounds_dir: str = ""  # empty: look in Asterisk's usual sounds directories


@dataclass(frozen=True)
class Features:
    report_window_minutes: int = 60
    contact_days: int = 365


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "127.0.0.1"
    port: int = 4573
    allowed_clients: tuple[str, ...] = ("127.0.0.1", "::1")
    call_deadline_s: int = 10
    workers: int = 1


@dataclass(frozen=True)
class HolidayConfig:
    country: str = ""  # empty: the line's country
    subdivision: str = ""


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    target: str = "stderr"  # stderr | syslog | a file path


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = RedisConfig()
    region: str = "FR"
    timezone: str = "Europe/Paris"
    language: str = "en"
    lines: tuple[Line, ...] = ()
    rules_dir: Path = Path("/etc/callscreen/rules")
    strip_prefixes: tuple[str, ...] = ()
    neighbour_digits: Mapping[str, int] = field(default_factory=dict)
    thresholds: Thresholds = Thresholds()
    reputation: Reputation = Reputation()
    challenge: ChallengeConfig = ChallengeConfig()
    holidays: HolidayConfig = HolidayConfig()
    features: Features = Features()
    server: ServerConfig = ServerConfig()
    storm: StormConfig = StormConfig()
    learning: Learning = Learning()
    emergency: Emergency = Emergency()
    pbx_id: str = "local"
    spool_dir: str = ""
    fail_mode: str = "open"
    default_action: str = "allow"
    logging: LoggingConfig = LoggingConfig()
    sources: tuple[str, ...] = ()

    def line_for(self, did: str | None) -> Line | None:
        for line in self.lines:
            if line.did == did:
                return line
        return None

    @property
    def emergency_numbers(self) -> tuple[str, ...]:
        return self.emergency.numbers or EMERGENCY_DEFAULTS.get(
            self.region, EMERGENCY_DEFAULTS["DEFAULT"])

    @property
    def fail_action(self) -> str:
        return FAIL_MODES[self.fail_mode]


T = TypeVar("T")


class _Reader:
    """Reads typed values out of a SourceDict, collecting every problem with its file:line."""

    def __init__(self, problems: list[str]):
        self.problems = problems

    def section(self, doc: SourceDict, key: str, allowed: set[str]) -> SourceDict:
        value = doc.get(key)
        if value is None:
            return yamlsrc.empty(doc.where(key))
        if not isinstance(value, SourceDict):
            self.problems.append(f"{doc.where(key)}: '{key}' must be a mapping")
            return yamlsrc.empty(doc.where(key))
        self.unknown_keys(value, allowed, key + ".")
        return value

    def unknown_keys(self, doc: SourceDict, allowed: set[str], path: str = "") -> None:
        for key in doc:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.problems.append(f"{doc.where(key)}: unknown key '{path}{key}' (known: {hint})")

    def get(
        self,
        doc: SourceDict,
        key: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        if key not in doc or doc[key] is None:
            return default
        value = doc[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        wanted = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in wanted:
            value = object()  # YAML 'yes' is not a number
        if not isinstance(value, wanted):
            names = "/".join(t.__name__ for t in wanted)
            self.problems.append(f"{doc.where(key)}: '{key}' must be {names}, got {doc[key]!r}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.problems.append(f"{doc.where(key)}: {problem}")
                return default
        return value  # type: ignore[return-value]


def _positive(name: str) -> Callable[[Any], str | None]:
    return lambda v: None if v > 0 else f"{name} must be > 0, got {v}"


def _region(value: str) -> str | None:
    if value not in phonenumbers.SUPPORTED_REGIONS:
        return f"region '{value}' is not an ISO country code known to phonenumbers"
    return None


def _tz(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"time zone '{value}' is unknown (use an IANA name like Europe/Paris)"
    return None


def _one_of(name: str, choices: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"{name} '{v}' is not one of {', '.join(choices)}"


def _fraction(name: str) -> Callable[[Any], str | None]:
    return lambda v: None if 0 <= v <= 1 else f"{name} must be between 0 and 1, got {v}"


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"'{value}' is not an IP address"
    return None


def _redis_url(value: str) -> str | None:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        return f"redis url '{value}' must start with redis://, rediss:// or unix://"
    return None


def _file_setting(r: _Reader, doc: SourceDict, key: str, base_dir: Path) -> str:
    """A file named in the config (relative to the config's directory), made absolute; it must
    be readable now. Empty: not used."""
    value = r.get(doc, key, str, "")
    if not value:
        return ""
    path = (base_dir / value).resolve()  # an absolute value stays itself
    if not (path.is_file() and os.access(path, os.R_OK)):
        r.problems.append(f"{doc.where(key)}: file '{value}' not found or not readable")
    return str(path)


def redis_url_parts(url: str) -> dict[str, Any]:
    """Database, user, password and TLS of a redis:// or rediss:// url (what a Sentinel setup
    takes from it). Raises ValueError on a database that is not a number."""
    parts = urllib.parse.urlsplit(url)
    db = parts.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(f"'/{db}' is not a database number")
    return {"db": int(db or 0),
            "username": urllib.parse.unquote(parts.username or "") or None,
            "password": urllib.parse.unquote(parts.password or "") or None,
            "ssl": parts.scheme == "rediss"}


def _sentinels(r: _Reader, rs: SourceDict) -> tuple[tuple[str, int], ...]:
    raw = r.get(rs, "sentinels", list, [])
    found: list[tuple[str, int]] = []
    for item in raw:
        host, _, port = str(item).rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            r.problems.append(f"{rs.where('sentinels')}: sentinel '{item}' must be host:port")
            continue
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def build(doc: SourceDict, base_dir: Path, sources: tuple[str, ...] = ()) -> Config:
    """Validate a merged document into a Config; raise ConfigError listing every problem."""
    problems: list[str] = []
    r = _Reader(problems)
    d = Config()
    r.unknown_keys(
        doc,
        {
            "redis", "region", "timezone", "language", "lines", "rules_dir", "numbers",
            "thresholds", "reputation", "challenge", "holidays", "fail_mode", "default_action",
            "logging", "features", "server", "storm", "learning", "emergency", "pbx_id",
            "spool_dir",
        },
    )

    rs = r.section(doc, "redis", set(RedisConfig.__dataclass_fields__))
    rd = d.redis
    redis_cfg = RedisConfig(
        url=r.get(rs, "url", str, rd.url, _redis_url),
        prefix=r.get(rs, "prefix", str, rd.prefix,
                     lambda v: None if v and v.isprintable() and " " not in v
                     else f"redis prefix '{v}' must be printable, without spaces"),
        socket_timeout_ms=r.get(rs, "socket_timeout_ms", int, rd.socket_timeout_ms,
                                _positive("socket_timeout_ms")),
        connect_timeout_ms=r.get(rs, "connect_timeout_ms", int, rd.connect_timeout_ms,
                                 _positive("connect_timeout_ms")),
        max_connections=r.get(rs, "max_connections", int, rd.max_connections,
                              _positive("max_connections")),
        breaker_failures=r.get(rs, "breaker_failures", int, rd.breaker_failures,
                               _positive("breaker_failures")),
        breaker_cooldown_ms=r.get(rs, "breaker_cooldown_ms", int, rd.breaker_cooldown_ms,
                                  _positive("breaker_cooldown_ms")),
        sentinel_service=r.get(rs, "sentinel_service", str, rd.sentinel_service),
        sentinels=_sentinels(r, rs),
        tls_ca_file=_file_setting(r, rs, "tls_ca_file", base_dir),
        tls_cert_file=_file_setting(r, rs, "tls_cert_file", base_dir),
        tls_key_file=_file_setting(r, rs, "tls_key_file", base_dir),
    )
    tls_files = [k for k in ("tls_ca_file", "tls_cert_file", "tls_key_file") if rs.get(k)]
    if tls_files and not redis_cfg.url.startswith("rediss://"):
        problems.append(f"{rs.where(tls_files[0])}: {tls_files[0]} needs a rediss:// url "
                        f"(got {redis_cfg.url})")
    if bool(redis_cfg.tls_cert_file) != bool(redis_cfg.tls_key_file):
        problems.append(f"{rs.where()}: redis tls_cert_file and tls_key_file go together")
    if redis_cfg.sentinels:
        try:
            redis_url_parts(redis_cfg.url)
        except ValueError as exc:
            problems.append(f"{rs.where('url')}: with sentinels the url gives only the "
                            f"database: {exc}")
    if bool(redis_cfg.sentinel_service) != bool(rs.get("sentinels")):
        problems.append(f"{rs.where()}: redis sentinel_service and sentinels go together "
                        "(the service name and at least one host:port)")

    region = r.get(doc, "region", str, d.region, _region)
    timezone = r.get(doc, "timezone", str, d.timezone, _tz)
    language = r.get(doc, "language", str, d.language)

    lines: list[Line] = []
    raw_lines = doc.get("lines") or []
    if not isinstance(raw_lines, list):
        problems.append(f"{doc.where('lines')}: 'lines' must be a list")
        raw_lines = []
    for index, item in enumerate(raw_lines):
        where = raw_lines.where(index) if isinstance(raw_lines, SourceList) else doc.where("lines")
        if isinstance(item, str | int):
            item_doc = yamlsrc.empty(where)
            item_doc["number"] = str(item)
            item_doc.key_where["number"] = where
        elif isinstance(item, SourceDict):
            item_doc = item
            r.unknown_keys(item_doc, {"number", "name", "timezone", "language"}, "lines[].")
        else:
            problems.append(f"{where}: a line is a number or a mapping with 'number'")
            continue
        raw = item_doc.get("number")
        if raw is None:
            problems.append(f"{item_doc.where()}: line without 'number'")
            continue
        facts = numbers.normalise(str(raw), region)
        if facts.e164 is None or not facts.possible:
            problems.append(f"{item_doc.where('number')}: line number '{raw}' is not a phone "
                            f"number (region {region})")
            continue
        if any(line.did == facts.e164 for line in lines):
            problems.append(f"{item_doc.where('number')}: line {facts.e164} is listed twice")
            continue
        lines.append(Line(
            did=facts.e164,
            name=r.get(item_doc, "name", str, facts.e164),
            timezone=r.get(item_doc, "timezone", str, timezone, _tz),
            language=r.get(item_doc, "language", str, language),
            facts=facts,
        ))

    rules_dir_raw = r.get(doc, "rules_dir", str, str(d.rules_dir))
    rules_dir = Path(rules_dir_raw)
    if not rules_dir.is_absolute():
        rules_dir = (base_dir / rules_dir).resolve()

    ns = r.section(doc, "numbers", {"strip_prefixes", "neighbour_digits"})
    strip_raw = ns.get("strip_prefixes") or []
    strip: list[str] = []
    if not isinstance(strip_raw, list):
        problems.append(f"{ns.where('strip_prefixes')}: strip_prefixes must be a list")
    else:
        for p in strip_raw:
            if not isinstance(p, str):
                problems.append(f"{ns.where('strip_prefixes')}: technical prefix {p!r} must be "
                                "quoted (\"00\"): YAML reads 00 as the number 0")
            elif not (p.isascii() and p.isdigit()):
                problems.append(f"{ns.where('strip_prefixes')}: technical prefix '{p}' must be "
                                "digits only")
            else:
                strip.append(str(p))
    nd_raw = ns.get("neighbour_digits") or {}
    neighbour: dict[str, int] = {}
    if not isinstance(nd_raw, dict):
        problems.append(f"{ns.where('neighbour_digits')}: neighbour_digits must be a mapping")
    else:
        for country, digits in nd_raw.items():
            here = nd_raw.where(country) if isinstance(nd_raw, SourceDict) else ns.where()
            if country not in ("DEFAULT", "NANP") and country not in phonenumbers.SUPPORTED_REGIONS:
                problems.append(f"{here}: '{country}' is not an ISO country code")
            elif not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= 12:
                problems.append(f"{here}: neighbour_digits.{country} must be an "
                                f"integer from 1 to 12, got {digits!r}")
            else:
                neighbour[country] = digits

    ts = r.section(doc, "thresholds", {"challenge", "voicemail", "block"})
    td = d.thresholds
    thresholds = Thresholds(
        challenge=r.get(ts, "challenge", float, td.challenge),
        voicemail=r.get(ts, "voicemail", float, td.voicemail),
        block=r.get(ts, "block", float, td.block),
    )
    if not thresholds.challenge <= thresholds.voicemail <= thresholds.block:
        set_at = ", ".join(f"{k} {getattr(thresholds, k):g} at {ts.where(k)}"
                           for k in ("challenge", "voicemail", "block") if k in ts)
        problems.append(f"{ts.where()}: thresholds must satisfy challenge <= voicemail <= block"
                        f" ({set_at})")

    ps = r.section(doc, "reputation", set(Reputation.__dataclass_fields__))
    pd = d.reputation
    reputation = Reputation(
        half_life_days=r.get(ps, "half_life_days", float, pd.half_life_days,
                             _positive("half_life_days")),
        report_weight=r.get(ps, "report_weight", float, pd.report_weight),
        admin_report_weight=r.get(ps, "admin_report_weight", float, pd.admin_report_weight),
        challenge_fail_weight=r.get(ps, "challenge_fail_weight", float, pd.challenge_fail_weight),
        abandon_weight=r.get(ps, "abandon_weight", float, pd.abandon_weight),
        pass_weight=r.get(ps, "pass_weight", float, pd.pass_weight),
        record_ttl_days=r.get(ps, "record_ttl_days", int, pd.record_ttl_days,
                              _positive("record_ttl_days")),
        velocity_window_minutes=r.get(ps, "velocity_window_minutes", int,
                                      pd.velocity_window_minutes,
                                      _positive("velocity_window_minutes")),
        recent_calls_kept=r.get(ps, "recent_calls_kept", int, pd.recent_calls_kept,
                                _positive("recent_calls_kept")),
        recent_ttl_days=r.get(ps, "recent_ttl_days", int, pd.recent_ttl_days,
                              _positive("recent_ttl_days")),
        vote_window_days=r.get(ps, "vote_window_days", int, pd.vote_window_days,
                               _positive("vote_window_days")),
        reporter_rate_per_hour=r.get(ps, "reporter_rate_per_hour", int,
                                     pd.reporter_rate_per_hour,
                                     _positive("reporter_rate_per_hour")),
        weight_attestation_c=r.get(ps, "weight_attestation_c", float, pd.weight_attestation_c,
                                   _fraction("weight_attestation_c")),
        weight_failed_verification=r.get(ps, "weight_failed_verification", float,
                                         pd.weight_failed_verification,
                                         _fraction("weight_failed_verification")),
        spoofed_days=r.get(ps, "spoofed_days", int, pd.spoofed_days, _positive("spoofed_days")),
    )

    sts = r.section(doc, "storm", set(StormConfig.__dataclass_fields__))
    sdf = StormConfig()
    command_raw = sts.get("notify_command")
    command: tuple[str, ...] = ()
    if command_raw is not None:
        if not isinstance(command_raw, list) or not all(isinstance(c, str) for c in command_raw):
            problems.append(f"{sts.where('notify_command')}: notify_command is a list of "
                            "strings (program and arguments, no shell)")
        else:
            command = tuple(command_raw)
    storm = StormConfig(
        window_minutes=r.get(sts, "window_minutes", int, sdf.window_minutes,
                             _positive("window_minutes")),
        min_callers=r.get(sts, "min_callers", int, sdf.min_callers,
                          lambda v: None if v >= 2 else f"min_callers must be >= 2, got {v}"),
        factor=r.get(sts, "factor", float, sdf.factor,
                     lambda v: None if v >= 1 else f"factor must be >= 1, got {v}"),
        baseline_days=r.get(sts, "baseline_days", int, sdf.baseline_days,
                            _positive("baseline_days")),
        quiet_minutes=r.get(sts, "quiet_minutes", float, sdf.quiet_minutes,
                            _positive("quiet_minutes")),
        max_hours=r.get(sts, "max_hours", int, sdf.max_hours, _positive("max_hours")),
        press1=r.get(sts, "press1", str, sdf.press1, _one_of("press1", ("allow", "voicemail"))),
        evidence_days=r.get(sts, "evidence_days", int, sdf.evidence_days,
                            _positive("evidence_days")),
        notify_command=command,
        notify_ami=r.get(sts, "notify_ami", str, "",
                         lambda v: None if not v or re.fullmatch(r"ami://[^:@/]+:[^@/]+@[^:/]+:\d+", v)
                         else "notify_ami must look like ami://user:secret@127.0.0.1:5038"),
    )

    les = r.section(doc, "learning", set(Learning.__dataclass_fields__))
    ldf = Learning()
    learning = Learning(
        greylist_minutes=r.get(les, "greylist_minutes", int, ldf.greylist_minutes,
                               lambda v: None if v >= 0 else "greylist_minutes must be >= 0"),
        neighbour_burst_window_minutes=r.get(les, "neighbour_burst_window_minutes", int,
                                             ldf.neighbour_burst_window_minutes,
                                             _positive("neighbour_burst_window_minutes")),
    )

    ems = r.section(doc, "emergency", set(Emergency.__dataclass_fields__))
    numbers_raw = ems.get("numbers")
    em_numbers: tuple[str, ...] = ()
    if numbers_raw is not None:
        if not isinstance(numbers_raw, list) or not all(
                isinstance(n, str) and n.isascii() and n.isdigit() for n in numbers_raw):
            problems.append(f"{ems.where('numbers')}: emergency numbers are a list of quoted "
                            "digit strings, e.g. [\"112\", \"15\"]")
        else:
            em_numbers = tuple(numbers_raw)
    emergency = Emergency(
        minutes=r.get(ems, "minutes", int, Emergency().minutes, _positive("minutes")),
        numbers=em_numbers,
    )

    cs = r.section(doc, "challenge", set(ChallengeConfig.__dataclass_fields__))
    cd = d.challenge
    challenge = ChallengeConfig(
        digits=r.get(cs, "digits", int, cd.digits,
                     lambda v: None if 1 <= v <= 8 else f"challenge digits must be 1-8, got {v}"),
        attempts=r.get(cs, "attempts", int, cd.attempts,
                       lambda v: None if 1 <= v <= 5 else f"attempts must be 1-5, got {v}"),
        timeout_ms=r.get(cs, "timeout_ms", int, cd.timeout_ms,
                         lambda v: None if 1000 <= v <= 30000
                         else f"timeout_ms must be 1000-30000, got {v}"),
        on_fail=r.get(cs, "on_fail", str, cd.on_fail,
                      _one_of("on_fail", ("voicemail", "block", "allow"))),
        trust_days=r.get(cs, "trust_days", int, cd.trust_days, _positive("trust_days")),
        language=r.get(cs, "language", str, cd.language),
        sounds_dir=r.get(cs, "sounds_dir", str, cd.sounds_dir),
    )

    fs = r.section(doc, "features", set(Features.__dataclass_fields__))
    fd = Features()
    features = Features(
        report_window_minutes=r.get(fs, "report_window_minutes", int, fd.report_window_minutes,
                                    _positive("report_window_minutes")),
        contact_days=r.get(fs, "contact_days", int, fd.contact_days, _positive("contact_days")),
    )

    ss = r.section(doc, "server", set(ServerConfig.__dataclass_fields__))
    sd = ServerConfig()
    clients_raw = ss.get("allowed_clients")
    clients = sd.allowed_clients
    if clients_raw is not None:
        if not isinstance(clients_raw, list) or not all(_ip(str(c)) is None for c in clients_raw):
            problems.append(f"{ss.where('allowed_clients')}: allowed_clients must be a list of "
                            "IP addresses or networks (127.0.0.1, 10.0.0.0/8)")
        else:
            clients = tuple(str(c) for c in clients_raw)
    server = ServerConfig(
        bind=r.get(ss, "bind", str, sd.bind, _ip),
        port=r.get(ss, "port", int, sd.port,
                   lambda v: None if 1 <= v <= 65535 else f"port must be 1-65535, got {v}"),
        allowed_clients=clients,
        call_deadline_s=r.get(ss, "call_deadline_s", int, sd.call_deadline_s,
                              _positive("call_deadline_s")),
        workers=r.get(ss, "workers", int, sd.workers,
                      lambda v: None if 1 <= v <= 64 else f"workers must be 1-64, got {v}"),
    )

    spool_dir = r.get(doc, "spool_dir", str, "")
    if spool_dir:  # relative to the config's directory, like rules_dir
        spool_dir = str((base_dir / spool_dir).resolve())

    hs = r.section(doc, "holidays", {"country", "subdivision"})
    holidays_cfg = HolidayConfig(
        country=r.get(hs, "country", str, "", lambda v: None if not v else _region(v)),
        subdivision=r.get(hs, "subdivision", str, ""),
    )

    ls = r.section(doc, "logging", {"level", "target"})
    logging_cfg = LoggingConfig(
        level=r.get(ls, "level", str, "INFO", _one_of("logging level", _LOG_LEVELS)),
        target=r.get(ls, "target", str, "stderr"),
    )

    cfg = Config(
        redis=redis_cfg,
        region=region,
        timezone=timezone,
        language=language,
        lines=tuple(lines),
        rules_dir=rules_dir,
        strip_prefixes=tuple(strip),
        neighbour_digits=neighbour,
        thresholds=thresholds,
        reputation=reputation,
        challenge=challenge,
        holidays=holidays_cfg,
        features=features,
        server=server,
        storm=storm,
        learning=learning,
        emergency=emergency,
        pbx_id=r.get(doc, "pbx_id", str, "local",
                     lambda v: None if re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", v)
                     else f"pbx_id '{v}' must be lowercase letters, digits, '-' or '_'"),
        spool_dir=spool_dir,
        fail_mode=r.get(doc, "fail_mode", str, "open", _one_of("fail_mode", tuple(FAIL_MODES))),
        default_action=r.get(doc, "default_action", str, "allow",
                             _one_of("default_action", ACTIONS)),
        logging=logging_cfg,
        sources=sources,
    )
    if problems:
        raise ConfigError(problems)
    return cfg


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_PATH)
    return Path(env) if env else DEFAULT_PATH


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Load the main file (if present) and its callscreen.d overrides."""
    main = config_path(explicit)
    problems: list[str] = []
    doc = yamlsrc.empty(str(main))
    sources: list[str] = []
    files: list[Path] = []
    if main.exists():
        files.append(main)
    elif explicit:
        raise ConfigError([f"{main}: no such file"])
    overrides = main.parent / "callscreen.d"
    if overrides.is_dir():
        files.extend(sorted(overrides.glob("*.yaml")))
    for path in files:
        display = str(path)
        try:
            part = yamlsrc.load_file(path, display)
        except YamlError as exc:
            problems.append(str(exc))
            continue
        if part is None:
            continue
        if not isinstance(part, SourceDict):
            problems.append(f"{display}:1: the file must be a mapping of settings")
            continue
        doc = yamlsrc.merge(doc, part)
        sources.append(display)
    if problems:
        raise ConfigError(problems)
    return build(doc, main.parent, tuple(sources))


def load_text(text: str, filename: str = "<string>", base_dir: Path | None = None) -> Config:
    """Validate a single YAML text (tests, `config check` of a snippet)."""
    try:
        doc = yamlsrc.load_text(text, filename)
    except YamlError as exc:
        raise ConfigError([str(exc)]) from None
    if doc is None:
        doc = yamlsrc.empty(filename)
    if not isinstance(doc, SourceDict):
        raise ConfigError([f"{filename}:1: the file must be a mapping of settings"])
    return build(doc, base_dir or Path.cwd(), (filename,))


def as_dict(cfg: Config) -> dict[str, Any]:
    """The merged configuration as plain data (for `config check`)."""
    return {
        "redis": vars_of(cfg.redis),
        "region": cfg.region,
        "timezone": cfg.timezone,
        "language": cfg.language,
        "lines": [
            {"number": ln.did, "name": ln.name, "timezone": ln.timezone, "language": ln.language}
            for ln in cfg.lines
        ],
        "rules_dir": str(cfg.rules_dir),
        "numbers": {
            "strip_prefixes": list(cfg.strip_prefixes),
            "neighbour_digits": dict(cfg.neighbour_digits),
        },
        "thresholds": vars_of(cfg.thresholds),
        "reputation": vars_of(cfg.reputation),
        "challenge": vars_of(cfg.challenge),
        "holidays": vars_of(cfg.holidays),
        "features": vars_of(cfg.features),
        "server": {**vars_of(cfg.server), "allowed_clients": list(cfg.server.allowed_clients)},
        "storm": {**vars_of(cfg.storm), "notify_command": list(cfg.storm.notify_command)},
        "learning": vars_of(cfg.learning),
        "emergency": {"minutes": cfg.emergency.minutes, "numbers": list(cfg.emergency.numbers)},
        "pbx_id": cfg.pbx_id,
        "spool_dir": cfg.spool_dir,
        "fail_mode": cfg.fail_mode,
        "default_action": cfg.default_action,
        "logging": vars_of(cfg.logging),
    }


def vars_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}

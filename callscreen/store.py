"""The reputation store: the only module that talks to Redis.

Key schema (``P`` is ``redis.prefix``, default ``cs:``; ``E`` a normalised E.164 number such as
``+33199000001``; ``D`` one of our lines (DIDs), also E.164). Nothing else ever builds a key, and
``E``/``D`` are checked against ``^\\+[1-9][0-9]{1,14}$`` before use: raw caller input never
reaches a key.

===========================  ======  ==========================================================
key                          type    content / expiry
===========================  ======  ==========================================================
``P n:E``                    hash    reputation record: ``s`` score at time ``st`` (decays with
                                     ``reputation.half_life_days``), ``rep`` reports, ``rps``
                                     distinct reporters, ``c`` calls, ``p``/``f``/``a`` challenge
                                     passes/fails/abandons, ``fs``/``ls`` first/last seen (epoch
                                     s). TTL ``reputation.record_ttl_days``, renewed on each write.
``P n:E:r``                  set     who reported ``E`` (line DIDs or ``admin``): one vote each.
                                     Same TTL as the record.
``P allow`` / ``P block``    hash    global lists. Field = ``E`` (exact) or ``+digits*`` (prefix);
                                     value = ``expiry|label`` (expiry epoch s, 0 = never).
``P l:D:allow`` / ``:block`` hash    per-line lists, same format.
``P l:D:contacts``           hash    known contacts of line ``D``: ``E`` -> ``expiry|source``
                                     (source ``outbound`` or ``admin``). Key TTL = latest expiry.
``P l:D:trusted``            hash    callers who passed the challenge on ``D``: ``E`` ->
                                     ``expiry|challenge``. Key TTL = latest expiry.
``P l:D:recent``             list    last calls to ``D``, newest first: ``ts|E-or-anonymous|
                                     action|reason``; trimmed to ``recent_calls_kept``, TTL
                                     ``recent_ttl_days``.
``P v:E``                    zset    call velocity: one member per call to any line (score = ts);
                                     trimmed to ``velocity_window_minutes``, TTL the same.
===========================  ======  ==========================================================

A decision reads everything in ONE pipelined round trip (:meth:`Store.facts`). Writes that read
before they write (score decay, one vote per reporter) run as Lua scripts, so they are atomic.
Every Redis error or timeout on the call path becomes :class:`StoreUnavailable`; the caller then
decides by the fail mode. Connections use short timeouts and no retries.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from callscreen.config import Config, RedisConfig, Reputation
from callscreen.numbers import is_e164, prefixes_of

log = logging.getLogger(__name__)

LIST_KINDS = ("allow", "block")
CHALLENGE_OUTCOMES = ("pass", "fail", "abandon")
ADMIN = "admin"
_OUTCOME_FIELD = {"pass": "p", "fail": "f", "abandon": "a"}
_LABEL_MAX = 64


class StoreUnavailable(Exception):
    """Redis could not answer in time; the facts are unknown."""


class BadKey(ValueError):
    """Something that is not a normalised number was about to become a key."""


@dataclass(frozen=True, slots=True)
class Record:
    score: float = 0.0  # decayed to "now"
    reports: int = 0
    reporters: int = 0
    calls: int = 0
    passes: int = 0
    fails: int = 0
    abandons: int = 0
    first_seen: float | None = None
    last_seen: float | None = None

    @property
    def history(self) -> bool:
        """Has this number ever been seen or vouched for here?"""
        return self.calls > 0 or self.passes > 0


@dataclass(frozen=True, slots=True)
class StoreFacts:
    record: Record
    allow_global: str | None  # the matching entry ("+33199000001" or "+33162*"), or None
    allow_line: str | None
    block_global: str | None
    block_line: str | None
    contact: bool
    trusted: bool
    velocity: int  # calls from this number to any line within the velocity window

    @property
    def allowlisted(self) -> bool:
        return bool(self.allow_global or self.allow_line)

    @property
    def blocklisted(self) -> bool:
        return bool(self.block_global or self.block_line)


EMPTY_FACTS = StoreFacts(Record(), None, None, None, None, False, False, 0)


def decayed(score: float, since: float, now: float, half_life_s: float) -> float:
    if score == 0 or now <= since:
        return score
    return score * math.pow(0.5, (now - since) / half_life_s)


def sanitise_label(label: str) -> str:
    """Labels end up in lists and logs: printable, no separator, bounded."""
    clean = "".join(ch for ch in label if ch.isprintable() and ch != "|")
    return clean[:_LABEL_MAX]


def check_number(value: str) -> str:
    if not is_e164(value):
        raise BadKey(f"not a normalised E.164 number: {value[:40]!r}")
    return value


def check_entry(value: str) -> str:
    """A list entry: an exact E.164 number or an E.164 prefix followed by '*'."""
    if value.endswith("*"):
        body = value[:-1]
        if body.startswith("+") and body[1:].isdigit() and body[1:].isascii() and 1 <= len(
            body
        ) - 1 <= 15 and body[1] != "0":
            return value
        raise BadKey(f"not an E.164 prefix: {value[:40]!r}")
    return check_number(value)


def _parse_expiring(value: str | None, now: float) -> tuple[float, str] | None:
    """'expiry|label' -> (expiry, label) if still in force."""
    if value is None:
        return None
    expiry_text, _, label = value.partition("|")
    try:
        expiry = float(expiry_text)
    except ValueError:
        return None  # written by something else: ignore rather than trust
    if expiry and expiry <= now:
        return None
    return expiry, label


# Atomic read-modify-write of a reputation record: decay the score to now, apply a delta once per
# reporter (when one is given), bump a counter, refresh seen times and TTLs.
_EVENT_LUA = """
local rec, voters = KEYS[1], KEYS[2]
local now, half, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local field, voter, ttl = ARGV[4], ARGV[5], tonumber(ARGV[6])
local applied = 1
if voter ~= '' then
  applied = redis.call('SADD', voters, voter)
  redis.call('EXPIRE', voters, ttl)
  if applied == 1 then redis.call('HINCRBY', rec, 'rps', 1) end
end
local s = tonumber(redis.call('HGET', rec, 's') or '0')
local st = tonumber(redis.call('HGET', rec, 'st') or ARGV[1])
if now > st and s ~= 0 then s = s * 0.5 ^ ((now - st) / half) end
if applied == 1 then s = s + delta end
if s < 0 then s = 0 end
redis.call('HSET', rec, 's', string.format('%.4f', s), 'st', ARGV[1], 'ls', ARGV[1])
redis.call('HSETNX', rec, 'fs', ARGV[1])
if field ~= '' and applied == 1 then redis.call('HINCRBY', rec, field, 1) end
redis.call('EXPIRE', rec, ttl)
return {applied, string.format('%.4f', s)}
"""

# One incoming call: count it, index it for velocity, remember it as this line's latest caller.
_CALL_LUA = """
local rec, vel, recent = KEYS[1], KEYS[2], KEYS[3]
local now, ttl, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if rec ~= '' then
  redis.call('HINCRBY', rec, 'c', 1)
  redis.call('HSETNX', rec, 'fs', ARGV[1])
  redis.call('HSET', rec, 'ls', ARGV[1])
  redis.call('EXPIRE', rec, ttl)
  redis.call('ZADD', vel, now, ARGV[4])
  redis.call('ZREMRANGEBYSCORE', vel, '-inf', now - window)
  redis.call('EXPIRE', vel, window)
end
if recent ~= '' then
  redis.call('LPUSH', recent, ARGV[5])
  redis.call('LTRIM', recent, 0, tonumber(ARGV[6]) - 1)
  redis.call('EXPIRE', recent, tonumber(ARGV[7]))
end
return 1
"""

# Add an expiring member to a per-line hash and keep the key's TTL >= the latest expiry.
_EXPIRING_ADD_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
local current = redis.call('TTL', KEYS[1])
if ttl > 0 and (current == -1 or current < ttl) then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
"""


def client_from_config(cfg: Config) -> redis.Redis:
    """A pooled client with call-path timeouts and no retries (redis-py would retry 3x)."""
    rc = cfg.redis
    # Blocking pool: past max_connections a call waits (at most the connect timeout) for a free
    # connection instead of failing at once with MaxConnectionsError.
    pool = redis.BlockingConnectionPool.from_url(
        rc.url,
        max_connections=rc.max_connections,
        timeout=rc.connect_timeout_ms / 1000,
        socket_timeout=rc.socket_timeout_ms / 1000,
        socket_connect_timeout=rc.connect_timeout_ms / 1000,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=True,
    )
    return redis.Redis(connection_pool=pool)


class Store:
    def __init__(self, client: redis.Redis, prefix: str, reputation: Reputation):
        self.r = client
        self.redis_config: RedisConfig | None = None  # what the client was built from, if known
        self.p = prefix
        self.rep = reputation
        self.half_life_s = reputation.half_life_days * 86400
        self.record_ttl_s = reputation.record_ttl_days * 86400
        self.window_s = reputation.velocity_window_minutes * 60
        self._event = client.register_script(_EVENT_LUA)
        self._call = client.register_script(_CALL_LUA)
        self._expiring_add = client.register_script(_EXPIRING_ADD_LUA)

    @classmethod
    def from_config(cls, cfg: Config) -> Store:
        store = cls(client_from_config(cfg), cfg.redis.prefix, cfg.reputation)
        store.redis_config = cfg.redis
        return store

    # -- key builders: the only place key names exist ------------------------------------------
    def k_record(self, e164: str) -> str:
        return f"{self.p}n:{check_number(e164)}"

    def k_reporters(self, e164: str) -> str:
        return f"{self.p}n:{check_number(e164)}:r"

    def k_list(self, kind: str, line: str | None = None) -> str:
        if kind not in LIST_KINDS:
            raise ValueError(f"unknown list {kind!r}")
        if line is None:
            return f"{self.p}{kind}"
        return f"{self.p}l:{check_number(line)}:{kind}"

    def k_contacts(self, line: str) -> str:
        return f"{self.p}l:{check_number(line)}:contacts"

    def k_trusted(self, line: str) -> str:
        return f"{self.p}l:{check_number(line)}:trusted"

    def k_recent(self, line: str) -> str:
        return f"{self.p}l:{check_number(line)}:recent"

    def k_velocity(self, e164: str) -> str:
        return f"{self.p}v:{check_number(e164)}"

    # -- the call path ---------------------------------------------------------------------------
    def facts(self, e164: str | None, line: str | None, now: float) -> StoreFacts:
        """Everything Redis knows for one decision, in one round trip."""
        if e164 is None:
            return EMPTY_FACTS
        fields = [e164] + [p + "*" for p in reversed(prefixes_of(e164))]
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.k_record(e164))
        pipe.hmget(self.k_list("allow"), fields)
        pipe.hmget(self.k_list("block"), fields)
        pipe.zcount(self.k_velocity(e164), now - self.window_s, "+inf")
        if line is not None:
            pipe.hmget(self.k_list("allow", line), fields)
            pipe.hmget(self.k_list("block", line), fields)
            pipe.hget(self.k_contacts(line), e164)
            pipe.hget(self.k_trusted(line), e164)
        try:
            replies = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        rec_raw, allow_g, block_g, velocity = replies[:4]
        allow_l = block_l = None
        contact = trusted = False
        if line is not None:
            allow_l = _first_match(fields, replies[4], now)
            block_l = _first_match(fields, replies[5], now)
            contact = _parse_expiring(replies[6], now) is not None
            trusted = _parse_expiring(replies[7], now) is not None
        return StoreFacts(
            record=self._record(rec_raw, now),
            allow_global=_first_match(fields, allow_g, now),
            allow_line=allow_l,
            block_global=_first_match(fields, block_g, now),
            block_line=block_l,
            contact=contact,
            trusted=trusted,
            velocity=int(velocity),
        )

    def _record(self, raw: dict[str, str], now: float) -> Record:
        def num(name: str) -> float:
            try:
                return float(raw.get(name, 0))
            except ValueError:
                return 0.0

        def opt(name: str) -> float | None:
            return num(name) if name in raw else None

        since = opt("st") or now
        return Record(
            score=round(decayed(num("s"), since, now, self.half_life_s), 2),
            reports=int(num("rep")),
            reporters=int(num("rps")),
            calls=int(num("c")),
            passes=int(num("p")),
            fails=int(num("f")),
            abandons=int(num("a")),
            first_seen=opt("fs"),
            last_seen=opt("ls"),
        )

    def record_call(
        self, e164: str | None, line: str | None, now: float, action: str, reason: str
    ) -> None:
        """After a decision: count the call, velocity index, line's recent-call list."""
        entry = f"{int(now)}|{e164 or 'anonymous'}|{action}|{sanitise_label(reason)}"
        keys = [
            self.k_record(e164) if e164 else "",
            self.k_velocity(e164) if e164 else "",
            self.k_recent(line) if line else "",
        ]
        member = f"{now:.6f}:{line or '-'}:{os.urandom(3).hex()}"
        self._call(
            keys=keys,
            args=[now, self.record_ttl_s, self.window_s, member, entry,
                  self.rep.recent_calls_kept, self.rep.recent_ttl_days * 86400],
        )

    def report(self, e164: str, reporter: str, now: float, weight: float | None = None) -> bool:
        """One vote per reporter per number; returns False when this reporter already voted."""
        if reporter != ADMIN:
            check_number(reporter)
        if weight is None:
            weight = self.rep.admin_report_weight if reporter == ADMIN else self.rep.report_weight
        applied, _score = self._event(
            keys=[self.k_record(e164), self.k_reporters(e164)],
            args=[now, self.half_life_s, weight, "rep", reporter, self.record_ttl_s],
        )
        return bool(int(applied))

    def challenge_outcome(
        self, e164: str, line: str | None, outcome: str, now: float, trust_days: int
    ) -> None:
        if outcome not in CHALLENGE_OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        weight = {
            "pass": self.rep.pass_weight,
            "fail": self.rep.challenge_fail_weight,
            "abandon": self.rep.abandon_weight,
        }[outcome]
        self._event(
            keys=[self.k_record(e164), self.k_reporters(e164)],
            args=[now, self.half_life_s, weight, _OUTCOME_FIELD[outcome], "", self.record_ttl_s],
        )
        if outcome == "pass" and line is not None:
            ttl = trust_days * 86400
            self._expiring_add(
                keys=[self.k_trusted(line)], args=[e164, f"{now + ttl:.0f}|challenge", ttl]
            )

    def add_contact(
        self, line: str, e164: str, now: float, ttl_s: int, source: str = "outbound"
    ) -> None:
        check_number(e164)
        self._expiring_add(
            keys=[self.k_contacts(line)],
            args=[e164, f"{now + ttl_s:.0f}|{sanitise_label(source)}", ttl_s],
        )

    def last_caller(self, line: str) -> tuple[float, str, str, str] | None:
        """The newest entry of the line's recent calls: (ts, number, action, reason)."""
        entries = self.recent(line, 1)
        return entries[0] if entries else None

    def recent(self, line: str, count: int = 10) -> list[tuple[float, str, str, str]]:
        out = []
        for raw in self.r.lrange(self.k_recent(line), 0, count - 1):
            parts = str(raw).split("|", 3)
            if len(parts) == 4:
                try:
                    out.append((float(parts[0]), parts[1], parts[2], parts[3]))
                except ValueError:
                    continue
        return out

    # -- administration --------------------------------------------------------------------------
    def list_add(
        self, kind: str, entry: str, line: str | None, expires: float | None, label: str
    ) -> None:
        check_entry(entry)
        self.r.hset(self.k_list(kind, line), entry, f"{expires or 0:.0f}|{sanitise_label(label)}")

    def list_remove(self, kind: str, entry: str, line: str | None) -> bool:
        check_entry(entry)
        return bool(self.r.hdel(self.k_list(kind, line), entry))

    def list_entries(self, now: float) -> list[dict[str, Any]]:
        """Every list entry, global and per line; expired ones are purged on the way."""
        out: list[dict[str, Any]] = []
        keys = [(k, None) for k in (self.k_list("allow"), self.k_list("block"))]
        for key in self.r.scan_iter(match=f"{_glob(self.p)}l:*", count=500):
            parts = key[len(self.p):].split(":")
            if len(parts) == 3 and parts[2] in LIST_KINDS and is_e164(parts[1]):
                keys.append((key, parts[1]))
        for key, line in sorted(keys, key=lambda kl: kl[0]):
            kind = key.rsplit(":", 1)[-1] if line else key[len(self.p):]
            for entry, value in sorted(self.r.hgetall(key).items()):
                parsed = _parse_expiring(str(value), now)
                if parsed is None:
                    self.r.hdel(key, entry)
                    continue
                expiry, label = parsed
                out.append({"list": kind, "line": line, "entry": entry,
                            "expires": expiry or None, "label": label})
        return out

    def show(self, e164: str, line: str | None, now: float) -> dict[str, Any]:
        facts = self.facts(e164, line, now)
        raw = self.r.hgetall(self.k_record(e164))
        reporters = sorted(self.r.smembers(self.k_reporters(e164)))
        return {
            "number": e164,
            "record": {name: getattr(facts.record, name) for name in Record.__slots__},
            "record_ttl_s": self.r.ttl(self.k_record(e164)) if raw else None,
            "reporters": reporters,
            "allow": facts.allow_global, "block": facts.block_global,
            "line": line,
            "line_allow": facts.allow_line, "line_block": facts.block_line,
            "contact": facts.contact, "trusted": facts.trusted,
            "velocity": facts.velocity,
        }

    def forgive(self, e164: str) -> bool:
        """Reset a number's reputation (record, votes, velocity)."""
        return bool(self.r.delete(self.k_record(e164), self.k_reporters(e164),
                                  self.k_velocity(e164)))

    def stats(self) -> dict[str, int]:
        counts = {"numbers": 0, "lines": 0, "allow_entries": 0, "block_entries": 0}
        lines: set[str] = set()
        for key in self.r.scan_iter(match=f"{_glob(self.p)}*", count=1000):
            rest = key[len(self.p):]
            if rest.startswith("n:") and not rest.endswith(":r"):
                counts["numbers"] += 1
            elif rest.startswith("l:"):
                lines.add(rest.split(":")[1])
        counts["lines"] = len(lines)
        for entry in self.list_entries(time.time()):
            counts[f"{entry['list']}_entries"] += 1
        counts["used_memory"] = int(self.r.info("memory")["used_memory"])
        return counts

    # -- backup ----------------------------------------------------------------------------------
    def export(self) -> Iterator[dict[str, Any]]:
        """Every key under the prefix as JSON-able records (key without prefix, type, ttl, value)."""
        for key in self.r.scan_iter(match=f"{_glob(self.p)}*", count=1000):
            kind = self.r.type(key)
            ttl = self.r.pttl(key)
            value: Any
            if kind == "hash":
                value = self.r.hgetall(key)
            elif kind == "set":
                value = sorted(self.r.smembers(key))
            elif kind == "list":
                value = self.r.lrange(key, 0, -1)
            elif kind == "zset":
                pairs: list[Any] = self.r.zrange(key, 0, -1, withscores=True)
                value = [[member, score] for member, score in pairs]
            elif kind == "string":
                value = self.r.get(key)
            else:
                continue
            if value in (None, [], {}):
                continue
            yield {"key": key[len(self.p):], "type": kind,
                   "ttl_ms": ttl if ttl and ttl > 0 else None, "value": value}

    def import_records(self, records: Iterable[dict[str, Any]]) -> int:
        """Restore what export() wrote, replacing keys of the same name. Returns keys written.

        Every record is checked before the first write: a bad one raises and writes nothing."""
        records = list(records)
        for rec in records:
            check_record(rec)
        written = 0
        pipe = self.r.pipeline(transaction=False)
        for rec in records:
            key = self.p + check_key_suffix(str(rec["key"]))
            kind, value, ttl = rec["type"], rec["value"], rec.get("ttl_ms")
            pipe.delete(key)
            if kind == "hash":
                pipe.hset(key, mapping={str(k): str(v) for k, v in value.items()})
            elif kind == "set":
                pipe.sadd(key, *[str(v) for v in value])
            elif kind == "list":
                pipe.rpush(key, *[str(v) for v in value])
            elif kind == "zset":
                pipe.zadd(key, {str(m): float(s) for m, s in value})
            elif kind == "string":
                pipe.set(key, str(value))
            else:
                raise ValueError(f"unknown type {kind!r} for key {rec['key']!r}")
            if ttl:
                pipe.pexpire(key, int(ttl))
            written += 1
            if written % 500 == 0:
                pipe.execute()
        pipe.execute()
        return written


def _first_match(fields: list[str], values: list[str | None], now: float) -> str | None:
    """Fields are ordered exact number first, then longest prefix first."""
    for entry, value in zip(fields, values, strict=True):
        if _parse_expiring(value, now) is not None:
            return entry
    return None


def _glob(prefix: str) -> str:
    """Escape a key prefix for SCAN MATCH."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix)


def check_key_suffix(suffix: str) -> str:
    """An imported key must have one of our shapes, with numbers where numbers go."""
    parts = suffix.split(":")
    ok = False
    if suffix in LIST_KINDS:
        ok = True
    elif parts[0] in ("n", "v") and len(parts) in (2, 3) and is_e164(parts[1]):
        ok = len(parts) == 2 or (parts[0] == "n" and parts[2] == "r")
    elif parts[0] == "l" and len(parts) == 3 and is_e164(parts[1]):
        ok = parts[2] in ("allow", "block", "contacts", "trusted", "recent")
    if not ok:
        raise BadKey(f"not a callscreen key: {suffix[:60]!r}")
    return suffix


_VALUE_SHAPES = {"hash": dict, "set": list, "list": list, "zset": list, "string": str}


def check_record(rec: Any) -> None:
    """An export record: our key shape, a known type, and a non-empty value of that type."""
    if not isinstance(rec, dict) or not {"key", "type", "value"} <= set(rec):
        raise ValueError("needs key, type and value")
    check_key_suffix(str(rec["key"]))
    kind, value, ttl = rec["type"], rec["value"], rec.get("ttl_ms")
    if kind not in _VALUE_SHAPES:
        raise ValueError(f"unknown type {kind!r}")
    if not isinstance(value, _VALUE_SHAPES[kind]) or (kind != "string" and not value):
        raise ValueError(f"a {kind} needs a non-empty {_VALUE_SHAPES[kind].__name__} value")
    if kind == "zset" and not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[1], int | float) for p in value
    ):
        raise ValueError("a zset value is a list of [member, score]")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise ValueError(f"ttl_ms must be a positive integer or null, got {ttl!r}")


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))

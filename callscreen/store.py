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
                                     distinct reporters, ``rpb`` distinct PBXs among them, ``c``
                                     calls, ``p``/``f``/``a`` challenge passes/fails/abandons,
                                     ``fs``/``ls`` first/last seen, ``sp`` spoofed until (epoch s,
                                     integers); ``v:R`` -> time of reporter ``R``'s last counted
                                     vote (``pbx/D`` for a line, ``admin``): one vote per
                                     reporter per ``vote_window_days`` (``rpb`` counts the PBXs
                                     among them). One key per number (~235 B with one vote).
                                     TTL ``reputation.record_ttl_days``, renewed on each write.
``P i:XXXX``                 hash    imported complaint lists, bucketed: XXXX = 4 hex digits of
                                     crc32(E) (65,536 buckets: ~15 numbers each per million, a
                                     compact listpack up to ~8M numbers). Field = ``E``
                                     without ``+``; value = ``src@ts@weight`` per source, comma
                                     separated. One vote per source until ``record_ttl_days``;
                                     older entries are ignored when read and pruned when their
                                     number is imported again; the bucket's TTL is renewed by
                                     each import.
``P w:ID``                   string  a spooled write (callscreen/spool.py) applied: set in the
                                     same transaction as the write, so a replay applies it once;
                                     TTL 30 days.
``P rl:R``                   string  reports counted for reporter ``R`` this hour (rate limit);
                                     TTL 1 hour.
``P rlog:R``                 list    reporter ``R``'s counted votes, newest first:
                                     ``ts|E|weight`` (for ``callscreen reporter rollback``);
                                     a line keeps its last 10,000. (Imports need no log: their
                                     source is in the bucket entry.)
                                     TTL ``record_ttl_days``.
``P vl:E``                   zset    distinct lines ``E`` called (member = D, score = last ts)
                                     within the velocity window; TTL the window.
``P emergency``              string  set when one of our phones dialled an emergency number;
                                     while it exists every call rings. TTL ``emergency.minutes``.
``P l:D:vm``                 hash    callers sent to voicemail on ``D`` -> ts (greylist); TTL
                                     ``greylist.minutes``.
``P l:D:unk``                zset    distinct unknown callers of ``D`` (not contacts, not
                                     trusted, not allowlisted) -> last ts; storm detection
                                     window. ``P l:D:unkh`` hash hour -> distinct unknown
                                     callers that hour (the line's baseline), TTL
                                     ``storm.baseline_days``.
``P l:D:nb``                 zset    distinct neighbour-prefix callers of ``D`` -> ts (bursts).
``P l:D:storm``              hash    the line's callback storm while it lasts: ``started``,
                                     ``last``, ``forced``; TTL ``storm.quiet_minutes`` renewed by
                                     each unknown caller (a forced storm: ``storm.max_hours``).
``P l:D:storm:ev``           list    storm evidence, newest first: ``ts|E|heard|outcome``; TTL
                                     ``storm.evidence_days``. ``P l:D:storm:open`` marks a storm
                                     whose end was not yet announced.
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

import dataclasses
import json
import logging
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from callscreen.config import (
    Config,
    Learning,
    RedisConfig,
    Reputation,
    StormConfig,
    redis_url_parts,
)
from callscreen.numbers import is_e164, prefixes_of
from callscreen.spool import RetryLater, Spool

log = logging.getLogger(__name__)

LIST_KINDS = ("allow", "block")
CHALLENGE_OUTCOMES = ("pass", "fail", "abandon")
ADMIN = "admin"
_OUTCOME_FIELD = {"pass": "p", "fail": "f", "abandon": "a"}
_LABEL_MAX = 64
# Votes kept per line reporter for rollback (the hourly rate limit bounds a line far below).
REPORTER_LOG_CAP = 10_000
# Store methods whose writes are spooled when Redis is away (durable()), and how long the id
# of a replayed write is remembered (a replay is retried well within it).
SPOOLED_WRITES = frozenset({"record_call", "challenge_outcome", "add_contact"})
WRITE_ID_TTL_S = 30 * 86400
# Imported numbers per script call: one call per number cost more to pack than to run.
IMPORT_NUMBERS_PER_CALL = 100


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
    pbxs: int = 0  # distinct PBXs among the reporters
    spoofed: bool = False  # someone else is using this number (storm on our line, or admin)

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
    lines_called: int = 0  # distinct lines this number called within the velocity window
    emergency: bool = False  # an emergency call was made from this PBX recently: let all ring
    storm: bool = False  # the called line is in a callback storm
    recent_voicemail: bool = False  # sent to voicemail by reputation on this line lately
    neighbour_burst: int = 0  # distinct neighbour-prefix callers of this line in the window

    @property
    def allowlisted(self) -> bool:
        return bool(self.allow_global or self.allow_line)

    @property
    def blocklisted(self) -> bool:
        return bool(self.block_global or self.block_line)


EMPTY_FACTS = StoreFacts(Record(), None, None, None, None, False, False, 0)


class CircuitBreaker:
    """Stop waiting on a Redis that keeps failing: after `threshold` consecutive failures, refuse
    at once for `cooldown_s`, then let ONE trial through; its outcome closes or reopens."""

    def __init__(self, threshold: int = 3, cooldown_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold, self.cooldown_s, self.clock = threshold, cooldown_s, clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def allow(self) -> bool:
        with self._lock:
            if self.opened_at is None:
                return True
            if self.trial or self.clock() - self.opened_at < self.cooldown_s:
                return False
            self.trial = True  # half-open: this caller is the trial
            return True

    def success(self) -> None:
        with self._lock:
            if self.opened_at is not None:
                log.warning("Redis answers again: circuit closed")
            self.failures, self.opened_at, self.trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.trial or (self.opened_at is None and self.failures >= self.threshold):
                if self.opened_at is None:
                    log.warning("Redis failed %d times in a row: circuit open for %.1f s",
                                self.failures, self.cooldown_s)
                self.opened_at, self.trial = self.clock(), False


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


# Decay a record's score to now and add a delta (shared by the scripts below). Times and whole
# scores are written as integers: a listpack stores "1795891451" in 5 bytes, a float's text in 18.
_DECAY_ADD = """
local function int(t) return string.format('%d', t) end
local function decay_add(rec, now, half, delta)
  local s = tonumber(redis.call('HGET', rec, 's') or '0')
  local st = tonumber(redis.call('HGET', rec, 'st') or now)
  if now >= st then
    if s ~= 0 then s = s * 0.5 ^ ((now - st) / half) end
    st = now
  else
    -- An event stamped before the last update (a late write, another PBX's clock): add what is
    -- left of it at st, and keep the clock there so no hour is decayed twice.
    delta = delta * 0.5 ^ ((st - now) / half)
  end
  s = s + delta
  if s < 0 then s = 0 end
  local txt = s == math.floor(s) and int(s) or string.format('%.4f', s)
  redis.call('HSET', rec, 's', txt, 'st', int(st))
  return txt
end
"""

# A challenge outcome (or any unvoted event): decay, add, count, refresh.
_EVENT_LUA = _DECAY_ADD + """
local rec = KEYS[1]
local now, half, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local field, ttl = ARGV[4], tonumber(ARGV[5])
local score = decay_add(rec, now, half, delta)
redis.call('HSET', rec, 'ls', int(now))
redis.call('HSETNX', rec, 'fs', int(now))
if field ~= '' then redis.call('HINCRBY', rec, field, 1) end
redis.call('EXPIRE', rec, ttl)
return {1, score}
"""

# Does any line of this PBX vote on the record? Voters of a PBX are fields 'v:PBX/+E164', so the
# set of PBXs needs no fields of its own (a record rarely has more than a few voters).
_HAS_VOTER_OF = """
local function has_voter_of(rec, pbx)
  local mine = 'v:' .. pbx .. '/'
  for _, v in ipairs(redis.call('HKEYS', rec)) do
    if string.sub(v, 1, #mine) == mine then return true end
  end
  return false
end
"""

# A report: one vote per reporter per window, a per-reporter hourly rate limit, distinct PBXs,
# and a log of the reporter's counted votes (for rollback). Voters (v:R -> ts) are fields of
# the record itself: one key per number. Returns {counted, why-or-score}.
_REPORT_LUA = _DECAY_ADD + _HAS_VOTER_OF + """
local rec, rate, logk = KEYS[1], KEYS[2], KEYS[3]
local now, half, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local voter, ttl, window = 'v:' .. ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local pbx, limit, number, logcap = ARGV[7], tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local last = redis.call('HGET', rec, voter)
if last and now - tonumber(last) < window then return {0, 'repeat'} end
if limit > 0 then
  local n = redis.call('INCR', rate)
  if n == 1 then redis.call('EXPIRE', rate, 3600) end
  if n > limit then return {0, 'rate-limited'} end
end
if not last then
  redis.call('HINCRBY', rec, 'rps', 1)
  if pbx ~= '' and not has_voter_of(rec, pbx) then redis.call('HINCRBY', rec, 'rpb', 1) end
end
redis.call('HSET', rec, voter, int(now))
local score = decay_add(rec, now, half, delta)
redis.call('HSET', rec, 'ls', int(now))
redis.call('HSETNX', rec, 'fs', int(now))
redis.call('HINCRBY', rec, 'rep', 1)
redis.call('EXPIRE', rec, ttl)
if logk ~= '' then
  redis.call('LPUSH', logk, int(now) .. '|' .. number .. '|' .. ARGV[3])
  if logcap > 0 then redis.call('LTRIM', logk, 0, logcap - 1) end
  redis.call('EXPIRE', logk, ttl)
end
return {1, score}
"""

# Undo one logged vote: remove what is left of its weight after decay, forget the voter.
_ROLLBACK_LUA = _DECAY_ADD + _HAS_VOTER_OF + """
local rec = KEYS[1]
local now, half, ts, weight = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local voter = 'v:' .. ARGV[5]
if redis.call('EXISTS', rec) == 0 then return 0 end
local left = weight * 0.5 ^ ((now - ts) / half)
decay_add(rec, now, half, -left)
if redis.call('HDEL', rec, voter) == 1 then
  redis.call('HINCRBY', rec, 'rps', -1)
  local pbx = ARGV[6]
  if pbx ~= '' and not has_voter_of(rec, pbx) then redis.call('HINCRBY', rec, 'rpb', -1) end
end
local reports = tonumber(redis.call('HGET', rec, 'rep') or '0')
if reports > 0 then redis.call('HINCRBY', rec, 'rep', -1) end
return 1
"""

# One incoming call, after the decision: count it; velocity (calls and distinct lines); the
# line's recent calls; greylist; neighbour bursts; unknown callers and storm detection.
# Returns the storm transition for this line: 'started', 'ended' or ''.
_CALL_LUA = """
local rec, vel, recent, vl = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local unk, unkh, nb, storm = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local stormopen, vm, linerec = KEYS[9], KEYS[10], KEYS[11]
local now, ttl, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local line, number = ARGV[8], ARGV[9]
local unknown, neighbour, greylist = ARGV[10] == '1', ARGV[11] == '1', ARGV[12] == '1'
local swin, smin, sfactor = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local sbase, squiet, grey_s = tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
local nbwin, spoof_s, open_ttl = tonumber(ARGV[19]), tonumber(ARGV[20]), tonumber(ARGV[21])
if rec ~= '' then
  redis.call('HINCRBY', rec, 'c', 1)
  redis.call('HSETNX', rec, 'fs', string.format('%d', now))
  redis.call('HSET', rec, 'ls', string.format('%d', now))
  redis.call('EXPIRE', rec, ttl)
  redis.call('ZADD', vel, now, ARGV[4])
  redis.call('ZREMRANGEBYSCORE', vel, '-inf', now - window)
  redis.call('EXPIRE', vel, window)
  if line ~= '' then
    redis.call('ZADD', vl, now, line)
    redis.call('ZREMRANGEBYSCORE', vl, '-inf', now - window)
    redis.call('EXPIRE', vl, window)
  end
end
if recent ~= '' then
  redis.call('LPUSH', recent, ARGV[5])
  redis.call('LTRIM', recent, 0, tonumber(ARGV[6]) - 1)
  redis.call('EXPIRE', recent, tonumber(ARGV[7]))
end
if line == '' then return '' end
if greylist and number ~= '' and grey_s > 0 then
  redis.call('HSET', vm, number, ARGV[1])
  redis.call('EXPIRE', vm, grey_s)
end
if neighbour and number ~= '' then
  redis.call('ZADD', nb, now, number)
  redis.call('ZREMRANGEBYSCORE', nb, '-inf', now - nbwin)
  redis.call('EXPIRE', nb, nbwin)
end
local active = redis.call('EXISTS', storm) == 1
if not active and redis.call('EXISTS', stormopen) == 1 then
  redis.call('DEL', stormopen)
  redis.call('DEL', unk)
  return 'ended'
end
if not unknown or number == '' then return '' end
local hour = math.floor(now / 3600)
local prev = redis.call('ZSCORE', unk, number)
redis.call('ZADD', unk, now, number)
if not prev or math.floor(tonumber(prev) / 3600) ~= hour then
  redis.call('HINCRBY', unkh, hour, 1)
end
redis.call('ZREMRANGEBYSCORE', unk, '-inf', now - swin)
redis.call('EXPIRE', unk, swin)
redis.call('EXPIRE', unkh, sbase)
if active then
  redis.call('HSET', storm, 'last', ARGV[1])
  redis.call('HINCRBY', storm, 'callers', 1)
  if redis.call('HGET', storm, 'forced') ~= '1' then redis.call('EXPIRE', storm, squiet) end
  return ''
end
local count = redis.call('ZCARD', unk)
if count < smin then return '' end
-- The line's usual rate: distinct unknown callers per window over the baseline period, leaving
-- out the hours of the current window (they are what we are judging).
local total, recent_from = 0, hour - math.ceil(swin / 3600)
local buckets = redis.call('HGETALL', unkh)
for i = 1, #buckets, 2 do
  local h = tonumber(buckets[i])
  if h and h <= recent_from and h > hour - sbase / 3600 then total = total + tonumber(buckets[i + 1]) end
end
local usual = total / (sbase / 3600) * (swin / 3600)
if count < sfactor * usual then return '' end
redis.call('HSET', storm, 'started', ARGV[1], 'last', ARGV[1], 'forced', '0', 'callers', count)
redis.call('EXPIRE', storm, squiet)
redis.call('SET', stormopen, ARGV[1], 'EX', open_ttl)
redis.call('HSET', linerec, 'sp', string.format('%d', now + spoof_s))
redis.call('EXPIRE', linerec, math.max(ttl, spoof_s))
return 'started'
"""

# Add an expiring member to a per-line hash and keep the key's TTL >= the latest expiry.
# Imported numbers, many per call: KEYS[i] is the bucket of number ARGV[4 + i]. Each gets a vote
# of the source unless it already voted (entries past the TTL are pruned on the way). Returns how
# many were counted; the others were there already.
_IMPORT_LUA = """
local src, now, weight, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local vote = src .. '@' .. string.format('%d', now) .. '@' .. weight
local counted = 0
for i, key in ipairs(KEYS) do
  local field = ARGV[4 + i]
  local keep, already = {}, false
  local cur = redis.call('HGET', key, field)
  if cur then
    for item in string.gmatch(cur, '[^,]+') do
      local name, ts = string.match(item, '^([^@]+)@(%d+)@')
      if name and tonumber(ts) + ttl > now then
        if name == src then already = true end
        table.insert(keep, item)
      end
    end
  end
  if not already then
    table.insert(keep, vote)
    redis.call('HSET', key, field, table.concat(keep, ','))
    redis.call('EXPIRE', key, ttl)
    counted = counted + 1
  end
end
return counted
"""

# Remove one source from an import bucket. Returns the numbers it no longer votes for.
_IMPORT_ROLLBACK_LUA = """
local key, src = KEYS[1], ARGV[1]
local removed = 0
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local keep, hit = {}, false
  for item in string.gmatch(all[i + 1], '[^,]+') do
    if string.match(item, '^([^@]+)@') == src then hit = true else table.insert(keep, item) end
  end
  if hit then
    removed = removed + 1
    if #keep == 0 then redis.call('HDEL', key, all[i])
    else redis.call('HSET', key, all[i], table.concat(keep, ',')) end
  end
end
return removed
"""

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
    timeouts = {"socket_timeout": rc.socket_timeout_ms / 1000,
                "socket_connect_timeout": rc.connect_timeout_ms / 1000}
    if rc.sentinels:
        return _sentinel_client(rc, timeouts)
    # Blocking pool: past max_connections a call waits (at most the connect timeout) for a free
    # connection instead of failing at once with MaxConnectionsError.
    pool = redis.BlockingConnectionPool.from_url(
        rc.url,
        max_connections=rc.max_connections,
        timeout=rc.connect_timeout_ms / 1000,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        decode_responses=True,
        **timeouts,
        **_tls_options(rc),
    )
    return redis.Redis(connection_pool=pool)


def _tls_options(rc: RedisConfig) -> dict[str, Any]:
    """The CA and client certificate of a rediss:// url (none for redis:// or unix://)."""
    options: dict[str, Any] = {}
    if not rc.url.startswith("rediss://"):
        return options
    if rc.tls_ca_file:
        options["ssl_ca_certs"] = rc.tls_ca_file
    if rc.tls_cert_file:
        options["ssl_certfile"] = rc.tls_cert_file
        options["ssl_keyfile"] = rc.tls_key_file
    return options


def _sentinel_client(rc: RedisConfig, timeouts: dict[str, float]) -> redis.Redis:
    """The master of rc.sentinel_service, found through the sentinels. Each new connection asks
    them where the master is, so after a failover the next call reaches the new one (the calls
    in between are decided by fail_mode, as when Redis is down)."""
    from redis.sentinel import Sentinel

    # The url gives the database, user, password and TLS; the sentinels give host and port.
    options = {**redis_url_parts(rc.url), **_tls_options(rc)}
    options.update(timeouts, max_connections=rc.max_connections, retry=Retry(NoBackoff(), 0),
                   health_check_interval=0, decode_responses=True)
    sentinel = Sentinel(list(rc.sentinels), sentinel_kwargs=dict(timeouts),
                        socket_timeout=timeouts["socket_timeout"],
                        socket_connect_timeout=timeouts["socket_connect_timeout"])
    client: redis.Redis = sentinel.master_for(rc.sentinel_service, **options)
    return client


class Store:
    def __init__(self, client: redis.Redis, prefix: str, reputation: Reputation):
        self.r = client
        self.redis_config: RedisConfig | None = None  # what the client was built from, if known
        self.p = prefix
        self.rep = reputation
        self.half_life_s = reputation.half_life_days * 86400
        self.record_ttl_s = reputation.record_ttl_days * 86400
        self.window_s = reputation.velocity_window_minutes * 60
        self.vote_window_s = reputation.vote_window_days * 86400
        self.storm_cfg = StormConfig()
        self.learning = Learning()
        self.pbx_id = "local"
        self.breaker = CircuitBreaker()
        self.spool: Spool | None = None
        self._event = client.register_script(_EVENT_LUA)
        self._report = client.register_script(_REPORT_LUA)
        self._rollback = client.register_script(_ROLLBACK_LUA)
        self._call = client.register_script(_CALL_LUA)
        self._expiring_add = client.register_script(_EXPIRING_ADD_LUA)
        self._import = client.register_script(_IMPORT_LUA)
        self._import_rollback = client.register_script(_IMPORT_ROLLBACK_LUA)

    @classmethod
    def from_config(cls, cfg: Config, client: redis.Redis | None = None) -> Store:
        store = cls(client or client_from_config(cfg), cfg.redis.prefix, cfg.reputation)
        store.redis_config = cfg.redis
        store.breaker = CircuitBreaker(cfg.redis.breaker_failures,
                                       cfg.redis.breaker_cooldown_ms / 1000)
        store.storm_cfg = cfg.storm
        store.learning = cfg.learning
        store.pbx_id = cfg.pbx_id
        store.spool = Spool(cfg.spool_dir) if cfg.spool_dir else None
        return store

    # -- key builders: the only place key names exist ------------------------------------------
    def k_record(self, e164: str) -> str:
        return f"{self.p}n:{check_number(e164)}"

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

    def k_lines_called(self, e164: str) -> str:
        return f"{self.p}vl:{check_number(e164)}"

    def k_rate(self, reporter: str) -> str:
        return f"{self.p}rl:{check_reporter(reporter)}"

    def k_reporter_log(self, reporter: str) -> str:
        return f"{self.p}rlog:{check_reporter(reporter)}"

    def k_import(self, e164: str) -> str:
        return f"{self.p}i:{zlib.crc32(check_number(e164).encode()) & 0xFFFF:04x}"

    def k_emergency(self) -> str:
        return f"{self.p}emergency"

    def k_line(self, line: str, what: str) -> str:
        """Per-line keys: vm, unk, unkh, nb, storm, storm:ev, storm:open."""
        if what not in _LINE_KEYS:
            raise ValueError(f"unknown per-line key {what!r}")
        return f"{self.p}l:{check_number(line)}:{what}"

    # -- the call path ---------------------------------------------------------------------------
    def facts(self, e164: str | None, line: str | None, now: float) -> StoreFacts:
        """Everything Redis knows for one decision, in one round trip."""
        if e164 is None:
            return self._anonymous_facts(line)
        fields = [e164] + [p + "*" for p in reversed(prefixes_of(e164))]
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.k_record(e164))
        pipe.hmget(self.k_list("allow"), fields)
        pipe.hmget(self.k_list("block"), fields)
        pipe.zcount(self.k_velocity(e164), now - self.window_s, "+inf")
        pipe.zcount(self.k_lines_called(e164), now - self.window_s, "+inf")
        pipe.exists(self.k_emergency())
        if line is not None:
            pipe.hmget(self.k_list("allow", line), fields)
            pipe.hmget(self.k_list("block", line), fields)
            pipe.hget(self.k_contacts(line), e164)
            pipe.hget(self.k_trusted(line), e164)
            pipe.exists(self.k_line(line, "storm"))
            pipe.hget(self.k_line(line, "vm"), e164)
            pipe.zcount(self.k_line(line, "nb"),
                        now - self.learning.neighbour_burst_window_minutes * 60, "+inf")
        pipe.hget(self.k_import(e164), e164[1:])
        replies = self._guarded(pipe.execute)
        rec_raw, allow_g, block_g, velocity, lines_called, emergency = replies[:6]
        allow_l = block_l = None
        contact = trusted = storm = recent_vm = False
        burst = 0
        if line is not None:
            allow_l = _first_match(fields, replies[6], now)
            block_l = _first_match(fields, replies[7], now)
            contact = _parse_expiring(replies[8], now) is not None
            trusted = _parse_expiring(replies[9], now) is not None
            storm = bool(replies[10])
            grey_s = self.learning.greylist_minutes * 60
            recent_vm = bool(grey_s and replies[11] and _float(replies[11]) > now - grey_s)
            burst = int(replies[12])
        return StoreFacts(
            record=self._with_imports(self._record(rec_raw, now), replies[-1], now),
            allow_global=_first_match(fields, allow_g, now),
            allow_line=allow_l,
            block_global=_first_match(fields, block_g, now),
            block_line=block_l,
            contact=contact,
            trusted=trusted,
            velocity=int(velocity),
            lines_called=int(lines_called),
            emergency=bool(emergency),
            storm=storm,
            recent_voicemail=recent_vm,
            neighbour_burst=burst,
        )

    def _guarded(self, call: Callable[[], Any]) -> Any:
        """Run a call-path Redis operation through the circuit breaker."""
        if not self.breaker.allow():
            raise StoreUnavailable("circuit open: Redis failed repeatedly, cooling down")
        try:
            result = call()
        except redis.ResponseError as exc:
            self.breaker.success()  # Redis answered (foreign data, a script error): not down
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except (redis.RedisError, OSError) as exc:
            self.breaker.failure()
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self.breaker.success()
        return result

    def _anonymous_facts(self, line: str | None) -> StoreFacts:
        """No number, no number facts: only what concerns the PBX and the line."""
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(self.k_emergency())
        if line is not None:
            pipe.exists(self.k_line(line, "storm"))
        replies = self._guarded(pipe.execute)
        return dataclasses.replace(EMPTY_FACTS, emergency=bool(replies[0]),
                                   storm=bool(replies[1]) if line is not None else False)

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
            pbxs=int(num("rpb")),
            spoofed=num("sp") > now,
        )

    def _imports(self, value: str | None, now: float) -> list[tuple[str, float]]:
        """(source, weight left now) of an import bucket entry still within the record TTL.
        Read defensively: the value is data from Redis, maybe written by someone else."""
        out = []
        for item in (value or "").split(","):
            parts = item.split("@")
            if len(parts) != 3 or not parts[0]:
                continue
            ts, weight = _float(parts[1]), _float(parts[2])
            if ts + self.record_ttl_s > now:
                out.append((parts[0], decayed(weight, ts, now, self.half_life_s)))
        return out

    def _with_imports(self, record: Record, value: str | None, now: float) -> Record:
        """Each imported list counts as one more report and reporter, its weight decaying."""
        imported = self._imports(value, now)
        if not imported:
            return record
        return dataclasses.replace(
            record,
            score=round(record.score + sum(w for _, w in imported), 2),
            reports=record.reports + len(imported),
            reporters=record.reporters + len(imported),
        )

    def record_call(
        self, e164: str | None, line: str | None, now: float, action: str, reason: str,
        *, unknown: bool = False, neighbour: bool = False, attestation: str = "unknown",
        client: Any = None,
    ) -> str:
        """After a decision: count the call and index it (see _CALL_LUA).

        unknown: the caller is not a contact, trusted or allowlisted (storm detection).
        Returns the line's storm transition: 'started', 'ended' or ''.
        """
        entry = (f"{int(now)}|{e164 or 'anonymous'}|{action}|{sanitise_label(reason)}|"
                 f"{sanitise_label(attestation)[:8]}")
        greylist = action == "voicemail" and reason in ("reputation", "score")
        st = self.storm_cfg
        if line is not None:
            line_keys = [self.k_line(line, w) for w in ("unk", "unkh", "nb", "storm",
                                                         "storm:open", "vm")]
            line_keys.append(self.k_record(line))
        else:
            line_keys = [""] * 7
        keys = [
            self.k_record(e164) if e164 else "",
            self.k_velocity(e164) if e164 else "",
            self.k_recent(line) if line else "",
            self.k_lines_called(e164) if e164 else "",
            *line_keys,
        ]
        member = f"{now:.6f}:{line or '-'}:{os.urandom(3).hex()}"
        args: list[Any] = [
            now, self.record_ttl_s, self.window_s, member, entry,
            self.rep.recent_calls_kept, self.rep.recent_ttl_days * 86400,
            line or "", e164 or "", int(unknown), int(neighbour), int(greylist),
            st.window_minutes * 60, st.min_callers, st.factor, st.baseline_days * 86400,
            max(1, math.ceil(st.quiet_minutes * 60)), self.learning.greylist_minutes * 60,
            self.learning.neighbour_burst_window_minutes * 60,
            self.rep.spoofed_days * 86400, st.evidence_days * 86400,
        ]

        def run() -> Any:
            return self._call(keys=keys, args=args, client=client)

        # A spool replay queues on its own transaction, outside the breaker.
        result = run() if client is not None else self._guarded(run)
        return str(result or "")

    def report(self, e164: str, reporter: str, now: float, weight: float | None = None) -> bool:
        """A vote (see vote()); True when it counted."""
        return self.vote(e164, reporter, now, weight)[0]

    def vote(self, e164: str, reporter: str, now: float, weight: float | None = None,
             *, rate_limited: bool = True) -> tuple[bool, str]:
        """A vote: reporter is a line DID, ``admin`` or ``src:NAME`` (an import).

        Returns (counted, why-not-or-score): one vote per reporter per vote window, at most
        reporter_rate_per_hour votes an hour for a line.
        """
        voter, pbx = self.voter_of(reporter)
        if weight is None:
            weight = self.rep.admin_report_weight if reporter == ADMIN else self.rep.report_weight
        limit = self.rep.reporter_rate_per_hour if rate_limited and pbx else 0
        counted, detail = self._report(
            keys=[self.k_record(e164), self.k_rate(voter), self.k_reporter_log(voter)],
            args=[now, self.half_life_s, weight, voter, self.record_ttl_s, self.vote_window_s,
                  pbx, limit, e164, REPORTER_LOG_CAP],
        )
        return bool(int(counted)), str(detail)

    def voter_of(self, reporter: str) -> tuple[str, str]:
        """(voter id, pbx id): lines vote as 'pbx/+33...', admins and imports as themselves."""
        if reporter == ADMIN or reporter.startswith("src:"):
            return check_reporter(reporter), ""
        return f"{self.pbx_id}/{check_number(reporter)}", self.pbx_id

    def import_reports(self, numbers: Iterable[str], source: str, now: float, weight: float,
                       batch: int = 1000) -> tuple[int, int]:
        """Imported entries weigh like one report from `source` (idempotent: one vote each until
        the record TTL). Stored in the compact import buckets (``P i:XXXX``), many numbers per
        script call and about `batch` numbers per round trip; returns (counted, already_there)."""
        name = check_reporter(f"src:{source}")[4:]
        counted = total = sent = 0  # sent: numbers whose replies are in
        pipe = self.r.pipeline(transaction=False)
        head: list[str | int] = [name, int(now), f"{weight:g}", self.record_ttl_s]
        keys: list[str] = []
        fields: list[str | int] = []

        def call() -> None:
            self._import(keys=keys.copy(), args=head + fields, client=pipe)
            keys.clear()
            fields.clear()

        def flush() -> None:
            nonlocal counted
            counted += sum(int(n) for n in pipe.execute())

        for e164 in numbers:
            keys.append(self.k_import(e164))
            fields.append(e164[1:])
            total += 1
            if len(keys) == IMPORT_NUMBERS_PER_CALL:
                call()
                if total - sent >= batch:
                    flush()
                    sent = total
        if keys:
            call()
        flush()
        return counted, total - counted

    def _rollback_import(self, source: str) -> int:
        removed = 0
        pipe = self.r.pipeline(transaction=False)
        for key in self.r.scan_iter(match=f"{_glob(self.p)}i:*", count=1000):
            self._import_rollback(keys=[key], args=[source], client=pipe)
            if len(pipe) >= 500:
                removed += sum(int(n) for n in pipe.execute())
        if len(pipe):
            removed += sum(int(n) for n in pipe.execute())
        return removed

    def reporter_rollback(self, reporter: str, now: float) -> int:
        """Undo every logged vote of a reporter (a line, 'admin' or 'src:NAME')."""
        voter, pbx = self.voter_of(reporter)
        log_key = self.k_reporter_log(voter)
        undone = self._rollback_import(voter[4:]) if voter.startswith("src:") else 0
        for raw in self.r.lrange(log_key, 0, -1):
            parts = str(raw).split("|")
            if len(parts) != 3 or not is_e164(parts[1]):
                continue
            try:
                ts, weight = float(parts[0]), float(parts[2])
            except ValueError:
                continue
            undone += int(self._rollback(
                keys=[self.k_record(parts[1])],
                args=[now, self.half_life_s, ts, weight, voter, pbx]))
        self.r.delete(log_key)
        return undone

    def challenge_outcome(
        self, e164: str, line: str | None, outcome: str, now: float, trust_days: int,
        client: Any = None,
    ) -> None:
        if outcome not in CHALLENGE_OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        weight = {
            "pass": self.rep.pass_weight,
            "fail": self.rep.challenge_fail_weight,
            "abandon": self.rep.abandon_weight,
        }[outcome]
        self._event(
            keys=[self.k_record(e164)],
            args=[now, self.half_life_s, weight, _OUTCOME_FIELD[outcome], self.record_ttl_s],
            client=client,
        )
        if outcome == "pass" and line is not None:
            ttl = trust_days * 86400
            self._expiring_add(
                keys=[self.k_trusted(line)], args=[e164, f"{now + ttl:.0f}|challenge", ttl],
                client=client,
            )

    def add_contact(
        self, line: str, e164: str, now: float, ttl_s: int, source: str = "outbound",
        client: Any = None,
    ) -> None:
        check_number(e164)
        self._expiring_add(
            keys=[self.k_contacts(line)],
            args=[e164, f"{now + ttl_s:.0f}|{sanitise_label(source)}", ttl_s],
            client=client,
        )

    # -- writes that must not be lost ----------------------------------------------------------
    def durable(self, op: str, **args: Any) -> Any:
        """Run one of SPOOLED_WRITES; when Redis cannot take it and a spool is configured, keep
        it there for replay (returns None) instead of raising."""
        if op not in SPOOLED_WRITES:
            raise ValueError(f"not a spooled write: {op!r}")
        try:
            return getattr(self, op)(**args)
        except (StoreUnavailable, redis.RedisError) as exc:
            # Only what may succeed later: Redis refusing the write itself (a wrong type, a
            # script error) would refuse it again.
            refused = isinstance(exc, redis.ResponseError) or isinstance(
                exc.__cause__, redis.ResponseError)
            if refused or self.spool is None or not self.spool.add(op, args):
                raise
            log.warning("%s spooled for replay: %s", op, exc)
            return None

    def apply_once(self, write_id: str, op: str, args: dict[str, Any]) -> bool:
        """Apply a spooled write unless its id was applied already, atomically: the write and
        the id marker go in one MULTI, under WATCH of the marker. False: applied before."""
        if op not in SPOOLED_WRITES or not re.fullmatch(r"[0-9a-f]{32}", write_id):
            raise ValueError(f"not a spooled write: {op!r} {write_id[:40]!r}")
        marker = f"{self.p}w:{write_id}"
        try:
            with self.r.pipeline(transaction=True) as pipe:
                pipe.watch(marker)  # type: ignore[no-untyped-call]
                if pipe.exists(marker):
                    return False
                pipe.multi()
                getattr(self, op)(**args, client=pipe)
                pipe.set(marker, 1, ex=WRITE_ID_TTL_S)
                replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, redis.WatchError,
                StoreUnavailable) as exc:
            raise RetryLater(f"{type(exc).__name__}: {exc}") from exc
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors:
            # MULTI does not roll back: the marker must not claim a write that failed.
            self.r.delete(marker)
            raise errors[0]
        return True

    def replay_spool(self) -> tuple[int, int, int]:
        """(applied, already applied, left); (0, 0, 0) without a spool. Goes through the
        circuit breaker like a call: no replay while Redis is known down."""
        if self.spool is None or not self.spool.pending():
            return 0, 0, 0
        if not self.breaker.allow():
            return 0, 0, self.spool.pending()
        applied, already, left = self.spool.replay(self.apply_once)
        if left:
            self.breaker.failure()
        else:
            self.breaker.success()
        return applied, already, left

    def last_caller(self, line: str) -> tuple[float, str, str, str] | None:
        """The newest entry of the line's recent calls: (ts, number, action, reason)."""
        entries = self.recent(line, 1)
        return entries[0] if entries else None

    def recent(self, line: str, count: int = 10) -> list[tuple[float, str, str, str]]:
        out = []
        for raw in self.r.lrange(self.k_recent(line), 0, count - 1):
            parts = str(raw).split("|")
            if len(parts) >= 4:
                try:
                    out.append((float(parts[0]), parts[1], parts[2], parts[3]))
                except ValueError:
                    continue
        return out

    def recent_attestation(self, line: str, index: int = 0) -> str:
        """STIR/SHAKEN attestation recorded with a recent call ('unknown' if none)."""
        raw = self.r.lindex(self.k_recent(line), index)
        parts = str(raw).split("|") if raw else []
        return parts[4] if len(parts) >= 5 and parts[4] else "unknown"

    # -- storms, emergencies, spoofed numbers ---------------------------------------------------
    def storm_state(self, line: str) -> dict[str, str]:
        raw = self.r.hgetall(self.k_line(line, "storm"))
        state = {str(k): str(v) for k, v in raw.items()}
        if state:
            state["ttl_s"] = str(self.r.ttl(self.k_line(line, "storm")))
        return state

    def storm_start(self, line: str, now: float) -> None:
        """Force a storm (admin): lasts storm.max_hours unless stopped."""
        key = self.k_line(line, "storm")
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={"started": f"{now:.0f}", "last": f"{now:.0f}", "forced": "1",
                                "callers": 0})
        pipe.expire(key, self.storm_cfg.max_hours * 3600)
        pipe.set(self.k_line(line, "storm:open"), f"{now:.0f}",
                 ex=self.storm_cfg.evidence_days * 86400)
        pipe.execute()

    def storm_stop(self, line: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.k_line(line, "storm"))
        pipe.delete(self.k_line(line, "storm:open"))
        pipe.delete(self.k_line(line, "unk"))
        return bool(pipe.execute()[0])

    def storm_ended(self, line: str) -> bool:
        """True once, when a storm that was announced has expired (for the end notice)."""
        if self.r.exists(self.k_line(line, "storm")):
            return False
        if not self.r.delete(self.k_line(line, "storm:open")):
            return False
        self.r.delete(self.k_line(line, "unk"))  # its callers made the storm that ended
        return True

    def storm_evidence_add(self, line: str, e164: str | None, now: float, heard: str,
                           outcome: str) -> None:
        key = self.k_line(line, "storm:ev")
        entry = f"{now:.0f}|{e164 or 'anonymous'}|{sanitise_label(heard)}|{sanitise_label(outcome)}"
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(key, entry)
        pipe.ltrim(key, 0, 99999)
        pipe.expire(key, self.storm_cfg.evidence_days * 86400)
        pipe.execute()

    def storm_evidence(self, line: str) -> list[dict[str, str]]:
        out = []
        for raw in reversed(self.r.lrange(self.k_line(line, "storm:ev"), 0, -1)):
            parts = str(raw).split("|")
            if len(parts) == 4:
                out.append({"time": parts[0], "caller": parts[1], "heard": parts[2],
                            "outcome": parts[3]})
        return out

    def emergency_start(self, now: float, minutes: int, dialled: str) -> None:
        self.r.set(self.k_emergency(), f"{now:.0f}|{sanitise_label(dialled)[:8]}",
                   ex=minutes * 60)

    def set_spoofed(self, e164: str, until: float | None) -> None:
        """Flag (until a time) or clear (None) a number as used by someone else."""
        key = self.k_record(e164)
        if until is None:
            self.r.hdel(key, "sp")
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, "sp", f"{until:.0f}")
        pipe.expire(key, max(self.record_ttl_s, int(until - time.time())))
        pipe.execute()

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
        raw_import = self.r.hget(self.k_import(e164), e164[1:])
        imported = str(raw_import) if raw_import is not None else None
        reporters = sorted([str(k)[2:] for k in raw if str(k).startswith("v:")] + [
            f"src:{name}" for name, _ in self._imports(imported, now)])
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
            "lines_called": facts.lines_called,
        }

    def forgive(self, e164: str) -> bool:
        """Reset a number's reputation (record, votes, velocity)."""
        imported = self.r.hdel(self.k_import(e164), e164[1:])
        return bool(self.r.delete(self.k_record(e164), self.k_velocity(e164),
                                  self.k_lines_called(e164)) + imported)

    def stats(self) -> dict[str, int]:
        counts = {"numbers": 0, "lines": 0, "allow_entries": 0, "block_entries": 0,
                  "imported_entries": 0}
        lines: set[str] = set()
        for key in self.r.scan_iter(match=f"{_glob(self.p)}*", count=1000):
            rest = key[len(self.p):]
            if rest.startswith("n:") and rest.count(":") == 1:
                counts["numbers"] += 1
            elif rest.startswith("l:"):
                lines.add(rest.split(":")[1])
            elif rest.startswith("i:"):
                counts["imported_entries"] += int(self.r.hlen(key))
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


_LINE_KEYS = ("vm", "unk", "unkh", "nb", "storm", "storm:ev", "storm:open")
_REPORTER = re.compile(
    r"\A(admin|src:[a-z0-9][a-z0-9_-]{0,31}|[a-z0-9][a-z0-9_-]{0,31}/\+[1-9][0-9]{1,14})\Z")


def check_reporter(value: str) -> str:
    if not _REPORTER.match(value):
        raise BadKey(f"not a reporter id: {value[:40]!r}")
    return value


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _first_match(fields: list[str], values: list[str | None], now: float) -> str | None:
    """Fields are ordered exact number first, then longest prefix first."""
    for entry, value in zip(fields, values, strict=True):
        if _parse_expiring(value, now) is not None:
            return entry
    return None


def _glob(prefix: str) -> str:
    """Escape a key prefix for SCAN MATCH."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix)


_E164_RE = r"\+[1-9][0-9]{1,14}"
_REPORTER_RE = r"(?:admin|src:[a-z0-9][a-z0-9_-]{0,31}|[a-z0-9][a-z0-9_-]{0,31}/" + _E164_RE + ")"
_LINE_SUFFIXES = "|".join(("allow", "block", "contacts", "trusted", "recent", *_LINE_KEYS))
_KEY_SHAPES = re.compile(
    r"\A(?:allow|block|emergency|i:[0-9a-f]{4}|w:[0-9a-f]{32}"
    rf"|n:{_E164_RE}|v:{_E164_RE}|vl:{_E164_RE}"
    rf"|l:{_E164_RE}:(?:{_LINE_SUFFIXES})"
    rf"|rl:{_REPORTER_RE}|rlog:{_REPORTER_RE})\Z"
)


def check_key_suffix(suffix: str) -> str:
    """An imported key must have one of our shapes, with numbers where numbers go."""
    if not _KEY_SHAPES.match(suffix):
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

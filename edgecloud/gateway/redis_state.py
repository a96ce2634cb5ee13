"""StateStore on Redis (redis-py's asyncio client): one server-side script per operation, so
every check-and-count is atomic across replicas, and the clock is Redis's own (TIME), so
replicas whose clocks differ still share one window.

Keys live under `{prefix}:`; key names are built inside the scripts, so this needs a single
Redis (or a primary behind Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from edgecloud.gateway.state import Begin, End, Reserved, StateUnavailable, Usage

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The logs of a key (`base`): `:rl` a sorted set of requests (member: the request's lease,
# score: its time), `:tl` one of token entries (member: lease:kind:tokens) with their sum in
# `:ts`, `:par` the parallel slots (score: when the lease expires). Entries older than W drop
# out before each check, so the limits are exact over any W.
_LOG_FNS = """
local function trim_tokens(base, now, W)
  local old = redis.call('ZRANGEBYSCORE', base .. ':tl', '-inf', now - W)
  if #old == 0 then return tonumber(redis.call('GET', base .. ':ts') or '0') end
  local gone = 0
  for _, m in ipairs(old) do gone = gone + tonumber(string.match(m, ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', base .. ':tl', '-inf', now - W)
  local left = redis.call('DECRBY', base .. ':ts', gone)
  if left < 0 then redis.call('SET', base .. ':ts', 0); left = 0 end
  return left
end
local function add_tokens(base, now, W, member, tokens)
  redis.call('ZADD', base .. ':tl', now, member)
  redis.call('INCRBY', base .. ':ts', tokens)
  redis.call('PEXPIRE', base .. ':tl', W)
  redis.call('PEXPIRE', base .. ':ts', W)
end
local function reset_ms(key, now, W)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return tonumber(last[2]) + W - now
end
"""

# admit(key base, rpm, tpm, max_parallel (-1: none), tokens, lease, lease_ms, window_ms)
_ADMIT_FN = _LOG_FNS + """
local function admit(now, base, rpm, tpm, maxpar, tokens, lease, lease_ms, W)
  local rl = base .. ':rl'
  local nreq, ntok, par = 0, 0, 0
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', rl, '-inf', now - W)
    nreq = redis.call('ZCARD', rl)
  end
  if tpm >= 0 then ntok = trim_tokens(base, now, W) end
  if maxpar >= 0 then
    redis.call('ZREMRANGEBYSCORE', base .. ':par', '-inf', now)
    par = redis.call('ZCARD', base .. ':par')
  end
  local limited, wait = '', 0
  if rpm >= 0 and nreq + 1 > rpm then
    limited = 'requests'
    if rpm < 1 then wait = W else
      -- the (nreq - rpm + 1)-th oldest must drop out
      local e = redis.call('ZRANGE', rl, nreq - rpm, nreq - rpm, 'WITHSCORES')
      wait = tonumber(e[2]) + W - now
    end
  elseif tpm >= 0 and ntok + tokens > tpm then
    limited = 'tokens'
    wait = W
    if tokens <= tpm then
      local left = ntok
      local entries = redis.call('ZRANGE', base .. ':tl', 0, 999, 'WITHSCORES')
      for j = 1, #entries, 2 do
        left = left - tonumber(string.match(entries[j], ':(%d+)$'))
        if left + tokens <= tpm then wait = tonumber(entries[j + 1]) + W - now; break end
      end
    end
  elseif maxpar >= 0 and par + 1 > maxpar then
    limited, wait = 'parallel', 1000
  else
    if rpm >= 0 then
      redis.call('ZADD', rl, now, lease)
      redis.call('PEXPIRE', rl, W)
      nreq = nreq + 1
    end
    if tpm >= 0 then
      add_tokens(base, now, W, lease .. ':a:' .. tokens, tokens)
      ntok = ntok + tokens
    end
    if maxpar >= 0 then
      redis.call('ZADD', base .. ':par', now + lease_ms, lease)
      redis.call('PEXPIRE', base .. ':par', lease_ms)
      par = par + 1
    end
  end
  if limited == '' then
    -- just added with the time now: the log is empty again W from now (if it has entries)
    return {limited, nreq, ntok, nreq > 0 and W or 0, ntok > 0 and W or 0, wait, par}
  end
  return {limited, nreq, ntok, reset_ms(rl, now, W), reset_ms(base .. ':tl', now, W), wait, par}
end
"""

# KEYS[1] key base. ARGV: rpm, tpm, max_parallel (-1: none), tokens, lease, lease_ms, window_ms
_ADMIT = _NOW + _ADMIT_FN + """
return admit(now, KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
             tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]))
"""

# KEYS[1] key base. ARGV: lease, tokens (the answer's: 0 for a key without tpm), window_ms
_RELEASE = _NOW + _LOG_FNS + """
local base, lease, tokens, W = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREM', base .. ':par', lease)
if tokens > 0 then add_tokens(base, now, W, lease .. ':e:' .. tokens, tokens) end
return 0
"""

# Per scope and month: KEYS[i] is the base; `:s` a hash {spent, reserved}, `:z` reservation
# expiries, `:a` reservation amounts. Expired reservations are dropped before each check.
_PURGE = """
local function purge(b, now)
  local old = redis.call('ZRANGEBYSCORE', b .. ':z', '-inf', now)
  for _, id in ipairs(old) do
    local amt = redis.call('HGET', b .. ':a', id)
    if amt then redis.call('HINCRBYFLOAT', b .. ':s', 'reserved', -tonumber(amt)) end
    redis.call('HDEL', b .. ':a', id)
    redis.call('ZREM', b .. ':z', id)
  end
end
local function total(b)
  local v = redis.call('HMGET', b .. ':s', 'spent', 'reserved')
  return tonumber(v[1] or '0') + math.max(tonumber(v[2] or '0'), 0)
end
local KEEP_MS = 40 * 86400 * 1000
"""

# reserve(now, bases, caps (-1: none), amount, rid, lease_ms) -> {refused index or 0, totals}
_RESERVE_FN = """
local function reserve(now, bases, caps, amount, rid, lease_ms)
  local out, totals = {}, {}
  for i, b in ipairs(bases) do
    purge(b, now)
    totals[i] = total(b)
    if caps[i] >= 0 and totals[i] + amount > caps[i] + 1e-9 then
      for j, b2 in ipairs(bases) do out[j] = tostring(total(b2)) end
      return {i, out}
    end
  end
  for i, b in ipairs(bases) do
    local before = totals[i]
    redis.call('HINCRBYFLOAT', b .. ':s', 'reserved', amount)
    redis.call('ZADD', b .. ':z', now + lease_ms, rid)
    redis.call('HSET', b .. ':a', rid, amount)
    for _, suffix in ipairs({':s', ':z', ':a'}) do redis.call('PEXPIRE', b .. suffix, KEEP_MS) end
    out[i] = tostring(before + amount)
  end
  return {0, out}
end
"""

# ARGV: amount, rid, lease_ms, then one cap per key (-1: none)
_RESERVE = _NOW + _PURGE + _RESERVE_FN + """
local caps = {}
for i = 1, #KEYS do caps[i] = tonumber(ARGV[3 + i]) end
return reserve(now, KEYS, caps, tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]))
"""

# One request's start. KEYS[1] the key base ('' for no rate limits), KEYS[2..] budget bases.
# ARGV: rpm, tpm, max_parallel, tokens, lease, lease_ms, window_ms, amount, caps...
_BEGIN = _NOW + _PURGE + _ADMIT_FN + _RESERVE_FN + """
local usage = 0  -- not nil: a nil would end the reply array
if KEYS[1] ~= '' then
  usage = admit(now, KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
                tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]))
  if usage[1] ~= '' or #KEYS == 1 then return {usage} end
end
local bases, caps = {}, {}
for i = 2, #KEYS do bases[i - 1] = KEYS[i]; caps[i - 1] = tonumber(ARGV[7 + i]) end
return {usage, reserve(now, bases, caps, tonumber(ARGV[8]), ARGV[5], tonumber(ARGV[6]))}
"""

# One request's end. KEYS as _BEGIN. ARGV: lease, tokens, window_ms, actual
_END = _NOW + _PURGE + _LOG_FNS + """
local lease, tokens, W, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if KEYS[1] ~= '' then
  redis.call('ZREM', KEYS[1] .. ':par', lease)
  if tokens > 0 then add_tokens(KEYS[1], now, W, lease .. ':e:' .. tokens, tokens) end
end
for i = 2, #KEYS do
  local b = KEYS[i]
  local amt = redis.call('HGET', b .. ':a', lease)
  if amt then
    redis.call('HINCRBYFLOAT', b .. ':s', 'reserved', -tonumber(amt))
    redis.call('HDEL', b .. ':a', lease)
    redis.call('ZREM', b .. ':z', lease)
  end
  if actual > 0 then redis.call('HINCRBYFLOAT', b .. ':s', 'spent', actual) end
  redis.call('PEXPIRE', b .. ':s', KEEP_MS)
end
return 0
"""

# ARGV: rid, actual
_SETTLE = _NOW + _PURGE + """
local rid, actual = ARGV[1], tonumber(ARGV[2])
for _, b in ipairs(KEYS) do
  local amt = redis.call('HGET', b .. ':a', rid)
  if amt then
    redis.call('HINCRBYFLOAT', b .. ':s', 'reserved', -tonumber(amt))
    redis.call('HDEL', b .. ':a', rid)
    redis.call('ZREM', b .. ':z', rid)
  end
  if actual > 0 then redis.call('HINCRBYFLOAT', b .. ':s', 'spent', actual) end
  redis.call('PEXPIRE', b .. ':s', KEEP_MS)
end
return 0
"""

_SPENT = _NOW + _PURGE + """
local out = {}
for i, b in ipairs(KEYS) do
  purge(b, now)
  out[i] = tostring(total(b))
end
return out
"""

# KEYS[1] fleet base. ARGV: replica, ttl_ms, then endpoint, count pairs
_HEARTBEAT = _NOW + """
local base, me, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', base .. ':replicas', '-inf', now)
redis.call('ZADD', base .. ':replicas', now + ttl, me)
redis.call('PEXPIRE', base .. ':replicas', ttl * 4)
local mine = base .. ':inflight:' .. me
redis.call('DEL', mine)
if #ARGV > 2 then
  redis.call('HSET', mine, unpack(ARGV, 3))
  redis.call('PEXPIRE', mine, ttl)
end
local live = redis.call('ZRANGE', base .. ':replicas', 0, -1)
local sums = {}
for _, r in ipairs(live) do
  if r ~= me then
    local kv = redis.call('HGETALL', base .. ':inflight:' .. r)
    for j = 1, #kv, 2 do sums[kv[j]] = (sums[kv[j]] or 0) + tonumber(kv[j + 1]) end
  end
end
local out = {#live}
for k, v in pairs(sums) do out[#out + 1] = k; out[#out + 1] = v end
return out
"""

_WINDOW_MS = 60_000


def _usage(r: list[Any]) -> Usage:
    return Usage(r[0] or None, *(int(x) for x in r[1:7]))


class _Script:
    """A script run by EVALSHA, loaded again (EVAL) after Redis restarted and forgot it."""

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        import hashlib

        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(self.source, len(keys), *keys, *args)


def _bulk(value: Any) -> bytes:
    b = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _command(*parts: Any) -> bytes:
    """One command in Redis's protocol (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


# One entry of a batch: the command, its caller's future, and the script to load and send it
# again with if Redis answers NOSCRIPT (None once it was).
_Entry = tuple[bytes, "asyncio.Future[Any]", "_Script | None"]


class _Channel:
    """The request path's own connection to Redis, one batch in flight at a time: the script
    calls made while a batch is out go together in the next one (one write, one read of all
    the replies). A request alone pays one round trip; sixteen at once share theirs, and the
    request ends share them with the starts.

    redis-py opens the connection (the URL, AUTH, TLS, the database) and hiredis parses the
    replies; what is left out is redis-py's per-command machinery (its pipeline, retry and
    per-read timeouts), which cost more CPU per request than the rest of the limiter: measured
    by benchmarks/gateway_state.py (b). A batch that fails or takes longer than the timeout
    fails every call in it, and the connection is opened afresh for the next."""

    def __init__(self, client: aioredis.Redis, timeout_s: float) -> None:
        self._pool = client.connection_pool
        self._timeout_s = timeout_s
        self._conn: Any = None
        self._parser: Any = None
        self._queue: list[_Entry] = []
        self._task: asyncio.Task[None] | None = None
        self._renew = False

    def renew(self) -> None:
        """Open a fresh connection for the next batch: the one held may be to a server that
        has since died (the store was down, and nothing here has noticed)."""
        self._renew = True

    def call(self, script: _Script, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Run `script` in the next batch; the future holds its reply or the error."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((_command(b"EVALSHA", script.sha, len(keys), *keys, *args), fut,
                            script))
        if self._task is None:
            self._task = asyncio.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    async with asyncio.timeout(self._timeout_s):
                        replies = await self._round_trip([c for c, _, _ in batch])
                except (RedisError, OSError, TimeoutError) as exc:
                    await self._drop()
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                again: list[_Entry] = []
                for (cmd, fut, script), reply in zip(batch, replies, strict=True):
                    if isinstance(reply, hiredis.ReplyError):
                        if script is not None and str(reply).startswith("NOSCRIPT"):
                            again.append((cmd, fut, None))  # Redis restarted and forgot it
                            continue
                        if not fut.done():
                            fut.set_exception(ResponseError(str(reply)))
                    elif not fut.done():
                        fut.set_result(reply)
                if again:
                    loads = {id(s): s for _, _, s in batch if s is not None}
                    self._queue[:0] = [
                        *(_load_entry(s) for s in loads.values()), *again]
        except BaseException:
            await self._drop()
            for _, fut, _ in self._queue:
                fut.cancel()
            self._queue = []
            raise
        finally:
            self._task = None

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        if self._renew:
            self._renew = False
            await self._drop()
        if self._conn is None:
            conn = self._pool.make_connection()
            await conn.connect()
            self._conn, self._parser = conn, hiredis.Reader(encoding="utf-8")
        reader, writer, parser = self._conn._reader, self._conn._writer, self._parser
        writer.write(b"".join(commands))
        await writer.drain()
        out: list[Any] = []
        while len(out) < len(commands):
            reply = parser.gets()
            if reply is False:
                data = await reader.read(1 << 16)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                parser.feed(data)
            else:
                out.append(reply)
        return out

    async def _drop(self) -> None:
        conn, self._conn, self._parser = self._conn, None, None
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._drop()


def _load_entry(script: _Script) -> _Entry:
    """SCRIPT LOAD, its reply waited for by nobody: the entries after it run the script."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return (_command(b"SCRIPT", b"LOAD", script.source), fut, None)


class RedisStore:
    """StateStore shared by every replica through one Redis."""

    def __init__(self, url: str, prefix: str, timeout_s: float = 0.25) -> None:
        self.prefix = prefix
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            # No retries: a failed call falls back at once (limits.py) rather than holding the
            # request through backoffs; the Limiter's ping brings the store back.
            retry=Retry(NoBackoff(), 0), health_check_interval=0, max_connections=256,
            decode_responses=True,
        )
        self._admit = _Script(self.client, _ADMIT)
        self._release = _Script(self.client, _RELEASE)
        self._reserve = _Script(self.client, _RESERVE)
        self._settle = _Script(self.client, _SETTLE)
        self._spent = _Script(self.client, _SPENT)
        self._heartbeat = _Script(self.client, _HEARTBEAT)
        self._begin = _Script(self.client, _BEGIN)
        self._end = _Script(self.client, _END)
        self._channel = _Channel(self.client, timeout_s)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:key:{key}"

    def _budget(self, scope: str, month: str) -> str:
        return f"{self.prefix}:budget:{scope}:{month}"

    async def _run(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys, args)
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis: {type(exc).__name__}") from None

    async def _channel_call(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._channel.call(script, keys, args)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StateUnavailable(f"redis: {type(exc).__name__}") from None

    async def admit(self, key: str, rpm: int, tpm: int, max_parallel: int, tokens: int,
                    lease: str, lease_s: float) -> Usage:
        r = await self._run(self._admit, [self._key(key)],
                            [rpm, tpm, max_parallel, tokens, lease, int(lease_s * 1000),
                             _WINDOW_MS])
        return _usage(r)

    async def begin(self, b: Begin) -> tuple[Usage | None, Reserved | None]:
        scopes = list(b.scopes) if b.amount > 0 else []
        if b.key is None and not scopes:
            return None, None
        keys = [self._key(b.key) if b.key is not None else ""]
        keys += [self._budget(s, b.month) for s in scopes]
        r = await self._channel_call(self._begin, keys, [
            b.rpm, b.tpm, b.max_parallel, b.tokens, b.lease, int(b.lease_s * 1000), _WINDOW_MS,
            repr(b.amount), *(repr(float(b.scopes[s])) for s in scopes)])
        usage = _usage(r[0]) if r[0] else None
        reserved = None
        if len(r) > 1:
            idx, totals = int(r[1][0]), r[1][1]
            reserved = Reserved(scopes[idx - 1] if idx else None,
                                {s: float(v) for s, v in zip(scopes, totals, strict=True)})
        return usage, reserved

    async def end_many(self, ends: list[End]) -> None:
        """Every End in the channel's next batch: one round trip, however many requests ended
        (and shared with the begins that go meanwhile)."""
        calls = []
        for e in ends:
            keys = [self._key(e.key) if e.key is not None else ""]
            keys += [self._budget(s, e.month) for s in e.scopes]
            calls.append(self._channel.call(
                self._end, keys, [e.lease, e.tokens, _WINDOW_MS, repr(e.actual)]))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise StateUnavailable(f"redis: {type(failed).__name__}")

    async def release(self, key: str, lease: str, tokens: int) -> None:
        await self._run(self._release, [self._key(key)], [lease, tokens, _WINDOW_MS])

    async def reserve(self, scopes: dict[str, float], amount: float, rid: str, month: str,
                      lease_s: float) -> Reserved:
        names = list(scopes)
        r = await self._run(self._reserve, [self._budget(s, month) for s in names],
                            [repr(amount), rid, int(lease_s * 1000),
                             *(repr(float(scopes[s])) for s in names)])
        totals = {s: float(v) for s, v in zip(names, r[1], strict=True)}
        return Reserved(names[int(r[0]) - 1] if int(r[0]) else None, totals)

    async def settle(self, scopes: list[str], rid: str, actual: float, month: str) -> None:
        await self._run(self._settle, [self._budget(s, month) for s in scopes],
                        [rid, repr(actual)])

    async def spent(self, scopes: list[str], month: str) -> dict[str, float]:
        r = await self._run(self._spent, [self._budget(s, month) for s in scopes], [])
        return {s: float(v) for s, v in zip(scopes, r, strict=True)}

    async def heartbeat(self, replica: str, in_flight: dict[str, int],
                        ttl_s: float) -> tuple[dict[str, int], int]:
        args: list[Any] = [replica, int(ttl_s * 1000)]
        for name, count in in_flight.items():
            args += [name, count]
        r = await self._run(self._heartbeat, [f"{self.prefix}:fleet"], args)
        others = {r[i]: int(r[i + 1]) for i in range(1, len(r) - 1, 2)}
        return others, int(r[0])

    async def ping(self) -> None:
        """Whether Redis answers, on a fresh connection: the pool's older ones may be to a
        server that has since died, and would fail the first calls after its return."""
        try:
            await self.client.connection_pool.disconnect()
            await self.client.ping()
            self._channel.renew()
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis: {type(exc).__name__}") from None

    async def close(self) -> None:
        await self._channel.close()
        await self.client.aclose()

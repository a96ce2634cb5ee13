"""StateStore on Redis (redis-py's asyncio client): one library of server-side functions
(redis_state.lua), so every check-and-count is atomic across replicas, and the clock is Redis's
own (TIME), so replicas whose clocks differ still share one window. Money is kept in integer
nano-USD there.

Keys live under `{prefix}:`; key names are built inside the functions, so this needs a single
Redis 7 or later (or a primary behind Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from edgecloud.gateway.state import NO_LIMIT, Begin, End, Reserved, StateUnavailable, Usage

LIBRARY = resources.files("edgecloud.gateway").joinpath("redis_state.lua").read_text("utf-8")
_FN = "edgecloud_state_3_"  # the library's version: redis_state.lua's first line names it
_NOT_LOADED = ("ERR Function not found", "Function not found")  # hiredis, redis-py


def _usage(r: list[Any]) -> Usage:
    return Usage(r[0] or None, *(int(x) for x in r[1:7]))


def _nano(usd: float) -> str:
    """USD as the integer nano-USD the functions count in."""
    return str(round(usd * 1e9))


def _caps(scopes: dict[str, float], names: list[str]) -> list[str]:
    return [str(NO_LIMIT) if scopes[s] == NO_LIMIT else _nano(scopes[s]) for s in names]


def _usd(totals: list[Any], names: list[str]) -> dict[str, float]:
    return {s: int(v) / 1e9 for s, v in zip(names, totals, strict=True)}


class _Function:
    """One of the library's functions, called through redis-py (the control path); the
    library is loaded (again, after a Redis restart forgot it) on the first call that needs it."""

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        self.client = client
        self.name = _FN + name

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.client.fcall(self.name, len(keys), *keys, *args)
        except ResponseError as exc:
            if str(exc).lower().startswith("unknown command"):
                raise StateUnavailable("redis: this server has no functions (FCALL): the "
                                       "gateway needs Redis 7 or later") from None
            if not str(exc).startswith(_NOT_LOADED):
                raise
            await self.client.function_load(LIBRARY, replace=True)
            return await self.client.fcall(self.name, len(keys), *keys, *args)


def _bulks(parts: tuple[Any, ...] | list[Any]) -> bytes:
    """Bulk strings in Redis's protocol, one per part."""
    enc = [p if isinstance(p, bytes) else str(p).encode() for p in parts]
    return b"".join([b"$%d\r\n%s\r\n" % (len(b), b) for b in enc])


def _command(*parts: Any) -> bytes:
    """One command in Redis's protocol (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + _bulks(parts)


# One entry of a batch: the command, its caller's future, and whether it may be sent once more
# after loading the library (Redis restarted and forgot it).
_Entry = tuple[bytes, "asyncio.Future[Any]", bool]


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
        # FCALL, the function and its keys, packed once (per function, key and month)
        self._heads: dict[tuple[str, ...], bytes] = {}

    def renew(self) -> None:
        """Open a fresh connection for the next batch: the one held may be to a server that
        has since died (the store was down, and nothing here has noticed)."""
        self._renew = True

    def call(self, fn: _Function, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Run `fn` in the next batch; the future holds its reply or the error."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        head_key = (fn.name, *keys)
        head = self._heads.get(head_key)
        if head is None:
            if len(self._heads) > 4096:
                self._heads.clear()
            head = self._heads[head_key] = _bulks([b"FCALL", fn.name, len(keys), *keys])
        n = 3 + len(keys) + len(args)
        self._queue.append((b"*%d\r\n%s%s" % (n, head, _bulks(args)), fut, True))
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
                for (cmd, fut, retry), reply in zip(batch, replies, strict=True):
                    if isinstance(reply, hiredis.ReplyError):
                        if retry and str(reply).startswith(_NOT_LOADED):
                            again.append((cmd, fut, False))  # Redis restarted and forgot it
                            continue
                        if not fut.done():
                            fut.set_exception(ResponseError(str(reply)))
                    elif not fut.done():
                        fut.set_result(reply)
                if again:
                    self._queue[:0] = [_load_entry(), *again]
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


def _load_entry() -> _Entry:
    """FUNCTION LOAD, its reply waited for by nobody: the entries after it call the library."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return (_command(b"FUNCTION", b"LOAD", b"REPLACE", LIBRARY), fut, False)


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
        self._admit = _Function(self.client, "admit")
        self._release = _Function(self.client, "release")
        self._reserve = _Function(self.client, "reserve")
        self._settle = _Function(self.client, "settle")
        self._spent = _Function(self.client, "spent")
        self._heartbeat = _Function(self.client, "heartbeat")
        self._begin = _Function(self.client, "begin")
        self._end = _Function(self.client, "end")
        self._channel = _Channel(self.client, timeout_s)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:key:{key}"

    def _budget(self, scope: str, month: str) -> str:
        """The hash of a scope's month (`:s`, where the first version kept its sums too)."""
        return f"{self.prefix}:budget:{scope}:{month}:s"

    async def _run(self, fn: _Function, keys: list[str], args: list[Any]) -> Any:
        try:
            return await fn(keys, args)
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis: {type(exc).__name__}") from None

    async def _channel_call(self, fn: _Function, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._channel.call(fn, keys, args)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StateUnavailable(f"redis: {type(exc).__name__}") from None

    async def admit(self, key: str, rpm: int, tpm: int, max_parallel: int, tokens: int,
                    lease: str, lease_s: float) -> Usage:
        r = await self._run(self._admit, [self._key(key)],
                            [rpm, tpm, max_parallel, tokens, lease, int(lease_s * 1000)])
        return _usage(r)

    async def begin(self, b: Begin) -> tuple[Usage | None, Reserved | None]:
        scopes = list(b.scopes) if b.amount > 0 else []
        if b.key is None and not scopes:
            return None, None
        keys = [self._key(b.key) if b.key is not None else ""]
        keys += [self._budget(s, b.month) for s in scopes]
        r = await self._channel_call(self._begin, keys, [
            b.rpm, b.tpm, b.max_parallel, b.tokens, b.lease, int(b.lease_s * 1000),
            _nano(b.amount), *_caps(b.scopes, scopes)])
        usage = _usage(r[0]) if r[0] else None
        reserved = None
        if len(r) > 1:
            idx, totals = int(r[1][0]), r[1][1]
            reserved = Reserved(scopes[idx - 1] if idx else None, _usd(totals, scopes))
        return usage, reserved

    async def end_many(self, ends: list[End]) -> None:
        """Every End in the channel's next batch: one round trip, however many requests ended
        (and shared with the begins that go meanwhile)."""
        calls = []
        for e in ends:
            keys = [self._key(e.key) if e.key is not None else ""]
            keys += [self._budget(s, e.month) for s in e.scopes]
            calls.append(self._channel.call(
                self._end, keys, [e.lease, e.tokens, _nano(e.actual)]))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise StateUnavailable(f"redis: {type(failed).__name__}")

    async def release(self, key: str, lease: str, tokens: int) -> None:
        await self._run(self._release, [self._key(key)], [lease, tokens])

    async def reserve(self, scopes: dict[str, float], amount: float, rid: str, month: str,
                      lease_s: float) -> Reserved:
        names = list(scopes)
        r = await self._run(self._reserve, [self._budget(s, month) for s in names],
                            [_nano(amount), rid, int(lease_s * 1000), *_caps(scopes, names)])
        return Reserved(names[int(r[0]) - 1] if int(r[0]) else None, _usd(r[1], names))

    async def settle(self, scopes: list[str], rid: str, actual: float, month: str) -> None:
        await self._run(self._settle, [self._budget(s, month) for s in scopes],
                        [rid, _nano(actual)])

    async def spent(self, scopes: list[str], month: str) -> dict[str, float]:
        r = await self._run(self._spent, [self._budget(s, month) for s in scopes], [])
        return _usd(r, scopes)

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

"""StateStore on Redis (redis-py's asyncio client): one library of server-side functions
(redis_state.lua), so every check-and-count is atomic across replicas, and the clock is Redis's
own (TIME), so replicas whose clocks differ still share one window. Money is kept in integer
nano-USD there.

Keys live under `{prefix}:`; key names are built inside the functions, so this needs a single
Redis 7 or later (or a primary behind Sentinel), not Redis Cluster. Request ends come in merged
batches (state.Ends), each numbered by the store that sends it; `{prefix}:ends:<writer>` keeps
the last number applied (40 days, as a budget's month), so a batch sent again is applied once.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from edgecloud.gateway.state import NO_LIMIT, Begin, Ends, Reserved, StateUnavailable, Usage

LIBRARY = resources.files("edgecloud.gateway").joinpath("redis_state.lua").read_text("utf-8")
_FN = "edgecloud_state_5_"  # the library's version: redis_state.lua's first line names it
_NOT_LOADED = ("ERR Function not found", "Function not found")  # hiredis, redis-py


def _usage(r: list[Any]) -> Usage:
    return Usage(r[0] or None, int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]))


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


def _bulk_texts(parts: list[str]) -> bytes:
    """Bulk strings for many str parts: formatted as one text where all of it is ASCII (a
    lease's or reservation's id: then a length in characters is one in bytes)."""
    text = "".join([f"${len(p)}\r\n{p}\r\n" for p in parts])
    return text.encode() if text.isascii() else _bulks(parts)


def _command(*parts: Any) -> bytes:
    """One command in Redis's protocol (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + _bulks(parts)


class _Channel:
    """The request path's own connection to Redis, pipelined: the calls made in one turn of the
    event loop go out in one write at its end, without waiting for the replies of earlier
    writes, and one reader hands each reply to its caller in order (Redis answers in order). A
    request alone pays one round trip; concurrent requests share writes and reads and never
    wait for each other's round trips.

    redis-py opens the connection (the URL, AUTH, TLS, the database); then the channel takes
    the transport over (_Replies) and hiredis parses the replies as they arrive. What is left
    out is redis-py's per-command machinery (its pipeline, retry and per-read timeouts) and
    asyncio's streams, which cost more CPU per request than the rest of the limiter: measured
    by benchmarks/gateway_state.py (b). A call without its reply after the timeout fails, with
    every call still waiting on that connection, and the next call opens a fresh one."""

    def __init__(self, client: aioredis.Redis, timeout_s: float,
                 before_write: Callable[[], None] | None = None) -> None:
        self._pool = client.connection_pool
        self._before_write = before_write
        self._timeout_s = timeout_s
        self._conn: Any = None  # redis-py's connection, while open
        self._transport: Any = None  # its transport, which _Replies reads
        self._connecting: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # (Python 3.11 asks getpid() for it)
        self._out: list[bytes] = []  # to write at the end of this turn of the loop
        self._flush_soon = False
        # Sent (or to send), waiting for a reply, in order: (command, future, when sent,
        # whether it may be sent again once the library is loaded)
        self._waiting: deque[tuple[bytes, asyncio.Future[Any], float, bool]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None

    def renew(self) -> None:
        """Open a fresh connection for the next call: the one held may be to a server that has
        since died (the store was down, and nothing here has noticed)."""
        if not self._waiting:
            self._drop(None)

    def send(self, cmd: bytes) -> asyncio.Future[Any]:
        """Run one FCALL, already in Redis's protocol; the future holds its reply or the error."""
        return self._send(cmd, True)

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def write_soon(self) -> None:
        """Write at the end of this turn of the loop: `before_write` sends what it holds then."""
        if not self._flush_soon:
            self._flush_soon = True
            self.loop().call_soon(self._flush)

    def _send(self, cmd: bytes, retry: bool,
              fut: asyncio.Future[Any] | None = None) -> asyncio.Future[Any]:
        loop = self.loop()
        if fut is None:
            fut = loop.create_future()
        self._waiting.append((cmd, fut, loop.time(), retry))
        self._out.append(cmd)
        if not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout_s, self._check)
        return fut

    def _flush(self) -> None:
        if self._before_write is not None:
            self._before_write()  # its calls join this write (_flush_soon: none scheduled)
        self._flush_soon = False
        if not self._out:
            return
        if self._conn is None:
            if self._connecting is None:
                self._connecting = asyncio.create_task(self._connect())
            return  # written once connected
        data, self._out = b"".join(self._out), []
        try:
            self._transport.write(data)
        except (OSError, RuntimeError) as exc:
            self._drop(RedisConnectionError(f"writing to Redis: {exc}"))

    async def _connect(self) -> None:
        conn = self._pool.make_connection()
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn.connect()
        except (RedisError, OSError, TimeoutError) as exc:
            self._connecting = None
            conn._close()
            self._drop(exc)
            return
        self._connecting = None
        # The handshake is done (its replies read): from now on what arrives goes straight to
        # hiredis, not through asyncio's stream and a task that reads it.
        replies = _Replies(self, conn)
        transport = conn._writer.transport
        transport.set_protocol(replies)
        self._conn, self._transport = conn, transport
        left = bytes(conn._reader._buffer)  # none expected; kept if any
        if left:
            replies.data_received(left)
        if self._out:
            self._flush()

    def lost(self, conn: Any, exc: BaseException) -> None:
        """The connection `conn` broke (or sent what is not Redis's protocol)."""
        if self._conn is conn:
            self._drop(exc)

    def _deliver(self, reply: Any) -> None:
        cmd, fut, _, retry = self._waiting.popleft()
        if isinstance(reply, hiredis.ReplyError):
            if retry and str(reply).startswith(_NOT_LOADED):
                # Redis restarted and forgot the library: load it, then send this again.
                self._send(_command(b"FUNCTION", b"LOAD", b"REPLACE", LIBRARY), False,
                           _ignored())
                self._send(cmd, False, fut)
            elif not fut.done():
                fut.set_exception(ResponseError(str(reply)))
        elif not fut.done():
            fut.set_result(reply)

    def _check(self) -> None:
        """The watchdog: the oldest call waiting longer than the timeout fails them all."""
        self._watchdog = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        late = loop.time() - self._waiting[0][2]
        if late >= self._timeout_s:
            self._drop(TimeoutError("Redis answered too late"))
        else:
            self._watchdog = loop.call_later(self._timeout_s - late, self._check)

    def _drop(self, exc: BaseException | None) -> None:
        """Close the connection; every call waiting on it fails with `exc`."""
        conn, self._conn, self._transport = self._conn, None, None
        if conn is not None:
            conn._close()  # redis-py's own silent close: the transport, without waiting
        waiting, self._waiting, self._out = self._waiting, deque(), []
        for _, fut, _, _ in waiting:
            if not fut.done():
                fut.set_exception(exc or RedisConnectionError("connection renewed"))

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        self._drop(RedisConnectionError("the store is closing"))
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


class _Replies:
    """The asyncio protocol of a channel's connection once open: hiredis parses the bytes as
    they arrive, and each reply goes to its caller (_Channel._deliver)."""

    def __init__(self, channel: _Channel, conn: Any) -> None:
        self.channel = channel
        self.conn = conn
        self.parser = hiredis.Reader(encoding="utf-8")

    def connection_made(self, transport: Any) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        deliver = self.channel._deliver
        try:
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                deliver(reply)
        except hiredis.HiredisError as exc:  # not Redis's protocol: nothing more can be read
            self.channel.lost(self.conn, RedisConnectionError(f"from Redis: {exc}"))

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: BaseException | None) -> None:
        self.channel.lost(self.conn, exc or RedisConnectionError("Redis closed the connection"))

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def _ignored() -> asyncio.Future[Any]:
    """A future whose outcome nobody waits for (FUNCTION LOAD's reply)."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


class _Shape:
    """What the begins of one key and budget share: the key's base (None: no rate limits),
    the budget bases, the limits (rpm, tpm, max_parallel, lease ms) and caps as the FCALL's
    arguments, and the budget scopes. Hashed by identity: the store makes one per shape."""

    __slots__ = ("key", "budgets", "limits", "caps", "scopes")

    def __init__(self, key: str | None, budgets: list[str], limits: list[str], caps: list[str],
                 scopes: list[str]) -> None:
        self.key = key
        self.budgets = budgets
        self.limits = limits
        self.caps = caps
        self.scopes = scopes


def _decided(shape: _Shape, r: list[Any], i: int) -> tuple[Usage | None, Reserved | None]:
    """One begin's part of a batch's flat reply, from r[i] (redis_state.lua, begins)."""
    usage = None
    if shape.key is not None:
        usage = Usage(r[i] or None, r[i + 1], r[i + 2], r[i + 3], r[i + 4], r[i + 5], r[i + 6])
        i += 7
    scopes = shape.scopes
    if not scopes or r[i] < 0:
        return usage, None
    idx = r[i]
    spent = {s: r[i + 1 + j] / 1e9 for j, s in enumerate(scopes)}
    return usage, Reserved(scopes[idx - 1] if idx else None, spent)


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
        self._begins_fn = _Function(self.client, "begins")
        self._ends_fn = _Function(self.client, "ends")
        self._channel = _Channel(self.client, timeout_s, self._send_begins)
        # The begins of this turn of the loop, sent as one FCALL just before the channel's next
        # write (_send_begins): (shape, the begin, the rest of its arguments, its future).
        self._pending: list[tuple[_Shape, Begin, str, asyncio.Future[Any]]] = []
        # What the begins of one key and budget share (key names, limits, caps), made once.
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self.abandoned: Callable[[Begin, bool, bool], None] | None = None
        # end_many numbers the batches it sends, and Redis keeps the last number it applied
        # under this writer's mark, so that a batch sent again after its answer was lost (a
        # timeout, a dropped connection) is not applied twice.
        self._mark = f"{prefix}:ends:{uuid.uuid4().hex}"
        self._seq = itertools.count(1)

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

    async def admit(self, key: str, rpm: int, tpm: int, max_parallel: int, tokens: int,
                    lease: str, lease_s: float) -> Usage:
        r = await self._run(self._admit, [self._key(key)],
                            [rpm, tpm, max_parallel, tokens, lease, int(lease_s * 1000)])
        return _usage(r)

    def _shape(self, b: Begin, reserve: bool) -> _Shape:
        key = (b.key, b.rpm, b.tpm, b.max_parallel, b.lease_s, b.month,
               tuple(b.scopes.items()) if reserve else ())
        got = self._shapes.get(key)
        if got is None:
            if len(self._shapes) >= 4096:
                self._shapes.clear()
            scopes = list(b.scopes) if reserve else []
            got = self._shapes[key] = _Shape(
                self._key(b.key) if b.key is not None else None,
                [self._budget(s, b.month) for s in scopes],
                [str(x) for x in (b.rpm, b.tpm, b.max_parallel, int(b.lease_s * 1000))],
                _caps(b.scopes, scopes), scopes)
        return got

    async def begin(self, b: Begin) -> tuple[Usage | None, Reserved | None]:
        reserve = b.amount > 0 and bool(b.scopes)
        if b.key is None and not reserve:
            return None, None
        shape = self._shape(b, reserve)
        fut: asyncio.Future[Any] = self._channel.loop().create_future()
        # The request's arguments after its shape's number: tokens, lease, amount
        # (lengths in bytes: the batch is encoded at once, and a lease may not be ASCII)
        amount = _nano(b.amount) if reserve else "0"
        tokens = str(b.tokens)
        lease = b.lease
        size = len(lease) if lease.isascii() else len(lease.encode())
        rest = f"${len(tokens)}\r\n{tokens}\r\n${size}\r\n{lease}\r\n${len(amount)}\r\n{amount}\r\n"
        self._pending.append((shape, b, rest, fut))
        if len(self._pending) == 1:
            self._channel.write_soon()
        try:
            r, i = await fut
        except asyncio.CancelledError:
            # Cancelled after the answer came, before this ran: give back what it took.
            # (Cancelled before: _deliver_begins does.)
            if fut.done() and not fut.cancelled():
                self._give_back(b, shape, *fut.result())
            raise
        except (TimeoutError, RedisError, OSError) as exc:
            self._give_back_unknown(b, shape)
            raise StateUnavailable(f"redis: {type(exc).__name__}") from None
        return _decided(shape, r, i)

    def _give_back_unknown(self, b: Begin, shape: _Shape) -> None:
        """A begin that failed without an answer: whether Redis applied it is unknown (it may
        have, or may yet: a timeout, a dropped connection), and its request goes on without
        it. Whatever it could have taken goes back once Redis answers again (freeing what is
        not held changes nothing)."""
        if self.abandoned is not None:
            self.abandoned(b, b.key is not None and b.max_parallel >= 0, bool(shape.scopes))

    def _give_back(self, b: Begin, shape: _Shape, r: list[Any], i: int) -> None:
        """A begin whose caller is gone: what it took (a slot, a reservation) goes back through
        `abandoned` (the Limiter queues its end), rather than held until its lease expires."""
        if self.abandoned is not None:
            usage, reserved = _decided(shape, r, i)
            self.abandoned(b, usage is not None and usage.limited is None and b.max_parallel >= 0,
                           reserved is not None and reserved.refused is None)

    def _send_begins(self) -> None:
        """The pending begins as one FCALL begins (redis_state.lua names its keys and args),
        each one's reply handed to its caller."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if any(fut.cancelled() for _, _, _, fut in pending):
            pending = [p for p in pending if not p[3].cancelled()]  # not sent: nothing taken
            if not pending:
                return
        keys: dict[str, int] = {}
        shapes: dict[_Shape, int] = {}
        head: list[str] = []
        body: list[str] = []
        for shape, _, rest, _ in pending:
            si = shapes.get(shape)
            if si is None:
                si = shapes[shape] = len(shapes) + 1
                ki = 0
                if shape.key is not None:
                    ki = keys.setdefault(shape.key, len(keys) + 1)
                head += [str(ki), *shape.limits, str(len(shape.budgets))]
                for name, cap in zip(shape.budgets, shape.caps, strict=True):
                    head += [str(keys.setdefault(name, len(keys) + 1)), cap]
            n = str(si)
            body.append(f"${len(n)}\r\n{n}\r\n{rest}")
        front = [b"FCALL", self._begins_fn.name, len(keys), *keys, len(shapes)]
        text = "".join([f"${len(p)}\r\n{p}\r\n" for p in head]) + "".join(body)
        cmd = b"*%d\r\n%s%s" % (len(front) + len(head) + 4 * len(pending), _bulks(front),
                                 text.encode())
        batch = self._channel.send(cmd)
        batch.add_done_callback(lambda f: self._deliver_begins(f, pending))

    def _deliver_begins(self, batch: asyncio.Future[Any],
                        pending: list[tuple[_Shape, Begin, str, asyncio.Future[Any]]]) -> None:
        """A batch's reply or error to each begin's future: the reply and where the begin's
        part of it starts (its size follows from its shape and its first values). A begin
        whose caller was cancelled meanwhile gives back what it took (all it could have, when
        the batch failed: whether Redis applied it is unknown)."""
        if batch.cancelled():
            exc: BaseException | None = RedisConnectionError("the store is closing")
        else:
            exc = batch.exception()
        reply: list[Any] = batch.result() if exc is None else []
        i = 0
        for shape, b, _, fut in pending:
            at = i
            if exc is None:
                try:
                    if shape.key is not None:
                        i += 7
                    if shape.scopes:
                        i += 1 if reply[i] < 0 else 1 + len(shape.scopes)
                    if i > len(reply):
                        raise IndexError(i)
                except (IndexError, TypeError):  # not what begins replies: fail the rest
                    exc = ResponseError("redis: an unexpected reply to begins")
            if exc is not None:
                if not fut.done():
                    fut.set_exception(exc)
                elif fut.cancelled():
                    self._give_back_unknown(b, shape)
            elif not fut.done():
                fut.set_result((reply, at))
            elif fut.cancelled():
                self._give_back(b, shape, reply, at)

    def _ends_command(self, batch: Ends) -> bytes:
        """FCALL ends for one batch (redis_state.lua names its keys and args)."""
        names = [*batch.leases, *(k for k in batch.tokens if k not in batch.leases)]
        keys = [self._mark]
        args: list[bytes] = [_bulks([batch.seq, len(names)])]
        nargs = 2
        for key in names:
            leases = batch.leases.get(key, [])
            keys.append(self._key(key))
            args += [_bulks([batch.tokens.get(key, 0), len(leases)]), _bulk_texts(leases)]
            nargs += 2 + len(leases)
        for (scope, month), actual in batch.spend.items():
            rids = batch.reservations.get((scope, month), [])
            keys.append(self._budget(scope, month))
            args += [_bulks([_nano(actual), len(rids)]), _bulk_texts([f"r:{r}" for r in rids])]
            nargs += 2 + len(rids)
        head = [b"FCALL", self._ends_fn.name, len(keys), *keys]
        return b"*%d\r\n%s%s" % (len(head) + nargs, _bulks(head), b"".join(args))

    async def end_many(self, batches: list[Ends]) -> None:
        """Every batch in the channel's next write: one round trip, shared with the begins that
        go meanwhile. A batch keeps its number until Redis answers it, so one sent again is
        applied at most once; Redis applies them in the order sent on one connection, so the
        batches already numbered go first, in order, then the new ones. A batch that Redis
        refused (an error reply: not applied) is numbered afresh when sent again."""
        send = self._channel.send
        sending = sorted(batches, key=lambda b: (b.seq == 0, b.seq))
        for batch in sending:
            if batch.seq == 0:
                batch.seq = next(self._seq)
        calls = [(batch, send(self._ends_command(batch))) for batch in sending]
        failed: BaseException | None = None
        try:
            for batch, call in calls:  # answered in order: by the last, all are
                try:
                    await call
                except ResponseError as exc:
                    batch.seq = 0
                    failed = failed or exc
                except Exception as exc:
                    failed = failed or exc
        except asyncio.CancelledError:
            for _, call in calls:
                if not call.cancel() and not call.cancelled():
                    call.exception()  # retrieved: no "never retrieved" warning
            raise
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
        pending, self._pending = self._pending, []
        for _, _, _, fut in pending:
            if not fut.done():
                fut.set_exception(RedisConnectionError("the store is closing"))
        await self._channel.close()
        await self.client.aclose()

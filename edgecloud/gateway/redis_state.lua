#!lua name=edgecloud_state_5
-- The gateway's shared state on Redis (redis_state.py): one library of functions, loaded once,
-- each one atomic. The clock is Redis's own (TIME), so replicas whose clocks differ share one
-- window. Key names are built here, so this needs one Redis (or a primary behind Sentinel), not
-- Redis Cluster. A change to what a function takes or keeps gets a new library name (the number
-- above and in redis_state.py), so replicas of two versions can share a Redis during a rollout.
--
-- Cost is what shapes this file: each redis.call costs about a microsecond on top of its own
-- work, HINCRBYFLOAT and PEXPIRE several, so money is kept in integer nano-USD and expiries are
-- refreshed at most once a second per key.

local W = 60000               -- the rate-limit window, ms
local REFRESH_MS = 1000       -- a key's expiries are refreshed at most this often
local KEEP_MS = 40 * 86400 * 1000  -- a budget month's hash outlives its month

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(x)
  return string.format('%d', x)
end

-- A key (`base`): its requests and tokens in 100 ms buckets. `:w` is a hash with `r<i>` and
-- `t<i>`, the requests and tokens of bucket i (the ms times i*B to (i+1)*B), their sums `rs`
-- and `ts`, and `x`/`xe`, when admit/release last refreshed the expiries; `:b` a sorted set of
-- the buckets in use (member and score i); `:par` the parallel slots (member: the request's
-- lease, score: when the lease expires). A bucket counts until all of it is older than W, so a
-- limit is never passed over any W, and a refused request waits at most one bucket longer than
-- with a log of every request; the state of a key is at most W / B buckets, whatever its rate.

local B = 100

local function bucket(now)
  return math.floor(now / B)
end

-- Drops the buckets wholly older than W from the sums; -> requests, tokens in the window.
local function trim(w, b, rs, ts, now)
  local cut = math.floor((now - W) / B) - 1
  local old = redis.call('ZRANGEBYSCORE', b, '-inf', cut)
  if #old == 0 then return rs, ts end
  local fields = {}
  for _, i in ipairs(old) do
    fields[#fields + 1] = 'r' .. i
    fields[#fields + 1] = 't' .. i
  end
  local v = redis.call('HMGET', w, unpack(fields))
  local dr, dt = 0, 0
  for j = 1, #v, 2 do
    dr = dr + tonumber(v[j] or '0')
    dt = dt + tonumber(v[j + 1] or '0')
  end
  redis.call('HDEL', w, unpack(fields))
  redis.call('ZREMRANGEBYSCORE', b, '-inf', cut)
  rs = redis.call('HINCRBY', w, 'rs', int(-dr))
  ts = redis.call('HINCRBY', w, 'ts', int(-dt))
  if rs < 0 then redis.call('HSET', w, 'rs', 0); rs = 0 end
  if ts < 0 then redis.call('HSET', w, 'ts', 0); ts = 0 end
  return rs, ts
end

-- Until `need` more of `kind` (r or t) fits under `limit` as the oldest buckets drop out.
local function wait_ms(w, b, kind, used, need, limit, now)
  if need > limit then return W end
  local ids = redis.call('ZRANGE', b, 0, -1)
  local fields = {}
  for j, i in ipairs(ids) do fields[j] = kind .. i end
  if #fields == 0 then return W end
  local v = redis.call('HMGET', w, unpack(fields))
  local left = used
  for j, i in ipairs(ids) do
    left = left - tonumber(v[j] or '0')
    if left + need <= limit then return (tonumber(i) + 1) * B + W - now end
  end
  return W
end

-- Until the window is empty again if nothing else comes (0: empty now).
local function reset_ms(b, now)
  local last = redis.call('ZRANGE', b, -1, -1)
  if #last == 0 then return 0 end
  return (tonumber(last[1]) + 1) * B + W - now
end

local function add(w, b, kind, amount, now)
  local i = bucket(now)
  if redis.call('HINCRBY', w, kind .. i, amount) == amount then
    redis.call('ZADD', b, i, i)  -- the bucket's first entry of this kind (ZADD again: no-op)
  end
  return redis.call('HINCRBY', w, kind .. 's', amount)
end

local function keep(keys, ttl, w, field, now)
  redis.call('HSET', w, field, now)  -- first: a key made by HSET would have no expiry
  for _, k in ipairs(keys) do redis.call('PEXPIRE', k, ttl) end
end

local function stale(mark, now)
  return not mark or now - tonumber(mark) >= REFRESH_MS
end

-- The answers' tokens, counted against tpm in the bucket of now.
local function count_tokens(now, base, tokens)
  if tokens > 0 then
    local w, b = base .. ':w', base .. ':b'
    add(w, b, 't', tokens, now)
    if stale(redis.call('HGET', w, 'xe'), now) then
      keep({w, b}, W + B + 2 * REFRESH_MS, w, 'xe', now)
    end
  end
end

local function release(now, base, lease, tokens)
  redis.call('ZREM', base .. ':par', lease)
  count_tokens(now, base, tokens)
end

local SLICE = 500  -- values per unpack (Lua's stack takes a few thousand at most)

-- args[from .. to], in slices of SLICE, each passed to fn
local function slices(args, from, to, fn)
  local i = from
  while i <= to do
    local j = math.min(i + SLICE - 1, to)
    fn(unpack(args, i, j))
    i = j + 1
  end
end

-- A budget scope's month (`b`): one hash with `sn` (spent) and `rn` (reserved) in nano-USD,
-- `r:<id>` = amount:expiry (ms) per reservation, and `nx`, no later than the earliest expiry.
-- `spent` (float USD) is what version 1 kept; it still counts.

local function purge(b, now)
  local all = redis.call('HGETALL', b)
  local gone, first = 0, nil
  for j = 1, #all, 2 do
    if string.sub(all[j], 1, 2) == 'r:' then
      local amt, exp = string.match(all[j + 1], '^(%d+):(%d+)$')
      exp = tonumber(exp)
      if exp <= now then
        redis.call('HDEL', b, all[j])
        gone = gone + tonumber(amt)
      elseif not first or exp < first then
        first = exp
      end
    end
  end
  if gone > 0 then redis.call('HINCRBY', b, 'rn', int(-gone)) end
  if first then redis.call('HSET', b, 'nx', int(first)) else redis.call('HDEL', b, 'nx') end
end

-- -> spent + reserved (nano-USD), whether the hash holds no reservation count yet, and `nx`
local function total(b, now)
  local v = redis.call('HMGET', b, 'sn', 'rn', 'nx', 'spent')
  if v[3] and now >= tonumber(v[3]) then
    purge(b, now)
    v = redis.call('HMGET', b, 'sn', 'rn', 'nx', 'spent')
  end
  local t = tonumber(v[1] or '0') + math.max(tonumber(v[2] or '0'), 0)
  if v[4] then t = t + math.floor(tonumber(v[4]) * 1e9 + 0.5) end
  return t, not v[2], v[3]
end

local function settle(bases, rid, actual)
  for _, b in ipairs(bases) do
    local r = redis.call('HGET', b, 'r:' .. rid)
    if r then
      redis.call('HDEL', b, 'r:' .. rid)
      redis.call('HINCRBY', b, 'rn', '-' .. string.match(r, '^(%d+)'))
    end
    if actual ~= '0' then
      local after = redis.call('HINCRBY', b, 'sn', actual)
      if not r and after == tonumber(actual) then redis.call('PEXPIRE', b, KEEP_MS) end
    end
  end
end

-- Many requests' settlements in one budget base: drop the reservations args[from .. to]
-- (fields r:<id>, those still held) and add `actual` (nano-USD) to the spend, as settle does
-- for each.
local function settle_many(b, args, from, to, actual)
  local found = 0
  slices(args, from, to, function(...)
    local v = redis.call('HMGET', b, ...)
    local held = 0
    for j = 1, select('#', ...) do
      if v[j] then
        held = held + tonumber(string.match(v[j], '^(%d+)'))
        found = found + 1
      end
    end
    if held > 0 then
      redis.call('HDEL', b, ...)
      redis.call('HINCRBY', b, 'rn', int(-held))
    end
  end)
  if actual ~= '0' then
    local after = redis.call('HINCRBY', b, 'sn', actual)
    if found == 0 and after == tonumber(actual) then redis.call('PEXPIRE', b, KEEP_MS) end
  end
end

local function caps_of(args, from, n)
  local caps = {}
  for i = 1, n do caps[i] = tonumber(args[from + i - 1]) end
  return caps
end

-- keys: the key base. args: lease, tokens (the answer's: 0 for a key without tpm)
redis.register_function('edgecloud_state_5_release', function(keys, args)
  release(now_ms(), keys[1], args[1], tonumber(args[2]))
  return 0
end)

-- keys: budget bases. args: id, actual (nano-USD)
redis.register_function('edgecloud_state_5_settle', function(keys, args)
  settle(keys, args[1], args[2])
  return 0
end)

-- keys: budget bases -> spent + reserved (nano-USD) each
redis.register_function('edgecloud_state_5_spent', function(keys, args)
  local now, out = now_ms(), {}
  for i, b in ipairs(keys) do out[i] = total(b, now) end
  return out
end)

-- Many requests' starts in one step (redis_state.py begin): each request is admitted (its key's
-- rate limits) and then reserves (its budgets) as the functions admit and reserve would, one
-- after the other in the order sent, so the outcome is the same as one call each; what they
-- share is read once and written once: a key's window and slots, a budget's totals.
--
-- keys: the key bases and budget bases the batch names, each once. args: ns, then ns shapes
-- (what requests of one key and budget share): key base index (0: no rate limits), rpm, tpm,
-- max_parallel, lease_ms, nb, then nb pairs of budget base index, cap (-1: none); then per
-- request: shape index, tokens, lease (also the reservation's id), amount (nano-USD; 0: none).
-- -> one flat array (a nested one costs Redis more to reply): per request, where its shape has
-- a key, the 7 values of admit's usage; where it has budgets, -1 (refused by a rate limit:
-- nothing reserved) or reserve's index of the scope that refused it (0: reserved), then the
-- nb totals after.

-- A key's state in a batch: its window's sums (once `win`), its slots (once `slots`), and
-- what the batch adds to them, written by key_flush.
local function key_state(base)
  return {w = base .. ':w', b = base .. ':b', par = base .. ':par', nreq = 0, ntok = 0,
          npar = 0, win = false, slots = false, purged = false, addr = 0, addt = 0,
          leases = {}, lease_ms = 0, admitted = false, mark = nil}
end

local function key_window(k, now)
  if not k.win then
    local hv = redis.call('HMGET', k.w, 'rs', 'ts', 'x')
    k.nreq, k.ntok = trim(k.w, k.b, tonumber(hv[1] or '0'), tonumber(hv[2] or '0'), now)
    k.mark, k.win = hv[3], true
  end
end

local function key_slots(k, maxpar, now)
  if not k.slots then
    k.npar, k.slots = redis.call('ZCARD', k.par), true
  end
  if k.npar + 1 > maxpar and not k.purged then
    -- only now do the slots of replicas that died mid-request matter: drop the expired
    redis.call('ZREMRANGEBYSCORE', k.par, '-inf', now)
    k.npar, k.purged = redis.call('ZCARD', k.par) + #k.leases / 2, true
  end
end

-- The batch's requests and tokens so far into the bucket of now (before a refusal reads the
-- buckets, and at the end).
local function key_counts(k, now)
  if k.addr > 0 then add(k.w, k.b, 'r', k.addr, now); k.addr = 0 end
  if k.addt > 0 then add(k.w, k.b, 't', k.addt, now); k.addt = 0 end
end

local function key_flush(k, now)
  key_counts(k, now)
  if #k.leases > 0 then
    slices(k.leases, 1, #k.leases, function(...) redis.call('ZADD', k.par, ...) end)
  end
  if k.admitted then
    if not k.win then k.mark = redis.call('HGET', k.w, 'x') end
    if stale(k.mark, now) then
      -- every key lives at least W (or a lease) past its newest entry
      redis.call('PEXPIRE', k.par, math.max(W, k.lease_ms) + 2 * REFRESH_MS)
      keep({k.w, k.b}, W + B + 2 * REFRESH_MS, k.w, 'x', now)
    end
  end
end

-- -> the usage admit replies, as 7 values
local function admit_one(k, now, rpm, tpm, maxpar, tokens, lease, lease_ms, expiry)
  local nreq, ntok, npar = 0, 0, 0
  if rpm >= 0 or tpm >= 0 then
    key_window(k, now)
    nreq, ntok = k.nreq, k.ntok
  end
  if maxpar >= 0 then
    key_slots(k, maxpar, now)
    npar = k.npar
  end
  local limited, wait = '', 0
  if rpm >= 0 and nreq + 1 > rpm then
    key_counts(k, now)  -- the buckets as one call each would have left them
    limited, wait = 'requests', wait_ms(k.w, k.b, 'r', nreq, 1, rpm, now)
  elseif tpm >= 0 and ntok + tokens > tpm then
    key_counts(k, now)
    limited, wait = 'tokens', wait_ms(k.w, k.b, 't', ntok, tokens, tpm, now)
  elseif maxpar >= 0 and npar + 1 > maxpar then
    limited, wait = 'parallel', 1000
  else
    if rpm >= 0 then
      nreq = nreq + 1
      k.nreq, k.addr = nreq, k.addr + 1
    end
    if tpm >= 0 and tokens > 0 then
      ntok = ntok + tokens
      k.ntok, k.addt = ntok, k.addt + tokens
    end
    if maxpar >= 0 then
      k.leases[#k.leases + 1] = expiry
      k.leases[#k.leases + 1] = lease
      npar = npar + 1
      k.npar = npar
      if lease_ms > k.lease_ms then k.lease_ms = lease_ms end
    end
    k.admitted = true
    -- just added to the bucket of now: the window is empty again W after it ends
    local reset = (bucket(now) + 1) * B + W - now
    return limited, nreq, ntok, nreq > 0 and reset or 0, ntok > 0 and reset or 0, wait, npar
  end
  key_counts(k, now)
  local reset = reset_ms(k.b, now)
  return limited, nreq, ntok, nreq > 0 and reset or 0, ntok > 0 and reset or 0, wait, npar
end

-- One request's admission alone (begins does it for many): keys: the key base. args: rpm,
-- tpm, max_parallel (-1: none), tokens, lease, lease_ms -> {limited ('' none, requests,
-- tokens, parallel), requests, tokens, requests reset ms, tokens reset ms, wait ms, parallel}
redis.register_function('edgecloud_state_5_admit', function(keys, args)
  local now, k, lease_ms = now_ms(), key_state(keys[1]), tonumber(args[6])
  local out = {admit_one(k, now, tonumber(args[1]), tonumber(args[2]), tonumber(args[3]),
                         tonumber(args[4]), args[5], lease_ms, int(now + lease_ms))}
  key_flush(k, now)
  return out
end)

-- A budget base's state in a batch: its total (spent + reserved) as total() read it, plus what
-- the batch reserved, and the reservations to write (field, value pairs) by budget_flush.
local function budget_state(base, now)
  local t, fresh, nx = total(base, now)
  return {base = base, total = t, fresh = fresh, nx = nx and tonumber(nx), newnx = false,
          add = 0, fields = {}}
end

local function budget_flush(s)
  if #s.fields == 0 then return end
  redis.call('HINCRBY', s.base, 'rn', int(s.add))
  if s.newnx then
    s.fields[#s.fields + 1] = 'nx'
    s.fields[#s.fields + 1] = int(s.nx)
  end
  slices(s.fields, 1, #s.fields, function(...) redis.call('HSET', s.base, ...) end)
  if s.fresh then redis.call('PEXPIRE', s.base, KEEP_MS) end
end

-- One reservation of `amount` (nano-USD, text) under id `rid` in budgets `bases` (their key
-- indexes, budget(i) their states) with `caps` (-1: none), expiring at `expiry` (and its text),
-- as the budgets' states hold them -> the index of the scope whose cap it would pass (0:
-- reserved), and every scope's total after
local function reserve_one(budget, bases, caps, amount, rid, expiry, expiry_text)
  local amt, totals, refused = tonumber(amount), {}, 0
  for j, i in ipairs(bases) do
    totals[j] = budget(i).total
    if refused == 0 and caps[j] >= 0 and totals[j] + amt > caps[j] + 1 then refused = j end
  end
  if refused == 0 then
    local field, value = 'r:' .. rid, amount .. ':' .. expiry_text
    for j, i in ipairs(bases) do
      local s = budget(i)
      s.total, s.add = s.total + amt, s.add + amt
      s.fields[#s.fields + 1] = field
      s.fields[#s.fields + 1] = value
      if not s.nx or s.nx > expiry then s.nx, s.newnx = expiry, true end
      totals[j] = s.total
    end
  end
  return refused, totals
end

-- One reservation alone (begins makes them for many): keys: budget bases. args: amount
-- (nano-USD), id, lease_ms, then one cap per base (-1: none)
-- -> {index of the scope whose cap it would pass (0: reserved), totals after}
redis.register_function('edgecloud_state_5_reserve', function(keys, args)
  local now, bs, bases = now_ms(), {}, {}
  local function budget(i)
    local s = bs[i]
    if not s then s = budget_state(keys[i], now); bs[i] = s end
    return s
  end
  for i = 1, #keys do bases[i] = i end
  local expiry = now + tonumber(args[3])
  local refused, totals = reserve_one(budget, bases, caps_of(args, 4, #keys), args[1], args[2],
                                      expiry, int(expiry))
  for _, s in pairs(bs) do budget_flush(s) end
  return {refused, totals}
end)

redis.register_function('edgecloud_state_5_begins', function(keys, args)
  local now = now_ms()
  local ns, a, shapes = tonumber(args[1]), 2, {}
  for i = 1, ns do
    local nb, lease_ms = tonumber(args[a + 5]), tonumber(args[a + 4])
    -- expiry: when its leases and reservations expire, as a number and as text (once here:
    -- each number made text in a call costs a formatting)
    local sh = {k = tonumber(args[a]), rpm = tonumber(args[a + 1]), tpm = tonumber(args[a + 2]),
                maxpar = tonumber(args[a + 3]), lease_ms = lease_ms, bases = {}, caps = {},
                expiry = now + lease_ms, expiry_text = int(now + lease_ms)}
    a = a + 6
    for j = 1, nb do
      sh.bases[j], sh.caps[j] = tonumber(args[a]), tonumber(args[a + 1])
      a = a + 2
    end
    shapes[i] = sh
  end
  local ks, bs, out, n = {}, {}, {}, 0
  local function budget(i)
    local s = bs[i]
    if not s then s = budget_state(keys[i], now); bs[i] = s end
    return s
  end
  while a <= #args do
    local sh = shapes[tonumber(args[a])]
    local tokens, lease, amount = tonumber(args[a + 1]), args[a + 2], args[a + 3]
    a = a + 4
    local limited = ''
    if sh.k > 0 then
      local k = ks[sh.k]
      if not k then k = key_state(keys[sh.k]); ks[sh.k] = k end
      local nreq, ntok, rreset, treset, wait, npar
      limited, nreq, ntok, rreset, treset, wait, npar = admit_one(
        k, now, sh.rpm, sh.tpm, sh.maxpar, tokens, lease, sh.lease_ms, sh.expiry_text)
      out[n + 1], out[n + 2], out[n + 3], out[n + 4] = limited, nreq, ntok, rreset
      out[n + 5], out[n + 6], out[n + 7], n = treset, wait, npar, n + 7
    end
    if #sh.bases == 0 then
      -- nothing to reserve
    elseif limited ~= '' then
      n = n + 1
      out[n] = -1
    else
      local refused, totals = reserve_one(budget, sh.bases, sh.caps, amount, lease, sh.expiry,
                                          sh.expiry_text)
      n = n + 1
      out[n] = refused
      for j = 1, #totals do out[n + j] = totals[j] end
      n = n + #totals
    end
  end
  for _, k in pairs(ks) do key_flush(k, now) end
  for _, s in pairs(bs) do budget_flush(s) end
  return out
end)

-- Many requests' ends, merged (redis_state.py end_many). keys[1]: the writer's mark (the
-- number of the last batch it applied), then nk key bases, then budget bases. args: the
-- batch's number, nk, then per key base: tokens, n, n leases; per budget base: actual
-- (nano-USD), n, n reservations' fields (r:<id>). A writer numbers its batches in the order it sends them
-- and sends a batch whose answer it lost again, so one numbered no higher than the mark was
-- applied already: -> 0 for that, 1 applied now.
redis.register_function('edgecloud_state_5_ends', function(keys, args)
  local seq = tonumber(args[1])
  local mark = redis.call('GET', keys[1])
  if mark and tonumber(mark) >= seq then return 0 end
  local now, nk, a = now_ms(), tonumber(args[2]), 3
  for i = 2, nk + 1 do
    local base, tokens, n = keys[i], tonumber(args[a]), tonumber(args[a + 1])
    local par = base .. ':par'
    slices(args, a + 2, a + 1 + n, function(...) redis.call('ZREM', par, ...) end)
    count_tokens(now, base, tokens)
    a = a + 2 + n
  end
  for i = nk + 2, #keys do
    local n = tonumber(args[a + 1])
    settle_many(keys[i], args, a + 2, a + 1 + n, args[a])
    a = a + 2 + n
  end
  redis.call('SET', keys[1], args[1], 'PX', KEEP_MS)
  return 1
end)

-- keys: the fleet base. args: replica, ttl_ms, then endpoint, count pairs
-- -> {live replicas, then endpoint, in-flight count pairs summed over the other replicas}
redis.register_function('edgecloud_state_5_heartbeat', function(keys, args)
  local now = now_ms()
  local base, me, ttl = keys[1], args[1], tonumber(args[2])
  redis.call('ZREMRANGEBYSCORE', base .. ':replicas', '-inf', now)
  redis.call('ZADD', base .. ':replicas', now + ttl, me)
  redis.call('PEXPIRE', base .. ':replicas', ttl * 4)
  local mine = base .. ':inflight:' .. me
  redis.call('DEL', mine)
  if #args > 2 then
    redis.call('HSET', mine, unpack(args, 3))
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
end)

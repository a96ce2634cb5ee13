#!lua name=edgecloud_state_2
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

-- A key (`base`): `:rl` a sorted set of its requests (member: the request's lease, score: its
-- time); `:tl` one of token entries (member: lease:kind:tokens, kind a at admission, e at the
-- end); `:par` the parallel slots (score: when the lease expires); `:h` a hash with `ts`, the
-- sum of `:tl`, and `x`/`xe`, when admit/release last refreshed the expiries. Entries older
-- than W drop out before each check, so the limits are exact over any W.

local function keep(keys, ttl, h, field, now)
  for _, k in ipairs(keys) do redis.call('PEXPIRE', k, ttl) end
  redis.call('HSET', h, field, now)
end

local function stale(mark, now)
  return not mark or now - tonumber(mark) >= REFRESH_MS
end

local function trim_tokens(tl, h, ts, now)
  local old = redis.call('ZRANGEBYSCORE', tl, '-inf', now - W)
  if #old == 0 then return ts end
  local gone = 0
  for _, m in ipairs(old) do gone = gone + tonumber(string.match(m, ':(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', tl, '-inf', now - W)
  local left = redis.call('HINCRBY', h, 'ts', int(-gone))
  if left < 0 then redis.call('HSET', h, 'ts', 0); left = 0 end
  return left
end

local function reset_ms(key, now)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return tonumber(last[2]) + W - now
end

-- -> {limited ('' none, requests, tokens, parallel), requests, tokens, requests reset ms,
--     tokens reset ms, wait ms, parallel}
local function admit(now, base, rpm, tpm, maxpar, tokens, lease, lease_ms)
  local rl, tl, par, h = base .. ':rl', base .. ':tl', base .. ':par', base .. ':h'
  local hv = redis.call('HMGET', h, 'ts', 'x')
  local nreq, ntok, npar = 0, 0, 0
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', rl, '-inf', now - W)
    nreq = redis.call('ZCARD', rl)
  end
  if tpm >= 0 then ntok = trim_tokens(tl, h, tonumber(hv[1] or '0'), now) end
  if maxpar >= 0 then
    npar = redis.call('ZCARD', par)
    if npar + 1 > maxpar then
      -- only now do the slots of replicas that died mid-request matter: drop the expired
      redis.call('ZREMRANGEBYSCORE', par, '-inf', now)
      npar = redis.call('ZCARD', par)
    end
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
      local entries = redis.call('ZRANGE', tl, 0, 999, 'WITHSCORES')
      for j = 1, #entries, 2 do
        left = left - tonumber(string.match(entries[j], ':(%d+)$'))
        if left + tokens <= tpm then wait = tonumber(entries[j + 1]) + W - now; break end
      end
    end
  elseif maxpar >= 0 and npar + 1 > maxpar then
    limited, wait = 'parallel', 1000
  else
    if rpm >= 0 then
      redis.call('ZADD', rl, now, lease)
      nreq = nreq + 1
    end
    if tpm >= 0 then
      redis.call('ZADD', tl, now, lease .. ':a:' .. tokens)
      ntok = redis.call('HINCRBY', h, 'ts', tokens)
    end
    if maxpar >= 0 then
      redis.call('ZADD', par, now + lease_ms, lease)
      npar = npar + 1
    end
    if stale(hv[2], now) then
      -- every key lives at least W (or a lease) past its newest entry
      redis.call('PEXPIRE', par, math.max(W, lease_ms) + 2 * REFRESH_MS)
      keep({rl, tl, h}, W + 2 * REFRESH_MS, h, 'x', now)
    end
    -- just added with the time now: the log is empty again W from now (if it has entries)
    return {limited, nreq, ntok, nreq > 0 and W or 0, ntok > 0 and W or 0, wait, npar}
  end
  return {limited, nreq, ntok, reset_ms(rl, now), reset_ms(tl, now), wait, npar}
end

local function release(now, base, lease, tokens)
  redis.call('ZREM', base .. ':par', lease)
  if tokens > 0 then
    local tl, h = base .. ':tl', base .. ':h'
    redis.call('ZADD', tl, now, lease .. ':e:' .. tokens)
    redis.call('HINCRBY', h, 'ts', tokens)
    if stale(redis.call('HGET', h, 'xe'), now) then
      keep({tl, h}, W + 2 * REFRESH_MS, h, 'xe', now)
    end
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

-- -> {index of the scope whose cap it would pass (0: reserved), totals after}
local function reserve(now, bases, caps, amount, rid, lease_ms)
  local totals, fresh, nx = {}, {}, {}
  local amt = tonumber(amount)
  for i, b in ipairs(bases) do
    totals[i], fresh[i], nx[i] = total(b, now)
    if caps[i] >= 0 and totals[i] + amt > caps[i] + 1 then
      for j = i + 1, #bases do totals[j] = total(bases[j], now) end
      return {i, totals}
    end
  end
  local exp = int(now + lease_ms)
  for i, b in ipairs(bases) do
    redis.call('HINCRBY', b, 'rn', amount)
    if nx[i] and tonumber(nx[i]) <= now + lease_ms then
      redis.call('HSET', b, 'r:' .. rid, amount .. ':' .. exp)
    else
      redis.call('HSET', b, 'r:' .. rid, amount .. ':' .. exp, 'nx', exp)
    end
    if fresh[i] then redis.call('PEXPIRE', b, KEEP_MS) end
    totals[i] = totals[i] + amt
  end
  return {0, totals}
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

local function tail(keys, from)
  local out = {}
  for i = from, #keys do out[#out + 1] = keys[i] end
  return out
end

local function caps_of(args, from, n)
  local caps = {}
  for i = 1, n do caps[i] = tonumber(args[from + i - 1]) end
  return caps
end

-- keys: the key base. args: rpm, tpm, max_parallel (-1: none), tokens, lease, lease_ms
redis.register_function('edgecloud_state_2_admit', function(keys, args)
  return admit(now_ms(), keys[1], tonumber(args[1]), tonumber(args[2]), tonumber(args[3]),
               tonumber(args[4]), args[5], tonumber(args[6]))
end)

-- keys: the key base. args: lease, tokens (the answer's: 0 for a key without tpm)
redis.register_function('edgecloud_state_2_release', function(keys, args)
  release(now_ms(), keys[1], args[1], tonumber(args[2]))
  return 0
end)

-- keys: budget bases. args: amount (nano-USD), id, lease_ms, then one cap per base (-1: none)
redis.register_function('edgecloud_state_2_reserve', function(keys, args)
  return reserve(now_ms(), keys, caps_of(args, 4, #keys), args[1], args[2], tonumber(args[3]))
end)

-- keys: budget bases. args: id, actual (nano-USD)
redis.register_function('edgecloud_state_2_settle', function(keys, args)
  settle(keys, args[1], args[2])
  return 0
end)

-- keys: budget bases -> spent + reserved (nano-USD) each
redis.register_function('edgecloud_state_2_spent', function(keys, args)
  local now, out = now_ms(), {}
  for i, b in ipairs(keys) do out[i] = total(b, now) end
  return out
end)

-- One request's start. keys[1]: the key base ('' for no rate limits), keys[2..]: budget bases.
-- args: rpm, tpm, max_parallel, tokens, lease, lease_ms, amount (nano-USD), caps...
redis.register_function('edgecloud_state_2_begin', function(keys, args)
  local now = now_ms()
  local usage = 0  -- not nil: a nil would end the reply array
  if keys[1] ~= '' then
    usage = admit(now, keys[1], tonumber(args[1]), tonumber(args[2]), tonumber(args[3]),
                  tonumber(args[4]), args[5], tonumber(args[6]))
    if usage[1] ~= '' or #keys == 1 then return {usage} end
  end
  return {usage, reserve(now, tail(keys, 2), caps_of(args, 8, #keys - 1), args[7], args[5],
                         tonumber(args[6]))}
end)

-- One request's end. keys as begin. args: lease, tokens, actual (nano-USD)
redis.register_function('edgecloud_state_2_end', function(keys, args)
  if keys[1] ~= '' then release(now_ms(), keys[1], args[1], tonumber(args[2])) end
  settle(tail(keys, 2), args[1], args[3])
  return 0
end)

-- keys: the fleet base. args: replica, ttl_ms, then endpoint, count pairs
-- -> {live replicas, then endpoint, in-flight count pairs summed over the other replicas}
redis.register_function('edgecloud_state_2_heartbeat', function(keys, args)
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

-- One circuit breaker's read-decide-write, atomic and on Redis' clock (used by
-- telemetry_guard/breaker/redis_store.py; the rules are those of breaker/state.py).
-- KEYS[1] the breaker's hash, KEYS[2] its half-open permits (a sorted set, score = lease
-- expiry in ms), KEYS[3] its failure-rate window (a bitmap, 1 = failure).
-- ARGV[1] the operation: admit, record, force_open, reset, set_mode or snapshot.
-- ARGV[2] the configuration, numbers separated by spaces: failure threshold, reset timeout
--   (ms), half-open max calls, failure rate (-1: none), window size, minimum calls, half-open
--   max duration (ms), permit ttl (ms), key ttl (ms), clock slack (ms), largest window.
-- ARGV[3] the generation a recorded outcome was admitted in; ARGV[4] the outcome (record) or
--   the mode (set_mode); ARGV[5] the half-open trial's permit ('' when none).
-- Returns one line of fields separated by spaces: state, generation, mode, retry after (ms),
--   permit ('-' when none), admitted (1 or 0), Redis' time (ms), consecutive failures, window
--   count, window failures, permits in use, then from, to, reason for each transition.
--   A hash holding values no breaker writes gets 'invalid <fields>' instead, and no write.
local hkey, pkey, wkey = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local c = {}
for v in string.gmatch(ARGV[2], '%S+') do c[#c + 1] = tonumber(v) end
local threshold, reset_ms, max_calls, rate = c[1], c[2], c[3], c[4]
local wsize, rate_min, ho_max_ms, ttl_ms = c[5], c[6], c[7], c[8]
local key_ttl_ms, clock_slack_ms, max_window = c[9], c[10], c[11]
local arg_gen = tonumber(ARGV[3])
local arg = ARGV[4]
local permit = ARGV[5]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Every field is checked: a value this script never writes makes the breaker invalid. Calls
-- and outcomes then get the reply "invalid <fields>" and nothing is written (the caller
-- falls back); the commands reset, force_open and set_mode repair it first.
local f = redis.pcall('HMGET', hkey, 'state', 'mode', 'gen', 'fails', 'opened_at',
                      'ho_since', 'ho_ok', 'w_pos', 'w_count', 'w_fail', 'permit_seq')
local bad = {}
if f.err then
  bad[1] = 'type'
  f = {}
end
local function count(i, name)
  local v = f[i]
  if not v then return 0 end
  if #v > 14 or not string.find(v, '^%d+$') then
    bad[#bad + 1] = name
    return 0
  end
  return tonumber(v)
end
local function moment(i, name)
  local v = count(i, name)
  if v > now + clock_slack_ms then
    bad[#bad + 1] = name
    return 0
  end
  return v
end
local state = f[1] or 'closed'
if state ~= 'closed' and state ~= 'open' and state ~= 'half_open' then
  bad[#bad + 1] = 'state'
  state = 'closed'
end
local mode = f[2] or 'normal'
if mode ~= 'normal' and mode ~= 'disabled' and mode ~= 'forced_open'
    and mode ~= 'metrics_only' then
  bad[#bad + 1] = 'mode'
  mode = 'normal'
end
local gen = count(3, 'gen')
local fails = count(4, 'fails')
local opened_at = moment(5, 'opened_at')
local ho_since = moment(6, 'ho_since')
local ho_ok = count(7, 'ho_ok')
local w_pos = count(8, 'w_pos')
local w_count = count(9, 'w_count')
local w_fail = count(10, 'w_fail')
count(11, 'permit_seq')
if w_count > max_window then
  bad[#bad + 1] = 'w_count'
elseif w_pos > w_count then
  bad[#bad + 1] = 'w_pos'
elseif w_fail > w_count then
  bad[#bad + 1] = 'w_fail'
end

local dirty = false
local changes = {}

if #bad > 0 then
  if op ~= 'reset' and op ~= 'force_open' and op ~= 'set_mode' then
    return 'invalid ' .. table.concat(bad, ' ')
  end
  -- repair: keep the fields that could be read, start every counter afresh
  redis.call('DEL', hkey, pkey, wkey)
  gen = gen + 1
  fails, ho_ok, w_pos, w_count, w_fail = 0, 0, 0, 0, 0
  if opened_at == 0 then opened_at = now end
  if ho_since == 0 then ho_since = now end
  dirty = true
end

local function clear_counts()
  fails = 0
  ho_ok = 0
  redis.call('DEL', pkey)
  if w_count > 0 then redis.call('DEL', wkey) end
  w_pos = 0
  w_count = 0
  w_fail = 0
  dirty = true
end

-- A window written under another window_size: keep its newest outcomes, oldest first at 0.
local function fit_window()
  if w_pos < wsize and (w_count == wsize or (w_count < wsize and w_pos == w_count)) then
    return
  end
  local n = w_count
  local keep = math.min(n, wsize)
  local start = w_pos % n
  local bits = {}
  for k = n - keep, n - 1 do bits[#bits + 1] = redis.call('GETBIT', wkey, (start + k) % n) end
  redis.call('DEL', wkey)
  w_fail = 0
  for i = 1, #bits do
    if bits[i] == 1 then
      redis.call('SETBIT', wkey, i - 1, 1)
      w_fail = w_fail + 1
    end
  end
  w_count = keep
  w_pos = keep % wsize
  dirty = true
end

local function go(to, reason)
  changes[#changes + 1] = state
  changes[#changes + 1] = to
  changes[#changes + 1] = reason
  state = to
  gen = gen + 1
  clear_counts()
  if to == 'open' then opened_at = now elseif to == 'half_open' then ho_since = now end
end

local function tick()
  if mode == 'forced_open' or mode == 'disabled' then return end
  if state == 'open' and now >= opened_at + reset_ms then
    go('half_open', 'reset_timeout_elapsed')
  end
  if state == 'half_open' then
    if now >= ho_since + ho_max_ms then
      go('open', 'half_open_timed_out')
    else
      redis.call('ZREMRANGEBYSCORE', pkey, '-inf', now)
    end
  end
end

local function retry_after()
  if mode == 'forced_open' then return reset_ms end
  if state == 'open' then return math.max(0, opened_at + reset_ms - now) end
  if state == 'half_open' then
    local live = redis.call('ZRANGEBYSCORE', pkey, '(' .. now, '+inf', 'WITHSCORES')
    if #live / 2 + ho_ok >= max_calls then
      local due = ho_since + ho_max_ms
      for i = 2, #live, 2 do due = math.min(due, tonumber(live[i])) end
      return math.max(0, due - now)
    end
  end
  return 0
end

local admitted = 0
local granted = ''
local in_use = 0
if op == 'record' then
  if state ~= 'closed' then tick() end
  if mode ~= 'disabled' and arg_gen == gen then
    if state == 'closed' then
      if arg ~= 'ignored' then
        local bit = 0
        if arg == 'failure' then
          fails = fails + 1
          bit = 1
          dirty = true
        elseif fails > 0 then
          fails = 0
          dirty = true
        end
        if rate >= 0 then
          if w_count > 0 then fit_window() end
          if w_count >= wsize then
            w_fail = w_fail - redis.call('GETBIT', wkey, w_pos)
          else
            w_count = w_count + 1
          end
          redis.call('SETBIT', wkey, w_pos, bit)
          w_fail = w_fail + bit
          w_pos = (w_pos + 1) % wsize
          dirty = true
        end
        if bit == 1 and fails >= threshold then
          go('open', 'consecutive_failures')
        elseif rate >= 0 and w_count >= rate_min and w_fail >= rate * w_count then
          go('open', 'failure_rate')
        end
      end
    elseif state == 'half_open' and permit ~= '' then
      local held = redis.call('ZREM', pkey, permit)
      if arg == 'failure' then
        go('open', 'half_open_trial_failed')
      elseif arg == 'success' and held == 1 then
        ho_ok = ho_ok + 1
        dirty = true
        if ho_ok >= max_calls then go('closed', 'half_open_trials_succeeded') end
      end
    end
  end
elseif op == 'admit' then
  tick()
  if mode == 'disabled' or (state == 'closed' and mode ~= 'forced_open') then
    admitted = 1
  elseif mode ~= 'forced_open' then
    if state == 'half_open' and redis.call('ZCARD', pkey) + ho_ok < max_calls then
      granted = gen .. ':' .. redis.call('HINCRBY', hkey, 'permit_seq', 1)
      redis.call('ZADD', pkey, now + ttl_ms, granted)
      admitted = 1
    elseif mode == 'metrics_only' then
      admitted = 1
    end
  end
elseif op == 'force_open' then
  if state == 'open' then
    opened_at = now
    dirty = true
  else
    go('open', 'forced')
  end
elseif op == 'reset' then
  redis.call('DEL', wkey)  -- whatever it holds: a reset is the operator's repair
  if state ~= 'closed' then go('closed', 'reset') else clear_counts() end
elseif op == 'set_mode' then
  mode = arg
  dirty = true
  if arg == 'forced_open' and state ~= 'open' then
    go('open', 'mode_forced_open')
  elseif arg == 'disabled' then
    if state ~= 'closed' then go('closed', 'mode_disabled') else clear_counts() end
  end
elseif op == 'snapshot' then
  if state == 'half_open' then in_use = redis.call('ZCOUNT', pkey, '(' .. now, '+inf') end
end

if dirty then
  redis.call('HSET', hkey, 'state', state, 'mode', mode, 'gen', gen, 'fails', fails,
             'opened_at', opened_at, 'ho_since', ho_since, 'ho_ok', ho_ok,
             'w_pos', w_pos, 'w_count', w_count, 'w_fail', w_fail)
end
-- In mode normal every key expires key_ttl_ms after its last write (a key written before
-- expiries existed gets one too); a mode an operator set stays until changed.
if mode == 'normal' then
  if dirty or granted ~= '' or redis.call('PTTL', hkey) == -1 then
    redis.call('PEXPIRE', hkey, key_ttl_ms)
    redis.call('PEXPIRE', pkey, key_ttl_ms)
    redis.call('PEXPIRE', wkey, key_ttl_ms)
  end
elseif dirty then
  redis.call('PERSIST', hkey)
  redis.call('PERSIST', pkey)
  redis.call('PERSIST', wkey)
end

if granted == '' then granted = '-' end
local out = {state, gen, mode, retry_after(), granted, admitted, now, fails, w_count, w_fail,
             in_use}
for i = 1, #changes do out[#out + 1] = changes[i] end
return table.concat(out, ' ')

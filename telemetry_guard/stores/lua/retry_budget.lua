-- The retry budget's bucket (see telemetry_guard/stores/budget.py): decay and refill on Redis
-- server time, add this process's deposits, and maybe grant one retry.
-- KEYS[1]: the scope's hash. ARGV: ratio, min_retries_per_second, ttl (seconds), expiry (ms),
-- deposits, '1' to withdraw. Returns 1 when a retry is granted, else 0.
local key = KEYS[1]
local ratio, min_rps, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local expire_ms = tonumber(ARGV[4])
local deposits, wants = tonumber(ARGV[5]), ARGV[6] == '1'

local t = redis.call('TIME')
local now_text = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now = tonumber(now_text)

-- A bucket that is missing, not a hash, or holds anything but finite non-negative numbers
-- (nan, inf, text) starts afresh, as a new scope does.
local f = redis.pcall('HMGET', key, 'tokens', 'reserve', 'ts')
if f.err then
  redis.call('DEL', key)
  f = {}
end
local tokens, reserve, ts = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local function usable(x) return x ~= nil and x >= 0 and x < math.huge end
if not (usable(tokens) and usable(reserve) and usable(ts)) then
  tokens, reserve, ts = 0, min_rps, now
end

local elapsed = math.max(0, now - ts)
tokens = tokens * math.exp(-elapsed / ttl) + deposits * ratio
reserve = math.min(min_rps, reserve + elapsed * min_rps)

local granted = 0
if wants then
  if reserve >= 1 then
    reserve = reserve - 1
    granted = 1
  elseif tokens >= 1 then
    tokens = tokens - 1
    granted = 1
  end
end

redis.call('HSET', key, 'tokens', string.format('%.17g', tokens),
           'reserve', string.format('%.17g', reserve), 'ts', now_text)
redis.call('PEXPIRE', key, expire_ms)
return granted

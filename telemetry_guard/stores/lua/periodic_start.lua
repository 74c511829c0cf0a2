-- A periodic task's run started: last run, start delay, running set, overlap count.
-- KEYS[1] the task's hash, KEYS[2] its running set (same hash tag).
-- ARGV[1] run id, ARGV[2] start time (s), ARGV[3] start delay (s) or "",
-- ARGV[4] runs older than this many intervals are stale and dropped.
-- Returns how many other runs were in progress.
local now = tonumber(ARGV[2])
local interval = tonumber(redis.call('HGET', KEYS[1], 'interval')) or 3600
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. tostring(now - interval * tonumber(ARGV[4])))
local others = redis.call('ZCARD', KEYS[2])
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  others = others - 1  -- the same run delivered again
end
if others > 0 then
  redis.call('HINCRBY', KEYS[1], 'overlaps', 1)
  redis.call('HSET', KEYS[1], 'last_overlap', ARGV[2])
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_run'))
if last == nil or now >= last then
  redis.call('HSET', KEYS[1], 'last_run', ARGV[2])
  if ARGV[3] ~= '' then
    redis.call('HSET', KEYS[1], 'last_start_delay', ARGV[3])
  end
end
return others

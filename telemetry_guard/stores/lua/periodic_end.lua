-- A periodic task's run ended: out of the running set; last success or last failure.
-- KEYS[1] the task's hash, KEYS[2] its running set (same hash tag).
-- ARGV[1] run id, ARGV[2] end time (s), ARGV[3] field to set ("last_success",
-- "last_failure") or "" (a retry: the run ended without an outcome).
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[3] ~= '' then
  local last = tonumber(redis.call('HGET', KEYS[1], ARGV[3]))
  if last == nil or tonumber(ARGV[2]) >= last then
    redis.call('HSET', KEYS[1], ARGV[3], ARGV[2])
  end
end
return 1

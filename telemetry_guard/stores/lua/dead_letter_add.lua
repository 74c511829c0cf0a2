-- Add one dead letter and keep its task within its own retention.
-- KEYS[1] the dead-letter stream; KEYS[2] the task's index (a sorted set of its entry ids,
-- oldest first); KEYS[3], when ARGV[2] > 0, the writing process's last sequence number.
-- ARGV[1] how many entries the task keeps; ARGV[2] the entry's sequence number in its
-- writer (0: no check); ARGV[3..] field, value pairs.
-- Only this task's oldest entries are removed: another task's dead letters are never touched.
-- An id in the index whose entry is already gone (replayed, purged) is dropped, not counted.
-- Returns {the new entry id, how many of this task's entries were evicted}; {'', 0} when the
-- entry was already written (a batch sent again after a lost reply).
local seq = tonumber(ARGV[2])
if seq > 0 and seq <= tonumber(redis.call('GET', KEYS[3]) or '0') then
  return {'', 0}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
local ms, n = string.match(id, '^(%d+)-(%d+)$')
local score = tonumber(ms) * 1024 + math.min(tonumber(n), 1023)
redis.call('ZADD', KEYS[2], string.format('%.0f', score), id)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
local evicted = 0
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do
    evicted = evicted + redis.call('XDEL', KEYS[1], oldest[i])
  end
end
if seq > 0 then
  redis.call('SET', KEYS[3], seq, 'EX', 86400)
end
return {id, evicted}

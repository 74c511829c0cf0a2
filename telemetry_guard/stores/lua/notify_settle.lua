-- A mail reported ARGV[1] suppressed occurrences: take them off the count KEYS[1].
local n = redis.call('decrby', KEYS[1], ARGV[1])
if n <= 0 then redis.call('del', KEYS[1]) end
return n

-- Give a throttle slot back, only if the token still holds it (a failed send).
-- KEYS[1] the slot; ARGV[1] the token.
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0

-- Take a notification's throttle slot for one window; the same token takes it again.
-- KEYS[1] the slot; ARGV[1] the token, ARGV[2] the window in ms. Returns 1 when held.
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('get', KEYS[1]) == ARGV[1] then return 1 end
return 0

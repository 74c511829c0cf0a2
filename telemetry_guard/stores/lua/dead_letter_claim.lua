-- Claim one dead letter for a replay, before its message is sent.
-- KEYS[1] the dead-letter stream; KEYS[2] the claims hash (entry id -> claim).
-- ARGV[1] the entry id; ARGV[2] this replay's claim (who, when; unique).
-- Returns {'ok'}, {'gone'} (already replayed or removed) or {'claimed', the other claim}.
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return {'gone'}
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  return {'claimed', redis.call('HGET', KEYS[2], ARGV[1])}
end
return {'ok'}

-- After a claimed dead letter's message was sent (ARGV[3] = 'sent'): remove the entry, its
-- index id and the claim. After a send that failed (ARGV[3] = 'release'): drop only the claim,
-- so the entry can be replayed again. Either only while the claim is still this replay's.
-- KEYS[1] the stream; KEYS[2] the claims hash; KEYS[3] the task's index.
-- ARGV[1] the entry id; ARGV[2] this replay's claim; ARGV[3] 'sent' or 'release'.
-- Returns 1 when done, 0 when the claim was no longer this replay's (purged meanwhile).
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] == 'sent' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
end
return 1

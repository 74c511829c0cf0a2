-- Add one error-log record and its id to its task's index (see telemetry_guard/sinks/errorlog.py).
-- KEYS[1] the error log; KEYS[2] the task's index (a stream of the same ids, so `--task`
-- reads only that task's entries); KEYS[3] the id from which every record is indexed;
-- KEYS[4] the writing process's last sequence number (``writer_key`` in stores/keys.py).
-- ARGV[1] the error log's approximate length cap (the index keeps at most as many);
-- ARGV[2] the record's sequence number in its writer (0: no check);
-- ARGV[3..] field, value pairs of the record. Returns the new entry id; nil when the record
-- was already written (a batch sent again after a lost reply).
local seq = tonumber(ARGV[2])
if seq > 0 and seq <= tonumber(redis.call('GET', KEYS[4]) or '0') then
  return false
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
-- Ids only grow while the error log exists: a refused id means it was deleted and made
-- again, so every id in the index points at a record that is gone.
if redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, 'i', '') ~= id then
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, 'i', '')
end
redis.call('SET', KEYS[3], id, 'NX')
if seq > 0 then
  redis.call('SET', KEYS[4], seq, 'EX', 86400)
end
return id

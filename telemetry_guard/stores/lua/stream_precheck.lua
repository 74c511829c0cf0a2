-- One page of a stream scan, pre-checked here like RecordFilter.may_match (cli/stream_query.py):
-- only candidates cross the network.
-- KEYS[1] the stream. ARGV: upper, lower, count, newest first (1/0), grep needle (lower case,
-- empty for none), number of needle groups, then per group its size and its needles.
-- Returns: entries read, the last one's ID, then id, record, replay of each candidate.
local items
if ARGV[4] == '1' then
  items = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
else
  items = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[1], 'COUNT', ARGV[3])
end
local groups, at = {}, 7
for g = 1, tonumber(ARGV[6]) do
  local size, group = tonumber(ARGV[at]), {}
  for k = 1, size do group[k] = ARGV[at + k] end
  groups[g], at = group, at + size + 1
end
local grep = ARGV[5]
local out = {#items, false}
if #items > 0 then out[2] = items[#items][1] end
for _, item in ipairs(items) do
  local fields, record, replay = item[2], '', false
  for f = 1, #fields, 2 do
    if fields[f] == 'record' then record = fields[f + 1]
    elseif fields[f] == 'replay' then replay = fields[f + 1] end
  end
  local ok = true
  for _, group in ipairs(groups) do
    local any = false
    for _, needle in ipairs(group) do
      if string.find(record, needle, 1, true) then any = true break end
    end
    if not any then ok = false break end
  end
  if ok and grep ~= '' then
    ok = string.find(string.lower(record), grep, 1, true) ~= nil
      or string.find(record, '\\u', 1, true) ~= nil
  end
  if ok then
    out[#out + 1] = item[1]
    out[#out + 1] = record
    out[#out + 1] = replay
  end
end
return out

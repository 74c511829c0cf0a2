-- One page of a stream scan, pre-checked here like RecordFilter.may_match (cli/stream_query.py):
-- only candidates cross the network.
-- KEYS[1] the stream; KEYS[2..], when given, indexes of its entry ids (streams of the same
-- ids, one per task): then only the entries they name are read. ARGV: upper, lower, count,
-- newest first (1/0), grep needle (lower case, empty for none), number of needle groups,
-- then per group its size and its needles.
-- Returns: ids read (entries, or index ids), the last one, then id, record, replay of each
-- candidate.
local function range(key)
  if ARGV[4] == '1' then
    return redis.call('XREVRANGE', key, ARGV[1], ARGV[2], 'COUNT', ARGV[3])
  end
  return redis.call('XRANGE', key, ARGV[2], ARGV[1], 'COUNT', ARGV[3])
end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)  -- a comes first in the scan's order
  local ams, aseq = split(a)
  local bms, bseq = split(b)
  if ARGV[4] == '1' then return ams > bms or (ams == bms and aseq > bseq) end
  return ams < bms or (ams == bms and aseq < bseq)
end
local items, read, edge = {}, 0, false
if #KEYS == 1 then
  items = range(KEYS[1])
  read = #items
  if read > 0 then edge = items[read][1] end
else
  local ids = {}
  for k = 2, #KEYS do
    for _, entry in ipairs(range(KEYS[k])) do ids[#ids + 1] = entry[1] end
  end
  if #KEYS > 2 then table.sort(ids, before) end
  read = math.min(#ids, tonumber(ARGV[3]))
  if read > 0 then edge = ids[read] end
  for i = 1, read do
    local found = redis.call('XRANGE', KEYS[1], ids[i], ids[i])
    if found[1] then items[#items + 1] = found[1] end
  end
end
local groups, at = {}, 7
for g = 1, tonumber(ARGV[6]) do
  local size, group = tonumber(ARGV[at]), {}
  for k = 1, size do group[k] = ARGV[at + k] end
  groups[g], at = group, at + size + 1
end
local grep = ARGV[5]
local out = {read, edge}
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

-- One page of `errors stats` counted here. KEYS[1] the stream; ARGV: upper, lower, count.
-- A record written by the error-log sink starts with its task name, and its severity and
-- exception type come before any nested value, so their first occurrence is theirs; a record
-- that does not look like that is sent back whole to be read in Python.
-- Returns: entries read, the last one's ID, groups {task, exception, severity, count,
-- first ID, last ID}, then id and record of each record not counted here.
local items = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local function simple(record, name)
  local at = string.find(record, '"' .. name .. '": "', 1, true)
  if not at then return nil end
  return string.match(record, '^([^"\\]*)"', at + #name + 5)
end
local groups, order, odd = {}, {}, {}
for _, item in ipairs(items) do
  local id, fields, record = item[1], item[2], ''
  for f = 1, #fields, 2 do
    if fields[f] == 'record' then record = fields[f + 1] end
  end
  local task, exc, sev
  if string.sub(record, 1, 15) == '{"task_name": "' then
    task = string.match(record, '^([^"\\]*)"', 16)
    exc = simple(record, 'exception_type')
    sev = simple(record, 'severity')
  end
  if task and exc and sev then
    local key = task .. '\0' .. exc .. '\0' .. sev
    local group = groups[key]
    if group then
      group[4] = group[4] + 1
      group[5] = id
    else
      group = {task, exc, sev, 1, id, id}
      groups[key] = group
      order[#order + 1] = group
    end
  else
    odd[#odd + 1] = id
    odd[#odd + 1] = record
  end
end
local edge = false
if #items > 0 then edge = items[#items][1] end
return {#items, edge, order, odd}

-- Shared by the scripts that write for an attempt (mark_data, settle, sent): neoforge/store/scripts.py
-- puts this text in front of theirs.
-- A fence is "count|holder" (lua/begin.lua adds one to the record's count at every take). It is
-- stale when a later take moved it on: a higher count, or the same count taken by another holder
-- (after a failover lost writes). A lower count means Redis lost this attempt's own take, and
-- nobody took the email since: the attempt is still the latest.
local function stale_fence(record, fence)
  local count, holder = string.match(fence, '^(%d+)|(.*)$')
  local current = tonumber(redis.call('HGET', record, 'fence') or '0')
  return current > tonumber(count)
      or (current == tonumber(count) and redis.call('HGET', record, 'fence_holder') ~= holder)
end

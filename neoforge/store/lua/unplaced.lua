-- The recovery sweep's look at a chunk of the pending index, in one round trip:
-- finished emails leave the index; unfinished ones with no sign of life in
-- Redis (not scheduled, no lease) are returned, for the caller to look for
-- their broker message.
--
-- KEYS[1] the pending index       KEYS[2] the scheduled set
-- KEYS[2n+1], KEYS[2n+2]          the record and the lease of the n-th email
-- ARGV[1] the final statuses, separated by spaces
-- ARGV[n+1] the n-th email's id
-- Returns {id, status, queue, options carried for Celery (JSON) or '', ...}, flat, one
-- quadruple per email left to look for. An email with no record, or a final
-- status, is removed from the pending index.
local final = {}
for status in string.gmatch(ARGV[1], '%S+') do final[status] = true end
local found = {}
for n = 1, #ARGV - 1 do
  local id = ARGV[n + 1]
  local record = redis.call('HMGET', KEYS[2 * n + 1], 'status', 'queue', 'celery')
  local status = record[1]
  if not status or final[status] then
    redis.call('ZREM', KEYS[1], id)
  elseif status ~= 'scheduled' and redis.call('EXISTS', KEYS[2 * n + 2]) == 0
      and not redis.call('ZSCORE', KEYS[2], id) then
    found[#found + 1] = id
    found[#found + 1] = status
    found[#found + 1] = record[2] or ''
    found[#found + 1] = record[3] or ''
  end
end
return found

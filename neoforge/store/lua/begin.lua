-- Start a delivery attempt: take the email's lease and mark it sending.
-- Missing, finished or scheduled emails are reported and left alone; an
-- email leased by another sender is reported with the lease holder, unless
-- that holder's process has stopped heartbeating (ALIVE prefix + holder's
-- "host|pid"): then its lease is taken over at once, from any host. Every take
-- adds one to the record's fence (and names the holder): the attempt carries both, and each of its
-- later writes (lua/mark_data.lua, settle.lua, sent.lua) is refused once
-- another take moved it on. Expiry is judged by Redis's clock, and only once
-- the lease is ours, so a stray message cannot expire an email another
-- worker is sending. An active email whose content was purged is cancelled.
--
-- KEYS[1] the record    KEYS[2] the payload    KEYS[3] the lease
-- KEYS[4] the pending index                    KEYS[5] the metrics hash
-- ARGV[1] now (ISO 8601)          ARGV[2] worker name    ARGV[3] lease holder ("host|pid|token")
-- ARGV[4] lease length, ms        ARGV[5] heartbeat length, ms (this process's, renewed here)
-- ARGV[6] a dead holder's lease to break, or ''          ARGV[7] the email id
-- ARGV[8] heartbeat key prefix (neoforge/store/keys.py ALIVE)
-- Returns {status, payload or lease holder, attempt number[, created_ts, priority,
--          recipients left (JSON) or '', recipient outcomes so far (JSON) or '',
--          fence (the count), the silent holder taken over or '']};
-- 'unknown' has the same length; an email this call expired: {'expired', false, 0, 'now'}.
redis.replicate_commands()
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', false, 0} end
if status ~= 'queued' and status ~= 'sending' and status ~= 'retrying' then
  return {status, false, 0}
end
local function process(holder) return string.match(holder, '^(.*)|[^|]*$') or holder end
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) == ARGV[6] then redis.call('DEL', KEYS[3]) end
local silent = ''
if not redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then
  local holder = redis.call('GET', KEYS[3])
  if redis.call('EXISTS', ARGV[8] .. process(holder)) == 1 then
    return {'leased', holder, redis.call('PTTL', KEYS[3])}
  end
  -- Its process stopped heartbeating (killed, stopped, cut off): ours now.
  silent = holder
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
redis.call('SET', ARGV[8] .. process(ARGV[3]), '1', 'PX', ARGV[5])
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'fence_holder', ARGV[3])
if status == 'sending' then
  local attempts = redis.call('HGET', KEYS[1], 'attempts')
  if redis.call('HGET', KEYS[1], 'data_attempt') == attempts then
    -- The last attempt's sender went away after it began DATA: the server may
    -- have the message. Never a second copy: the caller dead-letters it (the
    -- lease stays ours until then).
    return {'unknown', false, tonumber(attempts), '', '', '', '', fence, silent}
  end
end
local function finish(final)
  redis.call('HSET', KEYS[1], 'status', final, 'updated_at', ARGV[1], 'next_attempt_at', '')
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[7])
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  finish('cancelled')
  return {'cancelled', false, 0}
end
local expires = redis.call('HGET', KEYS[1], 'expires_ts')
local clock = redis.call('TIME')
if expires and expires ~= '' and tonumber(expires) <= tonumber(clock[1]) + tonumber(clock[2]) / 1e6 then
  finish('expired')
  local priority = redis.call('HGET', KEYS[1], 'priority') or 'transactional'
  redis.call('HINCRBY', KEYS[5], 'expired|' .. priority, 1)
  return {'expired', false, 0, 'now'}
end
redis.call('HSET', KEYS[1], 'status', 'sending', 'updated_at', ARGV[1], 'worker', ARGV[2])
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local created = redis.call('HGET', KEYS[1], 'created_ts') or ''
local priority = redis.call('HGET', KEYS[1], 'priority') or 'transactional'
return {'sending', redis.call('GET', KEYS[2]), n, created, priority,
        redis.call('HGET', KEYS[1], 'rcpt_todo') or '', redis.call('HGET', KEYS[1], 'outcomes') or '',
        fence, silent}

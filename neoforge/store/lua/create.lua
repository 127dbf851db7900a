-- Record a new email, unless its id or its idempotency key is taken already.
-- A scheduled email enters the scheduled set; any other the pending index,
-- and its broker message, if given, is pushed here too (one round trip);
-- without one, it is published right after (the recovery sweep covers a
-- publish that never happened). An API key's charge, if given, is counted
-- first; past a limit nothing else is written.
--
-- KEYS[1]   the record                    KEYS[2]  the payload
-- KEYS[3]   the idempotency key, or ''    KEYS[4]  the scheduled set
-- KEYS[5]   the pending index             KEYS[6]  the metrics hash
-- KEYS[7]   the broker queue's list, or ''
-- KEYS[8]   the key's request counter, or ''   KEYS[9]  its recipient counter
-- KEYS[10..] one recipient index per address (sorted set: email ids by creation time)
-- ARGV[1]   the email id                  ARGV[2]  the payload (packed)
-- ARGV[3]   idempotency window, seconds   ARGV[4]  due time (epoch seconds), or '' for now
-- ARGV[5]   recipient index life, s       ARGV[6]  the broker message (kombu's layout), or ''
-- ARGV[7]   requests to charge            ARGV[8]  recipients to charge
-- ARGV[9]   request limit                 ARGV[10] recipient limit
-- ARGV[11..] the record's field/value pairs
-- Returns {id, 1} for a new record, {id of the earlier email, 0} otherwise,
-- {'', -1, requests used, recipients used} past the key's limit.
if KEYS[8] ~= '' then
  local requests = redis.call('INCRBY', KEYS[8], ARGV[7])
  redis.call('EXPIRE', KEYS[8], 120)
  local recipients = redis.call('INCRBY', KEYS[9], ARGV[8])
  redis.call('EXPIRE', KEYS[9], 120)
  if requests > tonumber(ARGV[9]) or recipients > tonumber(ARGV[10]) then
    return {'', -1, requests, recipients}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {ARGV[1], 0}
end
if KEYS[3] ~= '' then
  if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[3]) then
    return {redis.call('GET', KEYS[3]), 0}
  end
end
local now = redis.call('TIME')
local ts = now[1] + now[2] / 1000000
redis.call('HSET', KEYS[1], unpack(ARGV, 11))
for i = 10, #KEYS do
  -- By creation time; entries older than the index's life leave at each write, so the
  -- index of someone who gets mail every day does not grow forever.
  redis.call('ZADD', KEYS[i], ts, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ts - ARGV[5])
  redis.call('EXPIRE', KEYS[i], ARGV[5])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[6], 'queued|' .. (redis.call('HGET', KEYS[1], 'priority') or 'transactional'), 1)
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'published_ts', ts)
  redis.call('ZADD', KEYS[5], ts, ARGV[1])
  if KEYS[7] ~= '' then
    redis.call('LPUSH', KEYS[7], ARGV[6])
  end
end
return {ARGV[1], 1}

-- Record a new email, unless its id or its idempotency key is taken already.
-- A scheduled email enters the scheduled set; any other the pending index
-- (its broker message is published right after: the recovery sweep covers a
-- publish that never happened).
--
-- KEYS[1]   the record                    KEYS[2]  the payload
-- KEYS[3]   the idempotency key, or ''    KEYS[4]  the scheduled set
-- KEYS[5]   the pending index             KEYS[6]  the metrics hash
-- KEYS[7..] one recipient index per address (sorted set: email ids by creation time)
-- ARGV[1]   the email id                  ARGV[2]  the payload (packed)
-- ARGV[3]   idempotency window, seconds   ARGV[4]  due time (epoch seconds), or '' for now
-- ARGV[5]   recipient index life, s         ARGV[6..] the record's field/value pairs
-- Returns {id, 1} for a new record, {id of the earlier email, 0} otherwise.
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
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
for i = 7, #KEYS do
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
end
return {ARGV[1], 1}

-- The SMTP server accepted the email: record it as sent and drop its content.
--
-- Frees before it writes: its first commands delete (the payload, the lease,
-- index entries), and Redis refuses a script's memory-growing command at
-- maxmemory only while the script has written nothing yet. So a full Redis
-- (noeviction) still takes this write, which is what makes room again.
-- Recording the same acceptance twice (a journal replay) changes nothing.
--
-- KEYS[1] the record      KEYS[2] its timeline     KEYS[3] the payload
-- KEYS[4] the lease       KEYS[5] pending index    KEYS[6] dead-letter index
-- KEYS[7] counters        KEYS[8] latency buckets  KEYS[9] send-duration buckets
-- KEYS[10] this minute's counters (the console's chart)
-- ARGV[1] the email id    ARGV[2] fields to set (JSON object)   ARGV[3] timeline entry (JSON)
-- ARGV[4] counter field   ARGV[5] latency bucket    ARGV[6] latency (s)
-- ARGV[7] duration bucket ARGV[8] duration (s)      ARGV[9] record TTL (s)
-- ARGV[10] the minute counters' TTL (s)   ARGV[11] the provider's counter field, or ''
-- ARGV[12] the attempt's fence, "count|holder" ('' for an acceptance journaled before fences existed)
-- Returns 1 if recorded, 0 if it was recorded already, -1 if refused: another
-- take moved the fence on (lua/begin.lua, and the check in lua/settle.lua), so
-- nothing is written but the count.
if ARGV[12] ~= '' and stale_fence(KEYS[1], ARGV[12]) then
  redis.call('HINCRBY', KEYS[7], 'fenced|sent', 1)
  return -1
end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
if redis.call('HGET', KEYS[1], 'status') == 'sent' then return 0 end
redis.call('HDEL', KEYS[1], 'last_error', 'last_smtp_code', 'error_class', 'failed_at', 'rcpt_todo')
-- The compact sent form: what only an unfinished email needs goes (the key names the id; the
-- timeline names the worker), so the record is a few hundred bytes for EMAIL_STATUS_TTL.
-- The fence's count stays (a late writer with an older count is refused by it); its holder goes
-- (past the 64 bytes of a compact hash), and a sent record refuses every attempt's write anyway.
redis.call('HDEL', KEYS[1], 'id', 'worker', 'published_ts', 'next_attempt_at', 'celery', 'expires_ts',
           'fence_holder')
if redis.call('HGET', KEYS[1], 'template') == '' then redis.call('HDEL', KEYS[1], 'template') end
local fields = cjson.decode(ARGV[2])
local flat = {}
for name, value in pairs(fields) do
    flat[#flat + 1] = name
    flat[#flat + 1] = value
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[7], ARGV[4], 1)
redis.call('HINCRBY', KEYS[8], ARGV[5], 1)
redis.call('HINCRBY', KEYS[8], 'count', 1)
redis.call('HINCRBYFLOAT', KEYS[8], 'sum', ARGV[6])
redis.call('HINCRBY', KEYS[9], ARGV[7], 1)
redis.call('HINCRBY', KEYS[9], 'count', 1)
redis.call('HINCRBYFLOAT', KEYS[9], 'sum', ARGV[8])
redis.call('HINCRBY', KEYS[10], 'sent', 1)
redis.call('EXPIRE', KEYS[10], ARGV[10])
if ARGV[11] ~= '' then redis.call('HINCRBY', KEYS[7], ARGV[11], 1) end
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[9])
return 1

-- Put a failed email back in the queue: attempts restart, history stays. It
-- enters the pending index at once, so a publish that fails is recovered.
-- A purged email (no content left) cannot be requeued, nor one the SMTP server
-- accepted (a delivery recorded late, from a worker's journal, has sent_at).
--
-- KEYS[1] the record    KEYS[2] its timeline    KEYS[3] the dead-letter index
-- KEYS[4] the payload   KEYS[5] the pending index
-- ARGV[1] the email id  ARGV[2] now (ISO 8601)  ARGV[3] timeline entry (JSON)
-- Returns 1 if requeued, 0 if the email is not failed or has no content.
if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then return 0 end
if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'sent_at') == 1 then return 0 end
local now = redis.call('TIME')
local ts = now[1] + now[2] / 1000000
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'updated_at', ARGV[2],
           'requeued_at', ARGV[2], 'next_attempt_at', '', 'published_ts', ts)
redis.call('HDEL', KEYS[1], 'data_attempt')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[5], ts, ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1

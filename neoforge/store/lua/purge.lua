-- Drop an email's content (payload, refused addresses); an unfinished email
-- is cancelled so that no worker sends it.
--
-- KEYS[1] the record    KEYS[2] the payload    KEYS[3] the pending index
-- KEYS[4] the scheduled set                    KEYS[5] the lease
-- ARGV[1] the email id  ARGV[2] now (ISO 8601)
-- Returns the email's status afterwards, or nil for an email with no record.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'outcomes')
redis.call('HSET', KEYS[1], 'purged_at', ARGV[2], 'updated_at', ARGV[2])
if status ~= 'sent' and status ~= 'failed' and status ~= 'expired' and status ~= 'cancelled' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'next_attempt_at', '')
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  status = 'cancelled'
end
return status

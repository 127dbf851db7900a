-- Record an email that ended before it was ever queued: a message a client
-- published straight to the broker whose fields are not a valid email
-- (failed, into the dead letters), or that Celery expired before a worker ran
-- it (expired). No content is kept: there is nothing valid to requeue. An id
-- that already has a record is left alone.
--
-- KEYS[1] the record      KEYS[2] its timeline
-- KEYS[3] the dead-letter index, or '' for none       KEYS[4] the metrics hash
-- ARGV[1] the email id    ARGV[2] now (epoch seconds)    ARGV[3] timeline entry (JSON)
-- ARGV[4] the metrics field to count                     ARGV[5] record expiry (seconds)
-- ARGV[6..] the record's field/value pairs
-- Returns 1 if recorded, 0 if the id had a record already.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('RPUSH', KEYS[2], ARGV[3])
if KEYS[3] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
end
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1

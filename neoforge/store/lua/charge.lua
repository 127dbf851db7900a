-- Count one API request and its recipients against a key's current minute.
--
-- KEYS[1] the key's request counter    KEYS[2] the key's recipient counter
-- ARGV[1] requests to add              ARGV[2] recipients to add
-- Returns {requests, recipients} used this minute.
local requests = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 120)
local recipients = redis.call('INCRBY', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], 120)
return {requests, recipients}

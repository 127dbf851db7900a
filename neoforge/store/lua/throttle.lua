-- A provider answered "too much mail": hold every sender of it for a while,
-- then run at half the rate (a quarter after a second slow-down, down to an
-- eighth) until the slow period ends. Time is the Redis server's (TIME).
-- Replies that arrive while the hold is on (mail already in flight) extend
-- nothing: one slow-down per hold.
--
-- KEYS[1] the provider's bucket hash    KEYS[2] the metrics hash
-- ARGV[1] hold, seconds    ARGV[2] slow period after the hold, seconds
-- ARGV[3] the provider's name (for the metrics)
-- Returns the seconds until the hold ends (a string).
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'hold', 'factor', 'slow_until')
local hold = tonumber(h[1] or '0')
if hold > now then return tostring(hold - now) end
local factor = tonumber(h[2] or '1')
if now >= tonumber(h[3] or '0') then factor = 1 end
factor = math.max(0.125, factor / 2)
hold = now + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'hold', tostring(hold), 'factor', tostring(factor),
           'slow_until', tostring(hold + tonumber(ARGV[2])), 'tokens', '0', 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) + tonumber(ARGV[2]) + 3600))
redis.call('HINCRBY', KEYS[2], 'throttled|' .. ARGV[3], 1)
return tostring(hold - now)

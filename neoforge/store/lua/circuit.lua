-- One failure of one SMTP provider (connection, timeout, TLS or login, or a
-- 4xx reply): counted within a window; at THRESHOLD failures in the window
-- the provider's circuit opens and sending moves to the next provider until
-- it ends. Each opening in a row doubles it, up to a cap. Time is the Redis
-- server's (TIME).
--
-- KEYS[1] the provider's circuit hash    KEYS[2] its probe lock    KEYS[3] the metrics hash
-- ARGV[1] failures that open the circuit    ARGV[2] window for counting them, seconds
-- ARGV[3] first opening, seconds    ARGV[4] longest opening, seconds
-- ARGV[5] the provider's name    ARGV[6] the error class
-- Returns {1 if the circuit is open now, else 0, seconds until it ends (a string)}.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local h = redis.call('HMGET', KEYS[1], 'until', 'trips', 'fails', 'since')
local until_ts = tonumber(h[1] or '0')
if until_ts > now then return {1, tostring(until_ts - now)} end
local fails = tonumber(h[3] or '0')
local since = tonumber(h[4] or '0')
if now - since > tonumber(ARGV[2]) then fails = 0; since = now end
fails = fails + 1
redis.call('HINCRBY', KEYS[3], 'provider_failures|' .. ARGV[5] .. '|' .. ARGV[6], 1)
if fails < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'fails', fails, 'since', tostring(since))
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) + tonumber(ARGV[4]) * 2))
  return {0, '0'}
end
local trips = tonumber(h[2] or '0')
local seconds = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * (2 ^ trips))
until_ts = now + seconds
redis.call('HSET', KEYS[1], 'until', tostring(until_ts), 'trips', trips + 1, 'fails', 0, 'since', tostring(now),
           'error_class', ARGV[6])
-- Kept past its end, so the next opening knows how many came before.
redis.call('EXPIRE', KEYS[1], math.ceil(seconds + tonumber(ARGV[4]) * 2))
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[3], 'failover|' .. ARGV[5], 1)
return {1, tostring(seconds)}

-- Pause sending for every worker after a setup failure (login refused, TLS),
-- or extend the pause: each trip in a row doubles it, up to a cap.
--
-- Time is the Redis server's (TIME): a worker's clock never shortens or stretches a pause.
--
-- KEYS[1] the pause hash     KEYS[2] the probe lock    KEYS[3] the metrics hash
-- ARGV[1] unused (was the caller's clock)   ARGV[2] first pause, seconds   ARGV[3] longest pause, seconds
-- ARGV[4] error class            ARGV[5] reason (no address, no secret)
-- Returns {the pause's end, now} (epoch seconds, Redis's clock).
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local trips = tonumber(redis.call('HGET', KEYS[1], 'trips') or '0')
local until_ts = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if until_ts > now then
  -- Paused already (another worker tripped it first): keep that pause.
  return {tostring(until_ts), tostring(now)}
end
local seconds = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * (2 ^ trips))
until_ts = now + seconds
redis.call('HSET', KEYS[1], 'trips', trips + 1, 'until', tostring(until_ts), 'since',
           redis.call('HGET', KEYS[1], 'since') or tostring(now), 'error_class', ARGV[4], 'reason', ARGV[5])
-- Kept past its end, so the next trip knows how many came before.
redis.call('EXPIRE', KEYS[1], math.ceil(seconds + tonumber(ARGV[3]) * 2))
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[3], 'paused|' .. ARGV[4], 1)
return {tostring(until_ts), tostring(now)}

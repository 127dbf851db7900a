-- A message for these emails was just published: they are pending from now,
-- by Redis's clock (the recovery sweep compares these times with its own
-- reading of that clock, never a host's).
--
-- KEYS[1] the pending index    KEYS[2..] the emails' records (one per id)
-- ARGV[1] 'again' (a message published again: only emails still pending are
--         touched) or 'first' (also stamps the record's published_ts)
-- ARGV[2..] the email ids, in the order of KEYS[2..]
-- Returns the time written (epoch seconds, as a string).
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for i = 2, #ARGV do
  if ARGV[1] == 'again' then
    redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i])
  else
    redis.call('HSET', KEYS[i], 'published_ts', now)
    redis.call('ZADD', KEYS[1], now, ARGV[i])
  end
end
return tostring(now)

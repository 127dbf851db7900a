-- Count API use against a key's current minute: one counter per KEY, each
-- added to and given a two-minute expiry, all in one round trip.
--
-- KEYS[i] a counter of the key (requests, recipients or reads)
-- ARGV[i] how much to add to KEYS[i]
-- Returns the counters' values after adding, in KEYS order.
local used = {}
for i, key in ipairs(KEYS) do
  used[i] = redis.call('INCRBY', key, ARGV[i])
  redis.call('EXPIRE', key, 120)
end
return used

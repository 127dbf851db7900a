-- An attempt is about to send DATA: mark it, if its lease is still its own.
-- Once marked, an attempt interrupted is never sent again (lua/begin.lua
-- reports 'unknown'). Refused when another take moved the fence on (this
-- sender was stopped or cut off past its heartbeat): then it must not send.
--
-- A fence is "count|holder". Stale when a later take moved it on: a higher count, or the same
-- count taken by another holder (after a failover lost writes). A lower count means Redis lost
-- this attempt's own take, and nobody took the email since: the attempt is still the latest.
--
-- KEYS[1] the record    KEYS[2] the metrics hash
-- ARGV[1] the attempt's fence ("count|holder")    ARGV[2] the attempt number
-- Returns 1 if marked, 0 if refused (nothing written but the refusal's count).
local count, holder = string.match(ARGV[1], '^(%d+)|(.*)$')
local fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if fence > tonumber(count)
    or (fence == tonumber(count) and redis.call('HGET', KEYS[1], 'fence_holder') ~= holder)
    or redis.call('HGET', KEYS[1], 'status') == 'sent' then
  redis.call('HINCRBY', KEYS[2], 'fenced|data', 1)
  return 0
end
redis.call('HSET', KEYS[1], 'data_attempt', ARGV[2])
return 1

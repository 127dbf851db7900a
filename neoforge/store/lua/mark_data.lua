-- An attempt is about to send DATA: mark it, if its lease is still its own.
-- Once marked, an attempt interrupted is never sent again (lua/begin.lua
-- reports 'unknown'). Refused when another take moved the fence on (this
-- sender was stopped or cut off past its heartbeat): then it must not send.
--
-- What makes a fence stale: lua/fence.lua (stale_fence).
--
-- KEYS[1] the record    KEYS[2] the metrics hash
-- ARGV[1] the attempt's fence ("count|holder")    ARGV[2] the attempt number
-- Returns 1 if marked, 0 if refused (nothing written but the refusal's count).
if stale_fence(KEYS[1], ARGV[1]) or redis.call('HGET', KEYS[1], 'status') == 'sent' then
  redis.call('HINCRBY', KEYS[2], 'fenced|data', 1)
  return 0
end
redis.call('HSET', KEYS[1], 'data_attempt', ARGV[2])
return 1

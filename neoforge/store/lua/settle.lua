-- End an attempt that sent nothing new, if its lease is still its own: record
-- it retrying, paused, failed or suppressed, or give the attempt back. The
-- fence check comes first: a sender whose lease was taken over (stopped, or
-- cut off, past its heartbeat) writes nothing but the refusal's count. An
-- empty fence is a write outside any attempt (an operator's, a parent
-- process's late verdict): not checked.
-- What makes a fence stale: lua/fence.lua (stale_fence).
--
-- KEYS[1] the record      KEYS[2] its timeline     KEYS[3] the payload    KEYS[4] the lease
-- KEYS[5] pending index   KEYS[6] dead-letter index   KEYS[7] counters   KEYS[8] this minute's counters
-- ARGV[1] the email id    ARGV[2] the attempt's fence ("count|holder"), or ''
-- ARGV[3] what is written (its label)
-- ARGV[4] fields to set (JSON object)     ARGV[5] fields to delete (JSON array)
-- ARGV[6] change to the attempt count     ARGV[7] timeline entry (JSON), or ''
-- ARGV[8] counter fields to add one to (JSON array)
-- ARGV[9] this minute's counter field, or ''    ARGV[10] the minute counters' TTL (s)
-- ARGV[11] 'dead' (into the dead letters, by Redis's clock), 'done' (finished: out of the
--          pending index, content dropped, record expiring after ARGV[12] s) or ''
-- Returns 1 if written, 0 if refused.
redis.replicate_commands()
-- Sent is final: whatever an attempt says afterwards (its count lost in a failover) is late.
if ARGV[2] ~= '' and (stale_fence(KEYS[1], ARGV[2]) or redis.call('HGET', KEYS[1], 'status') == 'sent') then
  redis.call('HINCRBY', KEYS[7], 'fenced|' .. ARGV[3], 1)
  return 0
end
local fields = cjson.decode(ARGV[4])
local flat = {}
for name, value in pairs(fields) do
  flat[#flat + 1] = name
  flat[#flat + 1] = value
end
if #flat > 0 then redis.call('HSET', KEYS[1], unpack(flat)) end
local gone = cjson.decode(ARGV[5])
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
if ARGV[6] ~= '0' then redis.call('HINCRBY', KEYS[1], 'attempts', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[7]) end
for _, counter in ipairs(cjson.decode(ARGV[8])) do redis.call('HINCRBY', KEYS[7], counter, 1) end
if ARGV[9] ~= '' then
  redis.call('HINCRBY', KEYS[8], ARGV[9], 1)
  redis.call('EXPIRE', KEYS[8], ARGV[10])
end
redis.call('DEL', KEYS[4])
if ARGV[11] == 'dead' then
  local clock = redis.call('TIME')
  redis.call('ZADD', KEYS[6], tonumber(clock[1]) + tonumber(clock[2]) / 1e6, ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
elseif ARGV[11] == 'done' then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[12])
  redis.call('EXPIRE', KEYS[2], ARGV[12])
end
return 1

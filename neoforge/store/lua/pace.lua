-- Take N tokens from one or more token buckets at once (a provider's, and
-- recipient domains'), shared by every worker on every host. Time is the
-- Redis server's (TIME), never a host clock. A bucket refills at its rate up
-- to its burst; a provider told to slow down ("too much mail") holds every
-- sender until its hold ends, then runs at a lowered rate for a while.
-- Transactional mail comes first: while a transactional email waits, bulk
-- takes nothing, and a bulk email's wait counts the transactional ones
-- waiting ahead of it. Waiters are told when to come back one after
-- another (each adds to the bucket's backlog), so they do not all return
-- at once.
--
-- KEYS[i] bucket hash i (tokens, ts, hold, factor, slow_until, tx_want, tx_backlog, bulk_backlog)
-- KEYS[#KEYS] the metrics hash
-- ARGV[1] tokens wanted (N)     ARGV[2] 'transactional' or 'bulk'
-- ARGV[3] '1': grant what there is (up to N), '0': all N or none
-- ARGV[4] a label for the metrics ('' for none)
-- ARGV[3+2i], ARGV[4+2i] bucket i's rate (tokens a second, 0 for no limit) and burst
-- Returns {tokens granted, seconds to wait before asking for the rest (a string)}.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n = tonumber(ARGV[1])
local tx = ARGV[2] == 'transactional'
local partial = ARGV[3] == '1'
local count = #KEYS - 1
local state = {}
local grant = n
for i = 1, count do
  local h = redis.call('HMGET', KEYS[i], 'tokens', 'ts', 'hold', 'factor', 'slow_until',
                       'tx_want', 'tx_backlog', 'bulk_backlog')
  local rate = tonumber(ARGV[3 + 2 * i])
  local burst = tonumber(ARGV[4 + 2 * i])
  local s = {rate = rate, burst = burst, hold = tonumber(h[3] or '0'),
             factor = tonumber(h[4] or '1'), slow_until = tonumber(h[5] or '0'),
             tx_want = tonumber(h[6] or '0'), txb = tonumber(h[7] or '0'), bkb = tonumber(h[8] or '0')}
  local elapsed = math.max(0, now - tonumber(h[2] or tostring(now)))
  if now >= s.slow_until then s.factor = 1 end
  s.r = rate * s.factor
  if rate > 0 then
    s.tokens = math.min(burst, tonumber(h[1] or tostring(burst)) + elapsed * s.r)
    -- Tokens that came back went to the waiters, transactional first.
    local served = elapsed * s.r
    local from_tx = math.min(s.txb, served)
    s.txb = s.txb - from_tx
    s.bkb = math.max(0, s.bkb - (served - from_tx))
  else
    s.tokens = n
  end
  local can = math.floor(s.tokens + 1e-9)
  if now < s.hold then can = 0 end
  if not tx and now < s.tx_want then can = 0 end
  grant = math.min(grant, can)
  state[i] = s
end
if grant < 0 then grant = 0 end
if not partial and grant < n then grant = 0 end
local wait = 0
local short = n - grant
for i = 1, count do
  local s = state[i]
  local w = 0
  if short > 0 then
    if s.r > 0 then
      if tx then s.txb = s.txb + short else s.bkb = s.bkb + short end
      local ahead = s.txb
      if not tx then ahead = ahead + s.bkb end
      w = math.max(0, ahead - (s.tokens - grant)) / s.r
    end
    if now < s.hold then w = math.max(w, s.hold - now) end
    if not tx and now < s.tx_want then w = math.max(w, s.tx_want - now) end
    if tx and s.r > 0 then s.tx_want = math.max(s.tx_want, now + w + 1 / s.r) end
  end
  if w > wait then wait = w end
  if s.rate > 0 then
    redis.call('HSET', KEYS[i], 'tokens', tostring(s.tokens - grant), 'ts', tostring(now),
               'tx_backlog', tostring(s.txb), 'bulk_backlog', tostring(s.bkb), 'tx_want', tostring(s.tx_want),
               'factor', tostring(s.factor))
    redis.call('EXPIRE', KEYS[i], 3600)
  end
end
if ARGV[4] ~= '' then
  if grant > 0 then redis.call('HINCRBY', KEYS[count + 1], 'provider_attempts|' .. ARGV[4], grant) end
  if short > 0 then redis.call('HINCRBY', KEYS[count + 1], 'paced|' .. ARGV[2], short) end
end
return {grant, tostring(wait)}

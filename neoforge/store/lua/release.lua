-- A scheduled email is due: it becomes queued before it is published, so the
-- worker that receives it finds it ready.
--
-- KEYS[1] the record    ARGV[1] now (ISO 8601)
-- Returns {status, queue, what Celery must get back (JSON) or ''}, or nil for an email with no record.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'scheduled' then
  redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1], 'next_attempt_at', '')
  status = 'queued'
end
return {status, redis.call('HGET', KEYS[1], 'queue') or '', redis.call('HGET', KEYS[1], 'celery') or ''}

"""Celery's Redis result backend: no pub/sub subscription per publish, one round trip per store."""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

__all__ = ["QuietRedisBackend"]

# What BaseKeyValueStoreBackend._store_result and RedisBackend._set do
# (celery/backends/base.py, redis.py): keep a SUCCESS already stored (a
# redelivered task must not overwrite it), else SET with expiry and PUBLISH
# for waiting .get() calls. Celery does it as a GET, then a MULTI: two round
# trips for every email.
_STORE = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class QuietRedisBackend(RedisBackend):  # type: ignore[misc]
    """Stores results like RedisBackend, in one script; publishing does not subscribe to the result.

    The stock backend subscribes to a task's result channel whenever the task
    is published (celery/backends/redis.py, ``on_task_call``), so that a later
    ``.get()`` is fast. Our callers never wait on results (statuses live in
    our own records), and in a long-running API process those subscriptions
    pile up until Redis drops the connection for overflowing its pub/sub
    buffer. ``AsyncResult.get()`` still works: it subscribes when called.
    """

    _script: Any = None

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        self.ensure(self._run_store, (self.get_key_for_task(task_id), value))
        return result

    def _run_store(self, key: bytes | str, value: str | bytes) -> None:
        if self._script is None:
            self._script = self.client.register_script(_STORE)
        expires = self.expires
        seconds = int(expires.total_seconds() if hasattr(expires, "total_seconds") else expires or 0)
        self._script(keys=[key], args=[value, seconds])

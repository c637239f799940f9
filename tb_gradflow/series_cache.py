"""A small thread-safe cache of decoded series, invalidated by a stamp.

    >>> cache = SeriesCache(max_bytes=2**20)
    >>> cache.get_or_compute(("run", "grad_norm"), stamp=(10, 1.5), compute=lambda: "decoded")
    'decoded'
    >>> cache.get_or_compute(("run", "grad_norm"), stamp=(10, 1.5), compute=lambda: "not called")
    'decoded'
    >>> cache.get_or_compute(("run", "grad_norm"), stamp=(20, 2.5), compute=lambda: "new rows")
    'new rows'

TensorBoard serves requests on several threads and reloads the logdir in the
background. Each entry is stored with a stamp (the series' `max_step` and
`max_wall_time` from a cheap `list_tensors`): a reload that appended data
changes the stamp, and the next request recomputes. Entries are evicted
least-recently-used once their total size passes `max_bytes`.
"""

import collections
import threading


class SeriesCache:
    def __init__(self, max_bytes=512 * 2**20):
        self._max_bytes = max_bytes
        self._entries = collections.OrderedDict()  # key -> (stamp, value, size)
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks = {}  # key -> Lock serialising its computation

    def get_or_compute(self, key, stamp, compute, size=lambda value: 0):
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(key)
                return entry[1]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        # One computation per key at a time: requests that miss together (the
        # dashboard asks for a run's heatmap, alert marks and alerts at once)
        # wait for the first instead of repeating seconds of work. Other keys
        # proceed in parallel.
        with key_lock:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0] == stamp:
                    self._entries.move_to_end(key)
                    return entry[1]
            value = compute()
            self._store(key, stamp, value, size)
        return value

    def get(self, key, stamp, default=None):
        """The value stored under `key` with this `stamp`, else `default`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != stamp:
                return default
            self._entries.move_to_end(key)
            return entry[1]

    def contains(self, key, stamp):
        """Whether `key` holds a value of this `stamp` (a batched read skips it)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry[0] == stamp

    def _store(self, key, stamp, value, size):
        nbytes = int(size(value))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[key] = (stamp, value, nbytes)
            self._bytes += nbytes
            while self._bytes > self._max_bytes and len(self._entries) > 1:
                _, (_, _, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def clear(self):
        with self._lock:
            self._entries.clear()
            self._bytes = 0

"""One rate-limit count for every gunicorn worker of one host, without Redis (#38).

Flask-Limiter's ``memory://`` counts in each worker process alone: with 2 workers a client
got twice the limit. Several hosts share Redis (``RATE_LIMIT_STORAGE_URI``); one host with
several workers shares this: a small table of fixed-window counters in memory that every
worker maps (a ``memfd``, made by gunicorn's master before it forks, so no file is written
and no other process can open it). A limits ``Storage`` registered as ``workers://FD``.

Each entry holds a key's digest (never the client's address), its count and when its window
ends. Writers take a thread lock (threads of one worker) and a POSIX record lock on the
memfd (processes; the kernel drops it if a worker dies holding it, so a killed worker cannot
wedge the others). When the table is full, the entry whose window ends first is reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlparse

from limits.storage import Storage

SCHEME = "workers"
SLOTS = 8192  # distinct (client, limit) keys in one window before the oldest is reused
PROBE = 64  # slots looked at per key: enough for a table at most half full
ENTRY = struct.Struct("<16sId")  # key digest, count, window end (epoch seconds)


def share_across_workers(environ, workers: int) -> str | None:
    """In gunicorn's master: when several workers would count alone, make the shared table and
    point ``RATE_LIMIT_STORAGE_URI`` at it (inherited by every worker). Returns the URI, or None
    when one worker or an operator's storage (Redis) already gives one count."""
    if workers <= 1 or environ.get("RATE_LIMIT_STORAGE_URI", "").strip() not in ("", "memory://"):
        return None
    fd = os.memfd_create("lesion-screening-rate-limit", 0)  # no MFD_CLOEXEC needed: workers are forked, not exec'd
    os.ftruncate(fd, SLOTS * ENTRY.size)
    environ["RATE_LIMIT_STORAGE_URI"] = f"{SCHEME}://{fd}"
    return environ["RATE_LIMIT_STORAGE_URI"]


def digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


class WorkerSharedStorage(Storage):
    """Fixed-window counters in the master's shared memory (``workers://FD``)."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options):
        self._fd = int(urlparse(uri).netloc)
        self._map = mmap.mmap(self._fd, SLOTS * ENTRY.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._threads = threading.Lock()
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self):
        return OSError

    @contextmanager
    def _locked(self):
        with self._threads:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _read(self, slot: int) -> tuple[bytes, int, float]:
        return ENTRY.unpack_from(self._map, slot * ENTRY.size)

    def _find(self, key: str, now: float) -> tuple[int, bool]:
        """(slot, live): the key's live slot, else a free, expired or soonest-ending one to reuse."""
        wanted = digest(key)
        start = int.from_bytes(wanted[:8], "little") % SLOTS
        reuse, reuse_end = None, float("inf")
        for step in range(PROBE):
            slot = (start + step) % SLOTS
            held, _, ends = self._read(slot)
            if held == wanted and ends > now:
                return slot, True
            end = 0.0 if ends <= now else ends
            if end < reuse_end:
                reuse, reuse_end = slot, end
        return reuse, False

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._locked():
            slot, live = self._find(key, now)
            _, count, ends = self._read(slot) if live else (None, 0, now + expiry)
            ENTRY.pack_into(self._map, slot * ENTRY.size, digest(key), count + amount, ends)
            return count + amount

    def get(self, key: str) -> int:
        with self._locked():
            slot, live = self._find(key, time.time())
            return self._read(slot)[1] if live else 0

    def get_expiry(self, key: str) -> float:
        now = time.time()
        with self._locked():
            slot, live = self._find(key, now)
            return self._read(slot)[2] if live else now

    def clear(self, key: str) -> None:
        with self._locked():
            slot, live = self._find(key, time.time())
            if live:
                ENTRY.pack_into(self._map, slot * ENTRY.size, bytes(16), 0, 0.0)

    def reset(self) -> int:
        with self._locked():
            self._map[:] = bytes(len(self._map))
        return 0

    def check(self) -> bool:
        return not self._map.closed

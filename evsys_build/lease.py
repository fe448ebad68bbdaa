"""Leases: a lock that works across machines on object storage, judged by the storage's own clock.

A lease is a small object created only if absent (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`),
renewed every ttl/3 by compare-and-swap on its version, and deleted on release only if it is still
ours. A holder that stops renewing (its machine died, its process froze) loses it once the object
is older than its ttl by the server's clock (the response's Date against the object's
LastModified), so clocks of clients never matter; exactly one contender wins the takeover, which is
itself a compare-and-swap.

A lease saves duplicate work; it is not what keeps results right. A frozen holder can wake up and
finish after losing its lease (as a Ray worker of a killed node can): objects and manifests are
create-only, so its late writes change nothing that was stored.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
import uuid

from .errors import Interrupted

CLOCK_SLACK = 1.0  # LastModified has a resolution of one second


class Lease:
    def __init__(self, api, key: str, ttl: float, extra: dict | None = None):
        self.api, self.key, self.ttl = api, key, ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.extra = extra or {}
        self.token: str | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = 0

    def _body(self) -> bytes:
        self._beats += 1
        return json.dumps({"owner": self.owner, "ttl": self.ttl, "beat": self._beats, **self.extra}, sort_keys=True).encode()

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired; False while someone else holds it."""
        for _ in range(3):  # the holder may release between our create and our read
            token = self.api.put(self.key, self._body(), if_absent=True)
            if token is not None:
                self.token = token
                return True
            current = self.api.get(self.key)
            if current is None:
                continue
            try:
                meta = json.loads(current.data)
            except ValueError:
                meta = {}
            if meta.get("owner") == self.owner:  # our own create, whose reply was lost and retried
                self.token = current.token
                return True
            if current.age <= float(meta.get("ttl", self.ttl)) + CLOCK_SLACK:
                return False
            token = self.api.put(self.key, self._body(), if_match=current.token)  # take over an expired lease
            if token is not None:
                self.token = token
                return True
            return False
        return False

    def acquire(self, on_wait=None, stop=None) -> None:
        """Wait until the lease is ours (polling, with jitter), then keep it fresh until release.
        Held by another build: `on_wait()` once (default: a line on stderr); `stop` set while
        waiting raises Interrupted."""
        wait, waited = 0.2, 0.0
        while not self.try_acquire():
            if waited == 0.0:
                if on_wait is not None:
                    on_wait()
                else:
                    print(f"evsys: waiting for {self.key.rsplit('/', 1)[-1]}: another build holds it", file=sys.stderr)
            pause = wait * random.uniform(0.5, 1.5)
            if stop is None:
                time.sleep(pause)
            elif stop.wait(pause):
                raise Interrupted("stopped while waiting for another build")
            waited += pause
            wait = min(wait * 1.5, 2.0)
        self.start_heartbeat()

    def start_heartbeat(self) -> None:
        self.lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"evsys-lease:{self.key[-24:]}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                token = self.api.put(self.key, self._body(), if_match=self.token)
            except OSError:
                continue  # a network blip: try again at the next beat, well within the ttl
            if token is None:
                self.lost.set()  # taken over: someone judged us dead; our create-only writes stay safe
                return
            self.token = token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.token is not None and not self.lost.is_set():
            try:
                self.api.delete(self.key, if_match=self.token)  # never deletes a lease someone took over
            except OSError:
                pass  # it expires by itself
        self.token = None

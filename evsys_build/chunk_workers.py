"""Chunks computed in worker processes beside the calling thread, for row-local stages with many
chunks to compute.

Workers are fresh interpreters (`python -m evsys_build.chunk_workers`) that talk over pipes, not
`multiprocessing` ones: a forked child of a process whose other threads hold locks can hang, and a
spawned one re-runs the user's main script (`python train.py` without a `__main__` guard). They
run in their own session, so Ctrl-C reaches only the build (its stop flag decides), and they end
when their input closes, so they die with the build. The calling thread computes chunks too, from
the front of the list, while a feeder thread hands the workers chunks from the back (to each only
once it says it is ready, so the map never waits for a worker to start) and records their results
as they arrive: a worker never waits while the calling thread is busy with a chunk. A worker
writes its chunk's blobs into the store itself (the store is process-safe); the memo entry is
written as each result arrives, so a stopped map keeps every chunk that finished. A chunk that fails in a worker is computed again by the calling
thread, so its error is the caller's own (naming the row and file); the first failure in chunk
order is raised, as computing one by one would. A worker that dies (killed, out of memory) leaves
its chunks to the calling thread.

A worker may also be started before its map (`start_standby`, from a node's warm-up, while the
stages before it run), its `start` loading what the stage needs (a tokenizer) in its own process,
beside the build's thread rather than holding its GIL. The map adopts it (`ChunkWorkers.standby`);
with fewer chunks to compute than `min_chunks` it computes them all, the calling thread taking only
those it fails or loses, so a one-chunk rebuild never loads the stage's tools in the build's process.
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .errors import Interrupted

WORKERS_ENV = "EVSYS_DATA_WORKERS"  # extra processes per row-local stage; 0 computes every chunk in the calling thread
IN_FLIGHT = 4  # chunks handed to a worker at a time: one to compute, the rest waiting (it never idles for a late hand-off)
READY = (True, "ready")  # a worker's first answer: started, so chunks handed to it will not wait for its imports


@dataclass(frozen=True)
class ChunkWorkers:
    """How a stage's chunks run in workers: `task(*args_of(chunk))` in a worker returns what the
    stage's own function returns for that chunk. `task` and `start` are module-level functions,
    and the args pickle."""

    task: Callable[..., dict]
    args_of: Callable[[dict], tuple]
    start: Callable[[], None] | None = None  # run once in each worker before its first chunk
    min_chunks: int = 16  # fewer chunks to compute than this run in the calling thread: not worth a process
    standby: str | None = None  # the key of a worker started ahead (`start_standby`) for the map to adopt


def worker_count() -> int:
    """Extra processes: `$EVSYS_DATA_WORKERS`, else one fewer than the cores this process may use."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if value:
        return max(0, int(value))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, cores - 1)


_worker_stores: dict = {}


def store_address(store) -> tuple[str, str | None]:
    """What a worker opens to reach `store`: its location and its upstream's (`worker_store`)."""
    return store.location, store.upstream.location if store.upstream is not None else None


def worker_store(address: tuple[str, str | None]):
    """The store at `address` (`store_address`), opened once per worker process."""
    from .store import open_store

    if address not in _worker_stores:
        _worker_stores[address] = open_store(*address)
    return _worker_stores[address]


def compute_with_workers(
    workers: ChunkWorkers,
    processes: int,
    chunks: list[dict],
    todo: list[int],
    compute: Callable[[dict], dict],
    record: Callable[[int, dict], None],
    stop_check: Callable[[], None] | None,
) -> None:
    """Compute chunks[i] for each i in `todo`, here and in `processes` workers; `record(i, result)`
    runs as each finishes, one call at a time (in this thread, or in the thread that feeds the
    workers, so a worker is handed its next chunk while this thread is busy with one)."""
    adopted = take_standby(workers.standby)
    alone = bool(adopted) and len(todo) < workers.min_chunks  # too few to start more for: the one started ahead computes them
    work = _Work(todo, record, here=not alone)
    procs = adopted + ([] if alone else [_Worker(workers.start) for _ in range(processes - len(adopted))])
    feeder = threading.Thread(target=_feed, args=(work, procs, workers, chunks), name="evsys-chunk-feeder", daemon=True)
    feeder.start()
    try:
        while (i := work.next_here(stop_check)) is not None:
            try:
                result = compute(chunks[i])
            except (Interrupted, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - kept to raise in chunk order
                work.fail(i, exc)
            else:
                work.finish(i, result)
    finally:
        work.close()
        feeder.join()
        for proc in procs:  # killed, not waited for (a tokenizer takes 0.1 s to free): each has answered
            proc.close(kill=True)  # every chunk handed to it, or its chunks are given up (a stop, a failure)
    work.raise_first()


_standby: dict[str, "_Worker"] = {}
_standby_lock = threading.Lock()


class Standby:
    """A worker started ahead of its map under a key; `close()` ends it unless a map adopted it."""

    def __init__(self, key: str, worker: "_Worker"):
        self.key, self.worker = key, worker

    def close(self) -> None:
        with _standby_lock:
            if _standby.get(self.key) is not self.worker:
                return  # adopted: the map closes it
            del _standby[self.key]
        self.worker.close(kill=True)  # perhaps still loading: nothing it holds is needed


def start_standby(key: str, start: Callable[[], None]) -> Standby | None:
    """Start a worker now (running `start`) for the next map whose `ChunkWorkers.standby` is `key`
    to adopt; None when one is waiting under that key already or this build uses no workers. Whoever
    starts it closes the Standby when the build ends."""
    if not worker_count():
        return None
    with _standby_lock:
        if key in _standby:
            return None
        worker = _standby[key] = _Worker(start)
    return Standby(key, worker)


def standby_waiting(key: str | None) -> bool:
    """Whether a worker started under `key` waits to be adopted."""
    with _standby_lock:
        return key is not None and key in _standby


def take_standby(key: str | None) -> list["_Worker"]:
    """The worker waiting under `key`, now the caller's to close ([] when none)."""
    with _standby_lock:
        worker = _standby.pop(key, None) if key is not None else None
    return [worker] if worker is not None else []


class _Work:
    """The chunks left to compute, shared by this thread (from the front) and the feeder (from the
    back), and the results and failures so far."""

    def __init__(self, todo: list[int], record: Callable[[int, dict], None], here: bool = True):
        self.pending = deque(sorted(todo))
        self.here = here  # this thread computes pending chunks too; else only returned ones, and what the workers leave
        self.returned: deque[int] = deque()  # chunks a worker failed or lost: only this thread takes them
        self.record = record
        self.failures: dict[int, BaseException] = {}
        self.crash: BaseException | None = None  # the feeder's own error (a memo that cannot be written)
        self.feeding = True  # until the feeder has nothing in flight and nothing left to hand out
        self.closed = False
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.recording = threading.Lock()

    def next_here(self, stop_check: Callable[[], None] | None) -> int | None:
        """The next chunk for this thread; waits while the workers hold the last ones (one that
        comes back is computed here); None when all are done."""
        while True:
            if stop_check is not None:
                stop_check()
            with self.lock:
                if self.crash is not None:
                    raise self.crash
                if self.returned:
                    return self.returned.popleft()
                if self.pending and (self.here or not self.feeding):
                    return self.pending.popleft()
                if not self.feeding:
                    return None
                self.changed.wait(timeout=0.5)

    def next_there(self) -> int | None:
        with self.lock:
            return self.pending.pop() if self.pending and not self.closed else None

    def give_back(self, chunks: list[int]) -> None:
        """Chunks a worker failed or lost: computed here, first."""
        with self.lock:
            self.returned.extend(sorted(chunks))
            self.changed.notify_all()

    def finish(self, i: int, result: dict) -> None:
        """Record a result, unless an earlier chunk already failed."""
        with self.recording:
            with self.lock:
                if self.failures and i > min(self.failures):
                    return
            self.record(i, result)

    def fail(self, i: int, exc: BaseException) -> None:
        """Keep the failure; chunks after the first failing one need not run."""
        with self.lock:
            self.failures[i] = exc
            first = min(self.failures)
            for chunks in (self.pending, self.returned):
                kept = [j for j in chunks if j < first]
                chunks.clear()
                chunks.extend(kept)

    def stop_feeding(self, crash: BaseException | None = None) -> None:
        with self.lock:
            self.feeding = False
            self.crash = self.crash or crash
            self.changed.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def raise_first(self) -> None:
        if self.failures:
            raise self.failures[min(self.failures)]


def _feed(work: _Work, procs: list["_Worker"], workers: ChunkWorkers, chunks: list[dict]) -> None:
    """The feeder thread: keeps each ready worker holding IN_FLIGHT chunks and records their
    results, until no chunk is left to hand out and none is in flight, or the map is closed."""
    selector = selectors.DefaultSelector()
    for proc in procs:
        selector.register(proc.output, selectors.EVENT_READ, proc)
    try:
        while not work.closed:
            for proc in procs:
                while proc.alive and proc.ready and len(proc.in_flight) < IN_FLIGHT and (i := work.next_there()) is not None:
                    try:
                        proc.submit(i, workers.task, workers.args_of(chunks[i]))
                    except EOFError:  # the worker died: its chunks are computed by the caller instead
                        work.give_back([i])
                        _lost(proc, work, selector)
            if not any(p.in_flight for p in procs) and (not work.pending or not any(p.alive for p in procs)):
                break  # workers still starting when the work is done are not waited for
            for key, _ in selector.select(timeout=0.1):
                proc = key.data
                try:
                    ok, value = proc.receive()
                except EOFError:
                    _lost(proc, work, selector)
                    continue
                if not proc.ready:
                    proc.ready = True  # its first answer
                    continue
                i = proc.in_flight.popleft()
                if ok:
                    work.finish(i, value)
                else:  # computed again by the caller, so a failure carries its context (which row, which file)
                    work.give_back([i])
        work.stop_feeding()
    except BaseException as exc:  # noqa: BLE001 - the caller raises it
        work.stop_feeding(exc)
    finally:
        selector.close()


def _lost(proc: "_Worker", work: _Work, selector) -> None:
    """A worker that died: the chunks it held go back to the caller."""
    work.give_back(list(proc.in_flight))
    proc.in_flight.clear()
    selector.unregister(proc.output)
    proc.close(kill=True)


class _Worker:
    """One worker process and the chunks it holds, in the order it answers them."""

    def __init__(self, start: Callable[[], None] | None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evsys_build.chunk_workers"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
            bufsize=0,  # unbuffered: an answer read ahead into a buffer would hide from select()
        )
        self.output = self.proc.stdout
        self.in_flight: deque[int] = deque()
        self.alive = True
        self.ready = False
        self._send(list(sys.path))  # the worker imports what this process can
        self._send(start)

    def submit(self, i: int, task: Callable, args: tuple) -> None:
        try:
            self._send((task, args))
        except (BrokenPipeError, OSError):
            self.alive = False
            raise EOFError from None
        self.in_flight.append(i)

    def receive(self) -> tuple[bool, object]:
        frame = _read_frame(self.output)
        if frame is None:
            self.alive = False
            raise EOFError
        return pickle.loads(frame)

    def close(self, kill: bool = False) -> None:
        self.alive = False
        try:
            self.proc.stdin.close()  # the worker ends when its input closes
        except OSError:
            pass
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.output.close()

    def _send(self, obj) -> None:
        data = pickle.dumps(obj)
        view = memoryview(len(data).to_bytes(8, "little") + data)
        while view:
            view = view[self.proc.stdin.write(view):]


def _read_frame(stream) -> bytes | None:
    """One length-prefixed frame, or None at the end of the stream."""
    header = _read_exactly(stream, 8)
    return None if header is None else _read_exactly(stream, int.from_bytes(header, "little"))


def _read_exactly(stream, size: int) -> bytes | None:
    parts = []
    while size:
        part = stream.read(size)
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def serve() -> None:
    """A worker: run `start`, say it is ready, then answer each (task, args) frame with an (ok,
    result or exception) frame, until its input ends."""
    for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):  # the terminal's signals are the build's to handle
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the answers
    requests = sys.stdin.buffer
    first = _read_frame(requests)
    if first is None:
        return
    sys.path[:] = pickle.loads(first)
    try:
        start = pickle.loads(_read_frame(requests) or pickle.dumps(None))
        if start is not None:
            start()
    except BaseException:  # noqa: BLE001 - a worker that cannot start says nothing; the caller computes alone
        traceback.print_exc()
        return
    _answer(answers, READY)
    while (frame := _read_frame(requests)) is not None:
        try:
            task, args = pickle.loads(frame)
            answer = (True, task(*args))
        except BaseException as exc:  # noqa: BLE001 - reported to the caller, who computes the chunk again
            answer = (False, exc)
        _answer(answers, answer)


def _answer(answers, answer) -> None:
    try:
        data = pickle.dumps(answer)
    except Exception:  # noqa: BLE001 - an exception that does not pickle still reports its traceback
        data = pickle.dumps((False, RuntimeError("".join(traceback.format_exception(answer[1])).strip())))
    answers.write(len(data).to_bytes(8, "little") + data)
    answers.flush()


def _serve_until_the_build_leaves() -> None:
    """`serve`, ending quietly when the build that started this worker is gone (killed: the pipe
    it read answers from is closed), instead of printing a traceback into the user's terminal."""
    try:
        serve()
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)  # not a normal exit: flushing the answers pipe again would fail the same way


if __name__ == "__main__":
    _serve_until_the_build_leaves()

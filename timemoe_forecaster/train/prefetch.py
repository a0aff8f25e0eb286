"""Draw the next steps' batches in the background while the GPU trains on this one: on a thread or in a process.

The data pipeline (window sampling, packing, on-the-fly synthetic series) is Python and numpy. On a GPU the
training loop spends most of a step blocked in the step's host synchronisation, so a worker can draw the next
batches meanwhile instead of after it: a profile of base training put 35 of 52 ms of GPU idle time per three
steps inside the generator (``benchmarks/results/trainer.md``).

Order and content are exactly those of drawing in the training loop: one worker, first in first out. Each item
carries the streams' states from before and after it was drawn, so a checkpoint records the first batch not yet
trained on, and ``close`` sets the streams to the state after the last batch handed out: nothing drawn ahead is
skipped and a resumed run continues bit for bit.

The worker is a thread (:class:`BatchPrefetcher`) or a forked child process (:class:`ProcessBatchPrefetcher`),
which never competes with the training loop for the GIL: on a thread, the step's host preparation rose from 2.9
to 8.3 ms on an H100 machine. The child draws from its own copy of the streams.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
import weakref
from typing import Any

import torch

log = logging.getLogger(__name__)
PREFETCH_MODES = ("auto", "off", "thread", "process")

Item = tuple[list[dict[str, Any]], list[dict[str, torch.Tensor]]]  # (stream states before, one batch per stream)


class BatchPrefetcher:
    """``depth`` steps of batches from ``streams`` (one batch per stream and step), drawn ahead on a thread, or in
    a forked child process with ``process=True`` (Linux, macOS; the child never touches CUDA, and tensors come
    back by value through the queue's pipe)."""

    def __init__(self, streams: list, depth: int = 2, process: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        if process and "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("the data worker process needs the 'fork' start method; use the thread instead")
        self.streams = streams
        # States after the last batch handed out (so far: the streams' own): what close() restores and a
        # checkpoint records.
        self._after = [s.state_dict() for s in streams]
        self._closed = False
        self._kind = "process" if process else "thread"
        if process:
            context = torch.multiprocessing.get_context("fork")
            self._queue, self._stop, worker = context.Queue(maxsize=depth), context.Event(), context.Process
        else:
            self._queue, self._stop, worker = queue.Queue(maxsize=depth), threading.Event(), threading.Thread
        self._worker = worker(
            target=_draw,
            args=(streams, self._queue, self._stop, process, os.getpid()),
            name="timemoe-data",
            daemon=True,
        )
        self._worker.start()
        # A prefetcher dropped without close() (an abandoned trainer in a notebook) must not leave its worker behind.
        self._finalizer = weakref.finalize(self, _stop_worker, self._stop, self._worker)

    def get(self) -> Item:
        """The next step's (states before it, batches), waiting for the worker if it is not drawn yet."""
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except Exception as exc:  # noqa: BLE001 - Empty, or a batch whose sender died while sending it
                if self._worker.is_alive():
                    if isinstance(exc, queue.Empty):
                        continue
                    raise
                self._worker.join()
                code = getattr(self._worker, "exitcode", None)
                self.close()
                raise RuntimeError(f"the data worker {self._kind} died (exit code {code})") from None
        if isinstance(item, BaseException):
            self.close()
            raise item  # the data pipeline's own error
        before, batches, self._after = _from_values(item)
        return before, batches

    def next_states(self) -> list[dict[str, Any]]:
        """The streams' states before the next undelivered batch: what a checkpoint must record."""
        return self._after

    def close(self) -> None:
        """Stop the worker and put the streams at the state after the last batch handed out."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._stop.set()
        deadline = time.monotonic() + 10.0
        while self._worker.is_alive() and time.monotonic() < deadline:
            try:  # a worker blocked on a full queue needs room to notice the stop
                self._queue.get(timeout=0.05)
            except Exception:  # noqa: BLE001 - Empty, or a discarded batch whose shared memory has gone
                pass
        if self._worker.is_alive() and self._kind == "process":
            log.warning("data worker process did not stop within 10 s; killing it")
            _end_worker(self._worker)
        self._worker.join()
        if self._kind == "process":  # the queue's feeder thread must not block this process's exit
            self._queue.cancel_join_thread()
            self._queue.close()
        for stream, state in zip(self.streams, self._after):
            stream.load_state_dict(state)


class ProcessBatchPrefetcher(BatchPrefetcher):
    """:class:`BatchPrefetcher` drawing in a forked child process."""

    def __init__(self, streams: list, depth: int = 2) -> None:
        super().__init__(streams, depth, process=True)


def _stop_worker(stop, worker) -> None:
    stop.set()
    worker.join(timeout=5)
    _end_worker(worker)


def _end_worker(worker) -> None:
    """Kill a worker process that did not stop when told: it ignores SIGTERM while the trainer lives, and one
    stuck inside C code (a hung read) runs no Python handler at all."""
    if hasattr(worker, "kill") and worker.is_alive():
        worker.kill()
        worker.join(timeout=5)


def _draw(streams: list, out, stop, in_child: bool, parent: int) -> None:
    """The worker's loop: (states before, batches, states after) per step until told to stop.

    ``parent``: the training process's pid, taken before the fork (a trainer that died before the child read its
    own parent's pid would go unnoticed)."""

    def orphaned() -> bool:
        return in_child and os.getppid() != parent

    def done() -> bool:
        # A trainer killed outright (SIGKILL, SIGTERM, the OOM killer) never sets ``stop``: a child polling only
        # that lived on for ever, holding its memory and the trainer's stdout (a ``| tail`` pipeline hung).
        return stop.is_set() or orphaned()

    if in_child:
        torch.set_num_threads(1)  # the training process owns the cores
        _leave_signals_to_the_trainer(orphaned)

    try:
        _fill(streams, out, stop, in_child, done)
    finally:
        if orphaned():
            # Nobody will read what is queued: the queue's feeder thread, blocked writing a batch larger than the
            # pipe's buffer into a pipe this process itself holds open, would keep the exit waiting for ever.
            out.cancel_join_thread()


def _leave_signals_to_the_trainer(orphaned) -> None:
    """Ctrl-C and a job's SIGTERM reach the whole process group, this child too. The trainer answers them by
    saving after the step in progress (``signals.py``), which may need batches from here: a child that died of
    the signal failed that save ("the data worker process died"). So the child ignores SIGINT, and SIGTERM while
    the trainer lives; the trainer ends it through ``stop`` (and SIGKILL when it is stuck, ``_end_worker``).
    The handler reads no lock: one taken by the interrupted loop (the stop Event's) would never be released."""

    def on_sigterm(signum, frame) -> None:
        if orphaned():
            os._exit(0)  # as the default action would: the queue's feeder thread must not hold the exit

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)


def _fill(streams: list, out, stop, in_child: bool, done) -> None:
    """Draw and queue items until ``done()``; an error is queued for the training loop to raise."""
    try:
        while not done():
            before = [s.state_dict() for s in streams]
            batches = [s.next_batch() for s in streams]
            item = (before, batches, [s.state_dict() for s in streams])
            if in_child:
                item = _by_value(item)
            while not done():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
    except BaseException as exc:  # noqa: BLE001 - handed to the training loop, raised there
        out.put(_crossing_error(exc) if in_child else exc)
        # A child's queued batches cross through its pipe: it must outlive their reception.
        while not stop.wait(timeout=0.5) and not done():
            pass


class _TensorBytes:
    """A CPU tensor sent by value. torch's own pickling for queues passes each tensor's shared memory as a file
    descriptor, one socket round trip per tensor: receiving a base-sized batch (4 x 4096 points) took 9-11 ms that
    way on the development CPU, 1.4 ms by value (``python benchmarks/prefetch_transfer_cpu.py``)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.array = tensor.numpy()


def _by_value(obj):
    if isinstance(obj, torch.Tensor) and obj.dtype not in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        return _TensorBytes(obj)  # (numpy has no bf16/fp8: those go through shared memory)
    if isinstance(obj, dict):
        return {k: _by_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_by_value(v) for v in obj)
    return obj


def _from_values(obj):
    if isinstance(obj, _TensorBytes):
        return torch.from_numpy(obj.array)
    if isinstance(obj, dict):
        return {k: _from_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_values(v) for v in obj)
    return obj


def _crossing_error(exc: BaseException) -> BaseException:
    """``exc`` ready to cross to the training process: the child's traceback goes into its message (tracebacks
    do not pickle), and an exception that does not pickle travels as a RuntimeError with its text."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    try:
        pickle.dumps(exc)
        error = exc
    except Exception:  # noqa: BLE001
        error = RuntimeError(f"data worker failed: {exc!r}")
    if error.args and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]}\n[in the data worker process]\n{text}", *error.args[1:])
    return error


def start_prefetcher(mode: str, streams: list, depth: int = 2) -> BatchPrefetcher:
    """A prefetcher of ``mode`` ("thread" or "process")."""
    if mode == "thread":
        return BatchPrefetcher(streams, depth)
    if mode == "process":
        return ProcessBatchPrefetcher(streams, depth)
    raise ValueError(f"unknown prefetch mode {mode!r}; choose 'thread' or 'process'")

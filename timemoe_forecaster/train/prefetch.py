"""Draw the next steps' batches in the background while the GPU trains on this one: on a thread or in a process.

The data pipeline (window sampling, packing, on-the-fly synthetic series) is Python and numpy. On a GPU the
training thread spends most of a step blocked in the step's host synchronisation, which releases the GIL, so
a second thread can draw the next batches meanwhile instead of after it: a profile of base training put 35 of
52 ms of GPU idle time per three steps inside the generator (``benchmarks/results/trainer.md``).

Order and content are exactly those of drawing in the training thread: one producer, first in first out, and
the streams are touched only by that producer while it runs. Each item carries the streams' states from
before it was drawn, so a checkpoint records the first batch not yet trained on and a resumed run continues
bit for bit.

``ProcessBatchPrefetcher`` keeps the same contract with a forked child process drawing the batches, so the
generator never competes with the training loop for the GIL (on a thread, the step's host preparation rose from
2.9 to 8.3 ms on an H100 machine). The child draws from its own copy of the streams; the training process's streams
stay put until ``close``, which sets them to the state after the last batch handed out.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import pickle
import queue
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
    """``depth`` steps of batches from ``streams`` (one batch per stream and step), drawn ahead on a thread."""

    def __init__(self, streams: list, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.streams = streams
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._peeked: Item | None = None
        # States before each drawn batch not yet handed out (the producer appends, get() pops): on close
        # the streams go back to the first of them, so nothing drawn ahead is ever skipped.
        self._undelivered: collections.deque = collections.deque()
        self._thread = threading.Thread(target=self._produce, name="timemoe-data", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                states = [s.state_dict() for s in self.streams]
                self._undelivered.append(states)
                item = (states, [s.next_batch() for s in self.streams])
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread, raised there
            self._queue.put(exc)

    def _take(self) -> Item:
        if self._stop.is_set():
            raise RuntimeError("this BatchPrefetcher is closed")
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item  # the data pipeline's own error (its traceback points into the thread)
        return item

    def get(self) -> Item:
        """The next step's (states before it, batches), waiting for it if it is not drawn yet."""
        item = self._peeked if self._peeked is not None else self._take()
        self._peeked = None
        self._undelivered.popleft()
        return item

    def next_states(self) -> list[dict[str, Any]]:
        """The streams' states before the next undelivered batch: what a checkpoint must record."""
        if self._peeked is None:
            self._peeked = self._take()
        return self._peeked[0]

    def close(self) -> None:
        """Stop the thread and put the streams back where the first batch not handed out began."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        if self._undelivered:
            for stream, state in zip(self.streams, self._undelivered[0]):
                stream.load_state_dict(state)
            self._undelivered.clear()
        self._peeked = None


class ProcessBatchPrefetcher:
    """``depth`` steps of batches from ``streams``, drawn ahead in a forked child process (Linux, macOS).

    Same interface as :class:`BatchPrefetcher`. Tensors come back by value through the queue's pipe. The child
    never touches CUDA (the data pipeline is numpy and CPU tensors)."""

    def __init__(self, streams: list, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("the data worker process needs the 'fork' start method; use the thread instead")
        context = torch.multiprocessing.get_context("fork")
        self.streams = streams
        # States after the last batch handed out (so far: the streams' own): what close() restores and a
        # checkpoint records.
        self._after = [s.state_dict() for s in streams]
        self._queue = context.Queue(maxsize=depth)
        self._stop = context.Event()
        self._closed = False
        self._process = context.Process(
            target=_draw_in_child, args=(streams, self._queue, self._stop), name="timemoe-data", daemon=True
        )
        self._process.start()
        # A prefetcher dropped without close() (an abandoned trainer in a notebook) must not leave its child behind.
        self._finalizer = weakref.finalize(self, _stop_child, self._stop, self._process)

    def get(self) -> Item:
        """The next step's (states before it, batches), waiting for the child if it is not drawn yet."""
        if self._closed:
            raise RuntimeError("this ProcessBatchPrefetcher is closed")
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except Exception as exc:  # noqa: BLE001 - Empty, or a batch whose sender died while sending it
                if self._process.is_alive():
                    if isinstance(exc, queue.Empty):
                        continue
                    raise
                self._process.join()
                code = self._process.exitcode
                self.close()
                raise RuntimeError(f"the data worker process died (exit code {code})") from None
        if isinstance(item, BaseException):
            self.close()
            raise item  # the data pipeline's own error, with the child's traceback in its message
        before, batches, self._after = _from_values(item)
        return before, batches

    def next_states(self) -> list[dict[str, Any]]:
        """The streams' states before the next undelivered batch: what a checkpoint must record."""
        return self._after

    def close(self) -> None:
        """Stop the child and put the streams at the state after the last batch handed out."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._stop.set()
        deadline = time.monotonic() + 10.0
        while self._process.is_alive() and time.monotonic() < deadline:
            try:  # a child blocked on a full queue needs room to notice the stop
                self._queue.get(timeout=0.05)
            except Exception:  # noqa: BLE001 - Empty, or a discarded batch whose shared memory has gone
                pass
        if self._process.is_alive():
            log.warning("data worker process did not stop within 10 s; terminating it")
            self._process.terminate()
        self._process.join()
        self._queue.cancel_join_thread()
        self._queue.close()
        for stream, state in zip(self.streams, self._after):
            stream.load_state_dict(state)


def _stop_child(stop, process) -> None:
    stop.set()
    process.terminate()
    process.join(timeout=5)


def _draw_in_child(streams: list, out, stop) -> None:
    """The child's loop: (states before, batches, states after) per step until told to stop."""
    torch.set_num_threads(1)  # the training process owns the cores
    try:
        while not stop.is_set():
            before = [s.state_dict() for s in streams]
            batches = [s.next_batch() for s in streams]
            item = _by_value((before, batches, [s.state_dict() for s in streams]))
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
    except BaseException as exc:  # noqa: BLE001 - handed to the training process, raised there
        out.put(_crossing_error(exc))
        # Batches still queued share their memory through this process: it must outlive their reception.
        stop.wait()


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


def start_prefetcher(mode: str, streams: list, depth: int = 2) -> BatchPrefetcher | ProcessBatchPrefetcher:
    """A prefetcher of ``mode`` ("thread" or "process")."""
    if mode == "thread":
        return BatchPrefetcher(streams, depth)
    if mode == "process":
        return ProcessBatchPrefetcher(streams, depth)
    raise ValueError(f"unknown prefetch mode {mode!r}; choose 'thread' or 'process'")

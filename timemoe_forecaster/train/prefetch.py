"""Draw the next steps' batches on a background thread while the GPU trains on this one.

The data pipeline (window sampling, packing, on-the-fly synthetic series) is Python and numpy. On a GPU the
training thread spends most of a step blocked in the step's host synchronisation, which releases the GIL, so
a second thread can draw the next batches meanwhile instead of after it: a profile of base training put 35 of
52 ms of GPU idle time per three steps inside the generator (``benchmarks/results/trainer.md``).

Order and content are exactly those of drawing in the training thread: one producer, first in first out, and
the streams are touched only by that producer while it runs. Each item carries the streams' states from
before it was drawn, so a checkpoint records the first batch not yet trained on and a resumed run continues
bit for bit.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any

import torch

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

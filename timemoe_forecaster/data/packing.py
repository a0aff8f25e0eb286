"""Sequence packing: several windows per row, so that no compute goes to padding.

A window of ``n + 1`` standardised points takes ``n`` tokens of a row (inputs ``w[:-1]``, labels ``w[1:]``).
Each window of a row gets its own ``seq_ids`` value and positions restarting at 0; the model's attention
and loss never cross a ``seq_ids`` boundary, so a packed batch has the same loss as one window per row.
Padding sits at the end of a row with ``seq_ids`` -1, ``attention_mask`` 0 and ``loss_mask`` 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .windows import WindowSampler, standardise

log = logging.getLogger(__name__)


def _tokens(window: np.ndarray) -> int:
    return int(window.shape[0]) - 1


def first_fit(
    windows: Sequence[np.ndarray], num_rows: int, max_length: int, rows: list[list[np.ndarray]] | None = None
) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """Place windows, in the given order, into the first of ``num_rows`` rows with room. Returns (rows, unplaced).

    Sort the windows by decreasing length first for first-fit decreasing.
    """
    rows = rows if rows is not None else [[] for _ in range(num_rows)]
    free = [max_length - sum(_tokens(w) for w in row) for row in rows]
    unplaced = []
    for w in windows:
        t = _tokens(w)
        for r in range(num_rows):
            if free[r] >= t:
                rows[r].append(w)
                free[r] -= t
                break
        else:
            unplaced.append(w)
    return rows, unplaced


def pack_windows(windows: Sequence[np.ndarray], max_length: int) -> list[list[np.ndarray]]:
    """First-fit decreasing into as many rows of ``max_length`` tokens as needed (all windows placed)."""
    _check_windows(windows, max_length)
    ordered = sorted(windows, key=_tokens, reverse=True)
    rows: list[list[np.ndarray]] = []
    free: list[int] = []
    for w in ordered:
        t = _tokens(w)
        r = next((k for k, f in enumerate(free) if f >= t), None)
        if r is None:
            rows.append([])
            free.append(max_length)
            r = len(rows) - 1
        rows[r].append(w)
        free[r] -= t
    return rows


def _check_windows(windows: Sequence[np.ndarray], max_length: int) -> None:
    for w in windows:
        if w.ndim != 1 or not 2 <= w.shape[0] <= max_length + 1:
            raise ValueError(
                f"a window must be 1-D with 2..max_length + 1 = {max_length + 1} points, got shape {w.shape}"
            )


def collate(
    rows: Sequence[np.ndarray | Sequence[np.ndarray]], max_length: int, pad_to: str = "max_length"
) -> dict[str, torch.Tensor]:
    """Batch dict of [B, S] tensors from rows of windows (a row is one window or a list of windows).

    S = ``max_length`` (static shapes) or, with ``pad_to="longest"``, the longest row.
    Keys: inputs, labels, loss_mask (float32), attention_mask, position_ids, seq_ids (int64).
    """
    rows = [[r] if isinstance(r, np.ndarray) else list(r) for r in rows]
    if not rows:
        raise ValueError("collate needs at least one row")
    used = []
    for row in rows:
        _check_windows(row, max_length)
        total = sum(_tokens(w) for w in row)
        if total > max_length:
            raise ValueError(f"a row holds {total} tokens, more than max_length={max_length}")
        used.append(total)
    if pad_to not in ("max_length", "longest"):
        raise ValueError(f"pad_to must be 'max_length' or 'longest', got {pad_to!r}")
    seq_len = max_length if pad_to == "max_length" else max(max(used), 1)
    b = len(rows)
    inputs = np.zeros((b, seq_len), dtype=np.float32)  # [B, S]
    labels = np.zeros((b, seq_len), dtype=np.float32)
    seq_ids = np.full((b, seq_len), -1, dtype=np.int64)
    position_ids = np.zeros((b, seq_len), dtype=np.int64)
    for r, row in enumerate(rows):
        pos = 0
        for doc, w in enumerate(row):
            t = _tokens(w)
            inputs[r, pos : pos + t] = w[:-1]
            labels[r, pos : pos + t] = w[1:]
            seq_ids[r, pos : pos + t] = doc
            position_ids[r, pos : pos + t] = np.arange(t)
            pos += t
    real = seq_ids >= 0
    return {
        "inputs": torch.from_numpy(inputs),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(real.astype(np.float32)),
        "attention_mask": torch.from_numpy(real.astype(np.int64)),
        "position_ids": torch.from_numpy(position_ids),
        "seq_ids": torch.from_numpy(seq_ids),
    }


class PackedBatchStream:
    """Batches of ``batch_size`` rows of ``max_length`` tokens from a :class:`WindowSampler`.

    ``pack=True``: windows that did not fit the previous batch go first (oldest first, so none waits forever),
    then fresh windows, longest first, until the rows hold at least ``batch_size * max_length`` tokens' worth;
    what still does not fit is kept for the next batch and saved in :meth:`state_dict`.
    ``fill_gaps=True`` then fills the space left at a row's end with the head of a waiting (or fresh) window,
    cut to fit and standardised again; its tail waits for the next batch. Rows end up ~100% full instead of
    ~90% when windows are long relative to ``max_length``.
    ``pack=False``: one window per row, padded.
    """

    def __init__(
        self,
        sampler: WindowSampler,
        batch_size: int,
        max_length: int,
        pack: bool = True,
        pad_to: str = "max_length",
        fill_gaps: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sampler.max_length > max_length:
            raise ValueError(
                f"the sampler makes windows of up to {sampler.max_length} tokens, more than max_length={max_length}; "
                "give the sampler max_length <= the batch max_length"
            )
        self.sampler, self.batch_size, self.max_length = sampler, int(batch_size), int(max_length)
        self.pack, self.pad_to, self.fill_gaps = pack, pad_to, fill_gaps
        self.leftover: list[np.ndarray] = []
        self.num_batches = 0

    def next_rows(self) -> list[list[np.ndarray]]:
        """The windows of the next batch, row by row (what :func:`collate` turns into tensors)."""
        if not self.pack:
            return [[self.sampler.sample()] for _ in range(self.batch_size)]
        capacity = self.batch_size * self.max_length
        have = sum(_tokens(w) for w in self.leftover)
        fresh = []
        while have < capacity:
            w = self.sampler.sample()
            fresh.append(w)
            have += _tokens(w)
        rows, waiting = first_fit(self.leftover, self.batch_size, self.max_length)
        fresh.sort(key=_tokens, reverse=True)  # stable: ties keep drawing order
        rows, unplaced = first_fit(fresh, self.batch_size, self.max_length, rows)
        self.leftover = waiting + unplaced
        if self.fill_gaps:
            for row in rows:
                self._fill(row)
        return rows

    def _fill(self, row: list[np.ndarray]) -> None:
        """Top up ``row`` with cut windows while at least ``min_length - 1`` tokens are free."""
        min_points = self.sampler.min_length
        free = self.max_length - sum(_tokens(w) for w in row)
        while free >= min_points - 1:
            w = self.leftover.pop(0) if self.leftover else self.sampler.sample()
            if _tokens(w) <= free:
                row.append(w)
                free -= _tokens(w)
                continue
            # The head's last point is its last label; the tail starts from that point as its first input.
            head, tail = w[: free + 1], w[free:]
            row.append(standardise(head, self.sampler.std_floor))
            if tail.shape[0] >= min_points:
                self.leftover.append(standardise(tail, self.sampler.std_floor))
            free = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = collate(self.next_rows(), self.max_length, pad_to=self.pad_to)
        self.num_batches += 1
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """Sampler state, leftover windows (float32 tensors) and batch count; loadable with weights_only=True."""
        return {
            "sampler": self.sampler.state_dict(),
            "leftover": [torch.from_numpy(np.array(w, dtype=np.float32)) for w in self.leftover],
            "num_batches": self.num_batches,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        leftover = [np.asarray(w.numpy() if torch.is_tensor(w) else w, dtype=np.float32) for w in state["leftover"]]
        # A run resumed with a smaller max_length: waiting windows longer than a row would never be placed
        # (and would count as data in every batch), so cut them to fit, as _fill cuts a window at a row's end.
        self.leftover = [piece for w in leftover for piece in self._cut_to_fit(w)]
        too_long = sum(_tokens(w) > self.max_length for w in leftover)
        if too_long:
            log.info("%d waiting windows were longer than max_length=%d; cut to fit", too_long, self.max_length)
        self.num_batches = int(state["num_batches"])

    def _cut_to_fit(self, window: np.ndarray) -> list[np.ndarray]:
        """``window`` as pieces of at most ``max_length`` tokens, each standardised again; short tails dropped."""
        if _tokens(window) <= self.max_length:
            return [window]
        pieces = []
        for start in range(0, _tokens(window), self.max_length):
            piece = window[start : start + self.max_length + 1]  # neighbours share one point: label, then input
            if piece.shape[0] >= self.sampler.min_length:
                pieces.append(standardise(piece, self.sampler.std_floor))
        return pieces

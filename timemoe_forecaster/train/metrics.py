"""Training metrics: one JSON object per line in ``metrics.jsonl``, plus an optional tqdm bar.

Only rank 0 writes; other ranks get a writer that does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Append records to ``<directory>/metrics.jsonl`` (kept on resume) and mirror them on a bar."""

    def __init__(
        self,
        directory: str | Path | None,
        enabled: bool = True,
        progress: bool = False,
        total: int = 0,
        initial: int = 0,
    ) -> None:
        self.enabled = enabled
        self.path = Path(directory) / METRICS_FILE if directory is not None and enabled else None
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if initial == 0 and self.path.exists():
                self.path.unlink()  # a fresh run: drop the records of an earlier one
            elif initial > 0 and self.path.exists():
                _truncate_after(self.path, initial)  # resumed: forget steps that will be redone
            self._file = self.path.open("a")
        self._bar = None
        if enabled and progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _plain(v) for k, v in record.items()}
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        shown = {k: record[k] for k in ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s") if k in record}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if isinstance(v, float)}, refresh=False)
        elif self.enabled:
            # Without a bar (--no-progress, a batch job's log) the figures went only to metrics.jsonl, and without
            # an --output-dir nowhere: an evaluation's loss was computed and never shown.
            figures = ", ".join(
                f"{k} {v:,.0f}" if k == "tokens_per_s" else f"{k} {v:.4g}"
                for k, v in shown.items()
                if isinstance(v, (int, float))
            )
            log.info("step %s: %s", record.get("step", "?"), figures)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def read_metrics(directory: str | Path) -> list[dict[str, Any]]:
    path = Path(directory) / METRICS_FILE
    return [record for _, record in _records(path)] if path.exists() else []


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for each line of ``path`` that parses; a line cut short by a killed run is skipped."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            log.warning("%s line %d is not a whole JSON record (a run killed while writing it?): skipped", path, number)
    return out


def _truncate_after(path: Path, step: int) -> None:
    kept = [line for line, record in _records(path) if record.get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class Throughput:
    """Tokens per second between two ``rate()`` calls (wall clock; synchronise before for GPU)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._tokens = 0

    def add(self, tokens: int) -> None:
        self._tokens += tokens

    def rate(self) -> float:
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        rate = self._tokens / elapsed
        self._start, self._tokens = now, 0
        return rate

"""The leaderboard's files: leaderboard.csv (cells), cells.jsonl (their settings), examples.json (plots).

The CSV is rewritten after every cell (atomically), so an interrupted run loses at most the cell in
flight and a rerun resumes from what is there. "avg" rows are derived: the mean of the four horizons'
MSE and MAE of a (dataset, setting, model), present only when all four were run. Reported numbers
(reported.py) are appended with source=reported and never mixed into the derived rows.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
from pathlib import Path

from protocol import HORIZONS
from reported import reported_rows

# window_set (see leaderboard.window_set) came later: rows of older files read it as "" (not known).
COLUMNS = ("dataset", "setting", "model", "horizon", "mse", "mae", "source", "windows", "seconds", "window_set")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # one per process: two runs may share a folder
    tmp.write_text(text)
    os.replace(tmp, path)


def cell_records(text: str) -> list[dict]:
    """The records of a cells.jsonl text; a line cut short by a killed run is skipped (that cell has no record)."""
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class ResultStore:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out / "leaderboard.csv"
        self.cells_path = self.out / "cells.jsonl"
        self.examples_path = self.out / "examples.json"
        self.rows: dict[tuple[str, str, str, str], dict] = self._rows_on_disk()
        self._unsaved: set[tuple[str, str, str, str]] = set()  # cells added since the last save win over the file's
        self.examples = json.loads(self.examples_path.read_text()) if self.examples_path.exists() else {}
        self.commands: dict[tuple[str, str, str, str], str] = {}  # the latest command of each cell
        if self.cells_path.exists():
            text = self.cells_path.read_text()
            if text and not text.endswith("\n"):  # a line cut short by a kill: the next record starts a new line
                with self.cells_path.open("a") as f:
                    f.write("\n")
            for rec in cell_records(text):
                key = self._key(rec.get("dataset"), rec.get("setting"), rec.get("model"), rec.get("horizon"))
                if rec.get("command"):
                    self.commands[key] = rec["command"]

    def _rows_on_disk(self) -> dict[tuple[str, str, str, str], dict]:
        rows = {}
        if self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                for row in csv.DictReader(f):
                    if row["source"] == "ran" and row["horizon"] != "avg":
                        rows[self._key(row["dataset"], row["setting"], row["model"], row["horizon"])] = row
        return rows

    @staticmethod
    def _key(dataset, setting, model, horizon) -> tuple[str, str, str, str]:
        return (dataset, setting, model, str(horizon))

    def has(self, dataset: str, setting: str, model: str, horizon: int) -> bool:
        return self._key(dataset, setting, model, horizon) in self.rows

    def command_of(self, dataset: str, setting: str, model: str, horizon: int) -> str | None:
        """The command line that made this cell, as cells.jsonl recorded it (None if it has none)."""
        return self.commands.get(self._key(dataset, setting, model, horizon))

    def add(self, dataset: str, setting: str, model: str, horizon: int, cell: dict, details: dict) -> None:
        row = {
            "dataset": dataset,
            "setting": setting,
            "model": model,
            "horizon": str(horizon),
            "mse": f"{cell['mse']:.6f}",
            "mae": f"{cell['mae']:.6f}",
            "source": "ran",
            "windows": str(cell["windows"]),
            "seconds": f"{cell['seconds']:.1f}",
            "window_set": str(cell.get("window_set", "")),
        }
        self.rows[self._key(dataset, setting, model, horizon)] = row
        self._unsaved.add(self._key(dataset, setting, model, horizon))
        if details.get("command"):
            self.commands[self._key(dataset, setting, model, horizon)] = details["command"]
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {"dataset": dataset, "setting": setting, "model": model, "horizon": horizon, "time": now, **details}
        with self.cells_path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        self.save()

    def has_example(self, dataset: str, model: str, setting: str) -> bool:
        return f"{model} ({setting})" in self.examples.get(dataset, {}).get("forecasts", {})

    def add_example(self, dataset: str, model: str, setting: str, example: dict) -> None:
        with _locked(self.out / ".leaderboard.lock"):  # another run into this folder may have added its own
            if self.examples_path.exists():
                self.examples = json.loads(self.examples_path.read_text())
            self._add_example(dataset, model, setting, example)

    def _add_example(self, dataset: str, model: str, setting: str, example: dict) -> None:
        entry = self.examples.setdefault(dataset, {})
        same_window = all(entry.get(k) == example[k] for k in ("channel", "start", "horizon"))
        if not same_window:  # a different window (channel subset, horizon): start the plot afresh
            entry.clear()
            entry.update({k: example[k] for k in ("channel", "start", "horizon", "history", "truth")})
            entry["forecasts"] = {}
        entry["forecasts"][f"{model} ({setting})"] = example["forecast"]
        _atomic_write(self.examples_path, json.dumps(self.examples))

    def average_rows(self) -> list[dict]:
        groups: dict[tuple[str, str, str], list[dict]] = {}
        for (dataset, setting, model, _), row in self.rows.items():
            groups.setdefault((dataset, setting, model), []).append(row)
        out = []
        for (dataset, setting, model), rows in groups.items():
            if sorted(int(r["horizon"]) for r in rows) != list(HORIZONS):
                continue
            n = len(rows)
            out.append(
                {
                    "dataset": dataset,
                    "setting": setting,
                    "model": model,
                    "horizon": "avg",
                    "mse": f"{sum(float(r['mse']) for r in rows) / n:.6f}",
                    "mae": f"{sum(float(r['mae']) for r in rows) / n:.6f}",
                    "source": "ran",
                    "windows": str(sum(int(r["windows"]) for r in rows)),
                    "seconds": f"{sum(float(r['seconds']) for r in rows):.1f}",
                    # One label per horizon, in order: averages over other window sets are other averages. Not
                    # known ("") if any horizon's is not (a file from before the column).
                    "window_set": " ".join(
                        r.get("window_set") or "" for r in sorted(rows, key=lambda r: int(r["horizon"]))
                    )
                    if all(r.get("window_set") for r in rows)
                    else "",
                }
            )
        return out

    def all_rows(self) -> list[dict]:
        order = {str(h): i for i, h in enumerate(HORIZONS + ("avg",))}
        ran = list(self.rows.values()) + self.average_rows()
        ran.sort(key=lambda r: (r["setting"], r["dataset"], r["model"], order.get(r["horizon"], 99)))
        return ran + reported_rows()

    def save(self) -> None:
        """Rewrites the CSV with the cells on disk now and this run's (which win). Two runs into one --out each
        rewrote it from the rows they had read at their start: the last writer's 16 of 40 rows were kept. A cell
        this run saved earlier and another run has rerun since is the other run's: the file's, newer, wins."""
        with _locked(self.out / ".leaderboard.lock"):
            new = {k: self.rows[k] for k in self._unsaved}
            self.rows = {**self.rows, **self._rows_on_disk(), **new}
            self._unsaved.clear()
            if not new and self.csv_path.exists():
                # Nothing of this run's to add: a rerun of cells all done rewrote the committed file anyway (and
                # gave an older one the newer columns), a diff for no result.
                return
            lines = [",".join(COLUMNS)]
            for row in self.all_rows():
                lines.append(",".join(_quote(str(row.get(c, ""))) for c in COLUMNS))
            _atomic_write(self.csv_path, "\n".join(lines) + "\n")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (POSIX; elsewhere none, as before)."""
    try:
        import fcntl
    except ImportError:  # Windows: runs into one folder must not overlap
        yield
        return
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            locked = True
        except OSError:  # a file system without locks (some NFS mounts): write unlocked, as before, not fail
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)


def _quote(value: str) -> str:
    return f'"{value}"' if ("," in value or '"' in value) else value


def read_rows(out: str | Path) -> list[dict]:
    path = Path(out) / "leaderboard.csv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))

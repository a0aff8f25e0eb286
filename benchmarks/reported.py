"""Published numbers of the Time-MoE paper (arXiv 2409.16040): a separate, clearly labelled "reported" block.

Rule: a number goes in only when it was checked against the paper's text (Table 3, zero-shot; Table 4,
full-shot). None could be checked while this file was written: the stored copies of the paper reachable
from the development machine gave its abstract but not its tables, and numbers recalled from memory or
copied through other papers are not evidence. So ``REPORTED`` is empty and the board says so.

To add them, append rows of (dataset, setting, model, horizon, mse, mae) typed from the paper's tables,
one per line below, and name the table in ``SOURCES``. ``horizon`` is 96/192/336/720 or "avg". They are
written to leaderboard.csv with source=reported and never compared in bold with what we ran.
"""

from __future__ import annotations

PAPER = "Shi et al., Time-MoE: Billion-Scale Time Series Foundation Models with Mixture of Experts, arXiv 2409.16040"

# Which table each setting comes from (filled in together with REPORTED).
SOURCES: dict[str, str] = {}

# (dataset, setting, model, horizon, mse, mae): verified against the paper only.
REPORTED: list[tuple[str, str, str, int | str, float, float]] = []

STATUS = (
    "No published number could be verified against the paper's tables from this machine, so this block is "
    "empty; see benchmarks/reported.py for how to add them."
)


def reported_rows() -> list[dict]:
    """Rows for leaderboard.csv (source=reported; windows and seconds left empty)."""
    rows = []
    for dataset, setting, model, horizon, mse, mae in REPORTED:
        rows.append(
            {
                "dataset": dataset,
                "setting": setting,
                "model": model,
                "horizon": str(horizon),
                "mse": mse,
                "mae": mae,
                "source": "reported",
                "windows": "",
                "seconds": "",
            }
        )
    return rows

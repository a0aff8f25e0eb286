"""leaderboard.md and the PNGs from leaderboard.csv, cells.jsonl and examples.json.

Usage: python benchmarks/report.py [out folder] (leaderboard.py calls it at the end of a run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import HORIZONS  # noqa: E402
from reported import PAPER, STATUS  # noqa: E402
from results import cell_records, read_rows  # noqa: E402

SETTINGS = ("zero-shot", "full-shot")
PROTOCOL = (
    "Protocol (benchmarks/protocol.py, as the official run_eval.py): Time-Series-Library splits (ETTh 12/4/4 months, "
    "ETTm the same at 15 min, Weather 70/10/20), StandardScaler per column fit on train, metrics on that scale; "
    "stride-1 test windows from the test border (test rows - horizon per channel), lookback reaching back into val; "
    "MSE/MAE pooled over all points, avg = mean of the four horizons. `windows` counts forecast windows over all "
    "channels; fewer than the full count means the model ran on an evenly spaced subsample (see cells.jsonl), so "
    "its numbers estimate the full-window metric on other windows than the full-count cells of the same row."
)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _cell_settings(out: Path) -> dict[tuple[str, str, str, str], dict]:
    """Last recorded settings per cell (dataset, setting, model, horizon) from cells.jsonl. Per cell, not per
    model: a model's horizons run by separate commands each keep theirs (the list showed only the last one)."""
    path = out / "cells.jsonl"
    found: dict[tuple[str, str, str, str], dict] = {}
    if path.exists():
        for rec in cell_records(path.read_text()):
            found[(rec.get("dataset"), rec.get("setting"), rec.get("model"), str(rec.get("horizon")))] = rec
    return found


def setting_table(rows: list[dict], setting: str) -> list[str]:
    """Markdown table: rows dataset x horizon, columns models, 'mse / mae'. Bold marks the best of each row among
    the cells scored on its fullest window set; a cell scored on fewer windows (an evenly spaced subsample) carries
    a dagger and is not ranked: its windows are others than the full-count cells', and a stats baseline's 30-50
    windows, all valid at horizon 720, miss the test split's last rows, so it could "win" on easier windows."""
    ran = [r for r in rows if r["setting"] == setting and r["source"] == "ran"]
    if not ran:
        return [f"_No {setting} cell has been run yet._", ""]
    models = sorted({r["model"] for r in ran})
    by = {(r["dataset"], r["horizon"], r["model"]): r for r in ran}
    datasets = sorted({r["dataset"] for r in ran})
    lines = ["| dataset | horizon | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    subsampled = False
    for d in datasets:
        for h in [str(h) for h in HORIZONS] + ["avg"]:
            present = [by[(d, h, m)] for m in models if (d, h, m) in by]
            if not present:
                continue
            fullest = max(_windows(r) for r in present)
            ranked = _same_windows([r for r in present if _windows(r) == fullest])
            best_mse = min(float(r["mse"]) for r in ranked)
            best_mae = min(float(r["mae"]) for r in ranked)
            cells = []
            for m in models:
                r = by.get((d, h, m))
                if r is None:
                    cells.append("–")
                    continue
                mse, mae = _fmt(float(r["mse"])), _fmt(float(r["mae"]))
                if r not in ranked:
                    subsampled = True
                    cells.append(f"{mse} / {mae} †")
                    continue
                mse = f"**{mse}**" if float(r["mse"]) == best_mse and len(ranked) > 1 else mse
                mae = f"**{mae}**" if float(r["mae"]) == best_mae and len(ranked) > 1 else mae
                cells.append(f"{mse} / {mae}")
            lines.append(f"| {d} | {h} | " + " | ".join(cells) + " |")
    if subsampled:
        lines += [
            "",
            "† scored on fewer windows than the row's other cells (a subsample), or on as many but other ones "
            "(spread over another horizon's windows); not ranked.",
        ]
    return lines + [""]


def _same_windows(rows: list[dict]) -> list[dict]:
    """The cells of ``rows`` (one window count) scored on the same windows: those of the most common known window
    set, with the cells whose set is not recorded (files from before it was). Stats baselines spread their
    windows over those valid at horizon 720 and the others over their own horizon's: at one count (--max-windows
    50) the same SeasonalNaive scored up to 9% apart on the two sets, and the report bolded either."""
    known = [r.get("window_set") for r in rows if r.get("window_set")]
    if len(set(known)) < 2:
        return rows
    # On a tie, the windows spread over the row's own horizon (as every model but the stats baselines spreads them).
    common = max(sorted(set(known)), key=lambda s: (known.count(s), _own_spread(s, rows[0]["horizon"])))
    return [r for r in rows if r.get("window_set") in (None, "", common)]


def _own_spread(window_set: str, horizon: str) -> bool:
    """Whether each horizon's windows in ``window_set`` are all of them or spread over that horizon's own."""
    horizons = [str(h) for h in HORIZONS] if horizon == "avg" else [horizon]
    labels = window_set.split()
    return len(labels) == len(horizons) and all(x == "all" or x.endswith(f"@h{h}") for x, h in zip(labels, horizons))


def _windows(row: dict) -> int:
    try:
        return int(float(row.get("windows") or 0))
    except ValueError:
        return 0


def windows_table(rows: list[dict], setting: str) -> list[str]:
    ran = [r for r in rows if r["setting"] == setting and r["source"] == "ran" and r["horizon"] != "avg"]
    if not ran:
        return []
    lines = ["| dataset | model | horizon | windows | seconds |", "|---|---|---|---|---|"]
    for r in ran:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['horizon']} | {r['windows']} | {r['seconds']} |")
    return lines + [""]


def reported_table(rows: list[dict]) -> list[str]:
    rep = [r for r in rows if r["source"] == "reported"]
    if not rep:
        return [STATUS, ""]
    lines = ["| dataset | setting | model | horizon | mse | mae |", "|---|---|---|---|---|---|"]
    for r in rep:
        lines.append(f"| {r['dataset']} | {r['setting']} | {r['model']} | {r['horizon']} | {r['mse']} | {r['mae']} |")
    return lines + [""]


def render_markdown(out: Path, rows: list[dict]) -> str:
    settings = _cell_settings(out)
    commands = sorted({rec.get("command", "") for rec in settings.values()} - {""})
    parts = ["# Leaderboard", "", PROTOCOL, "", "Commands that produced these cells:", ""]
    parts += [f"    {c}" for c in commands] + [""]
    for setting in SETTINGS:
        ranking = "best per row in bold, among the cells scored on the row's fullest window set"
        parts += [f"## {setting} (ran here)", "", f"Cells: MSE / MAE; {ranking}.", ""]
        parts += setting_table(rows, setting)
        parts += ["<details><summary>windows and seconds per cell</summary>", ""]
        parts += windows_table(rows, setting) + ["</details>", ""]
    parts += ["## Reported (published numbers, not run here)", "", f"Source: {PAPER}.", ""]
    parts += reported_table(rows)
    parts += ["![average MSE](avg_mse.png)", ""]
    return "\n".join(parts)


def plot_average(out: Path, rows: list[dict]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    avg = [r for r in rows if r["source"] == "ran" and r["horizon"] == "avg"]
    label = "avg over 96-720"
    if not avg:  # partial runs: fall back to the shortest horizon present
        ran = [r for r in rows if r["source"] == "ran"]
        if not ran:
            return None
        h = min(int(r["horizon"]) for r in ran if r["horizon"] != "avg")
        avg, label = [r for r in ran if r["horizon"] == str(h)], f"horizon {h}"
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in avg)]
    fig, axes = plt.subplots(len(settings), 1, figsize=(11, 4 * len(settings)), squeeze=False)
    for ax, setting in zip(axes[:, 0], settings):
        sub = [r for r in avg if r["setting"] == setting]
        datasets = sorted({r["dataset"] for r in sub})
        models = sorted({r["model"] for r in sub})
        width = 0.8 / max(1, len(models))
        for i, m in enumerate(models):
            vals = [
                next((float(r["mse"]) for r in sub if r["dataset"] == d and r["model"] == m), np.nan) for d in datasets
            ]
            ax.bar(np.arange(len(datasets)) + i * width, vals, width, label=m)
        ax.set_xticks(np.arange(len(datasets)) + width * (len(models) - 1) / 2, datasets)
        ax.set_ylabel(f"MSE ({label})")
        ax.set_title(f"{setting}: MSE on the StandardScaler scale (lower is better)")
        ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    path = out / "avg_mse.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_examples(out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = out / "examples.json"
    if not path.exists():
        return []
    paths = []
    for dataset, ex in json.loads(path.read_text()).items():
        hist, truth, h = np.asarray(ex["history"]), np.asarray(ex["truth"]), ex["horizon"]
        fig, ax = plt.subplots(figsize=(11, 4))
        t_hist = np.arange(-len(hist), 0)
        ax.plot(t_hist, hist, color="black", lw=1, label="history")
        ax.plot(np.arange(h), truth, color="black", lw=1.5, ls="--", label="truth")
        for name, pred in sorted(ex["forecasts"].items()):
            ax.plot(np.arange(h), pred, lw=1, label=name)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(f"{dataset}, channel {ex['channel']}, test row {ex['start']}, horizon {h} (scaled)")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        target = out / f"forecast_{dataset}.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        paths.append(target)
    return paths


def render(out: str | Path) -> None:
    out = Path(out)
    rows = read_rows(out)
    (out / "leaderboard.md").write_text(render_markdown(out, rows))
    try:
        plot_average(out, rows)
        plot_examples(out)
    except ImportError:  # matplotlib is optional: the tables still render
        pass


def main(argv: list[str] | None = None) -> None:
    # argparse, not sys.argv[1]: "--help" used to be taken for the results folder.
    default = Path(__file__).resolve().parent / "results"
    parser = argparse.ArgumentParser(description="Render leaderboard.md and the PNGs of a leaderboard run.")
    parser.add_argument(
        "out", nargs="?", type=Path, default=default, help="folder holding leaderboard.csv (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        parser.error(f"{args.out} is not a folder; pass the folder of a leaderboard run (leaderboard.csv)")
    if not (args.out / "leaderboard.csv").exists():  # it wrote an empty leaderboard.md
        parser.error(f"{args.out} holds no leaderboard.csv; pass the folder of a leaderboard run")
    render(args.out)


if __name__ == "__main__":
    main()

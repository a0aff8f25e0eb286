"""Zero-shot and full-shot leaderboard on ETTh1/ETTh2/ETTm1/ETTm2/Weather (protocol: protocol.py).

Examples (from the repository root):
    python benchmarks/leaderboard.py --quick                        # smoke run, a few minutes on a CPU
    python benchmarks/leaderboard.py --setting zero-shot --models naive,seasonal_naive,autoets,autotheta
    python benchmarks/leaderboard.py --setting full-shot --models dlinear,nlinear,tide,tsmixer,nhits
    python benchmarks/leaderboard.py --models timemoe --setting zero-shot --device cuda --dtype bf16 \\
        --model-path /path/to/TimeMoE-50M --batch-size 1024

Each (dataset, setting, model, horizon) cell is appended to <out>/leaderboard.csv as soon as it is done, and
a rerun skips the cells already there (resumable); <out>/cells.jsonl keeps every cell's settings and the
command. A rerun whose window, channel or model settings differ from the ones a cell was made with stops
before running anything and names the differences: pass --rerun to replace those cells, or use another --out.
leaderboard.md and the PNGs are re-rendered at the end (report.py).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import BASELINES, make_baseline  # noqa: E402
from protocol import DATASETS, DEFAULT_CONTEXT, HORIZONS, PooledMetrics, load_dataset  # noqa: E402
from results import ResultStore  # noqa: E402

from timemoe_forecaster.cli import whole_number_at_least  # noqa: E402

log = logging.getLogger("leaderboard")

ZERO_SHOT = ("naive", "seasonal_naive", "autoets", "autotheta", "autoarima", "timemoe")
FULL_SHOT = ("dlinear", "nlinear", "tide", "tsmixer", "nhits", "timemoe")
DEFAULT_MODELS = {
    "zero-shot": ("naive", "seasonal_naive", "autoets", "autotheta", "timemoe"),
    "full-shot": ("dlinear", "nlinear", "tide", "tsmixer", "nhits", "timemoe"),
}
QUICK = {"datasets": ["ETTh1"], "horizons": [96, 192], "channels": 2, "max_windows": 16}
CHUNK = 4096  # windows gathered at once per channel (the model batches inside)


# Count flags: 0 or less used to mean "all" or "one" silently (--max-windows 0 ran every window).
positive_int = whole_number_at_least(1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help=f"comma list of {', '.join(BASELINES + ('timemoe',))} (default: per setting)")
    p.add_argument("--datasets", help=f"comma list of {', '.join(DATASETS)} (default: all)")
    p.add_argument("--horizons", help="comma list of 96,192,336,720 (default: all)")
    p.add_argument("--setting", choices=("zero-shot", "full-shot"), default="zero-shot")
    p.add_argument("--model-path", help="Time-MoE checkpoint folder or hub id (default: the embedded default)")
    p.add_argument("--preset", help="build an untrained Time-MoE of this preset instead (tests, smoke runs)")
    p.add_argument("--label", help="board name of the Time-MoE model (default: from --model-path)")
    p.add_argument("--context-length", help="one length, or four for 96,192,336,720 (default 512,1024,2048,3072)")
    p.add_argument(
        "--normalize-window",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="standardise each context by its own mean and std (default: on for the embedded default, which was "
        "trained so; off for other checkpoints, as run_eval.py)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="Time-MoE dtype (default fp32)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="Time-MoE windows per forward")
    p.add_argument(
        "--batch-tokens",
        type=positive_int,
        help="cap on windows x context per forward (long contexts get fewer windows)",
    )
    p.add_argument(
        "--max-windows", type=positive_int, help="cap on test windows per channel for every model (evenly spaced)"
    )
    p.add_argument("--channels", type=positive_int, help="use only the first N channels of each dataset")
    p.add_argument(
        "--stats-windows", type=positive_int, help="windows per channel for AutoETS/AutoTheta/AutoARIMA (50; 4 --quick)"
    )
    p.add_argument("--stats-lookback", type=positive_int, default=512)
    p.add_argument("--jobs", type=positive_int, default=1, help="processes for the statsforecast fits")
    p.add_argument("--darts-windows", type=positive_int, default=1000, help="test windows per channel for darts models")
    p.add_argument("--darts-lookback", type=positive_int, default=512)
    p.add_argument("--darts-epochs", type=positive_int, help="training epochs of darts models (2; 1 with --quick)")
    p.add_argument(
        "--darts-samples", type=positive_int, help="training windows per epoch, all channels (7000; 256 with --quick)"
    )
    p.add_argument("--finetune-epochs", type=positive_int, default=1, help="Time-MoE full-shot epochs (paper: one)")
    p.add_argument("--finetune-steps", type=positive_int, help="Time-MoE full-shot steps (overrides epochs)")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--finetune-rounds", type=positive_int, default=1, help="rounds of fine-tuning, each scored on val")
    p.add_argument(
        "--finetune-val-windows",
        type=positive_int,
        default=32,
        help="validation windows per channel and horizon (selection)",
    )
    p.add_argument("--finetune-batch-size", type=positive_int, default=16)
    p.add_argument("--finetune-max-length", type=positive_int, default=512)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--data-dir", help="folder with the benchmark CSVs (default: ../shared/data/benchmark)")
    p.add_argument("--out", help="output folder (default benchmarks/results, or benchmarks/results/quick with --quick)")
    p.add_argument("--quick", action="store_true", help="ETTh1, h 96/192, 2 channels, 16 windows: a CI smoke run")
    p.add_argument("--no-report", action="store_true", help="skip leaderboard.md and the PNGs")
    p.add_argument(
        "--rerun",
        action="store_true",
        help="run the planned cells again even where <out> holds them, replacing the old results",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _csv(value: str | None, default, cast=str, flag: str = "") -> list:
    if not value:
        return list(default)
    try:
        items = [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated {cast.__name__} values, got {value!r}") from None
    if not items:  # "--models ," ran nothing and reported success
        raise ValueError(f"{flag} lists nothing: {value!r}")
    return items


def context_lengths(value: str | None) -> dict[int, int]:
    if not value:
        return dict(DEFAULT_CONTEXT)
    parts = _csv(value, (), int, "--context-length")
    if len(parts) == 1:
        return {h: parts[0] for h in HORIZONS}
    if len(parts) != len(HORIZONS):
        raise ValueError(f"--context-length takes one value or {len(HORIZONS)}, got {value!r}")
    return dict(zip(HORIZONS, parts))


def resolve(args) -> dict:
    """Turn the arguments into the run plan, with the --quick defaults, and validate it."""
    quick = args.quick
    datasets = _csv(args.datasets, QUICK["datasets"] if quick else DATASETS, flag="--datasets")
    horizons = _csv(args.horizons, QUICK["horizons"] if quick else HORIZONS, int, "--horizons")
    allowed = ZERO_SHOT if args.setting == "zero-shot" else FULL_SHOT
    if args.models:
        models = _csv(args.models, (), flag="--models")
    elif quick:
        models = ["naive", "seasonal_naive", "timemoe"] if args.setting == "zero-shot" else ["dlinear", "timemoe"]
    else:
        models = list(DEFAULT_MODELS[args.setting])
    for d in datasets:
        if d not in DATASETS:
            raise ValueError(f"unknown dataset {d!r}; choose from {', '.join(DATASETS)}")
    for h in horizons:
        if h not in HORIZONS:
            raise ValueError(f"horizon {h} is not one of the protocol's {HORIZONS}")
    for m in models:
        if m not in allowed:
            other = "full-shot" if args.setting == "zero-shot" else "zero-shot"
            raise ValueError(
                f"model {m!r} is not a {args.setting} model; allowed: {', '.join(allowed)} (or --setting {other})"
            )
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / ("quick" if quick else "")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for the leaderboard's files")
    return {
        "datasets": datasets,
        "horizons": horizons,
        "models": models,
        "channels": args.channels or (QUICK["channels"] if quick else None),
        "max_windows": args.max_windows or (QUICK["max_windows"] if quick else None),
        "out": out,
    }


STATS_MODELS = ("autoets", "autotheta", "autoarima")
DARTS_MODELS = ("dlinear", "nlinear", "tide", "tsmixer", "nhits")


def cell_scope(args, plan: dict, key: str) -> dict:
    """The settings that change a cell's numbers for model ``key`` (not device, batch size or progress), so a
    rerun can tell an old cell made differently from one it may skip."""
    options = baseline_options(args, plan)
    scope = {"max_windows": plan["max_windows"], "channels": plan["channels"]}
    if key == "timemoe":
        from ours import default_normalize_window

        normalize = args.normalize_window
        scope.update(
            model_path=os.path.normpath(args.model_path) if args.model_path else None,
            preset=args.preset,
            dtype=args.dtype or "fp32",
            context_length=context_lengths(args.context_length),
            normalize_window=(
                default_normalize_window(args.model_path, args.preset, args.setting) if normalize is None else normalize
            ),
        )
        if args.preset or args.setting == "full-shot":  # random preset weights and fine-tuning are seeded
            scope["seed"] = args.seed
        if args.setting == "full-shot":
            scope["finetune"] = build_finetune(args)
    elif key in STATS_MODELS:
        scope.update({k: options[k] for k in ("stats_windows", "stats_lookback")})
    elif key in DARTS_MODELS:  # trained from random weights: the seed counts
        scope.update(
            {k: options[k] for k in ("seed", "darts_windows", "darts_lookback", "darts_epochs", "darts_samples")}
        )
    return scope


@functools.cache  # one parse per distinct command, not one per cell
def recorded_scope(command: str | None, key: str) -> dict | None:
    """The scope of a cell rebuilt from the command cells.jsonl recorded for it (None when that command no
    longer parses: such cells are trusted as they are)."""
    if not command:
        return None
    try:  # commands recorded before shlex.join quoted them may not split (a quote in a path)
        words = shlex.split(command)
        argv = words[2:] if len(words) >= 2 and words[1].endswith("leaderboard.py") else words
        old = _parse_quietly(argv)
        return cell_scope(old, resolve(old), key)
    except (SystemExit, ValueError):
        return None


def _parse_quietly(argv: list[str]) -> argparse.Namespace:
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        return parse_args(argv)


def _first_few(items: list[str]) -> str:
    return "; ".join(items[:4]) + (f"; and {len(items) - 4} more" if len(items) > 4 else "")


def stale_cells(args, plan: dict, store: ResultStore, labels: dict[str, str], horizons=None) -> list[str]:
    """The planned cells (or those of ``horizons``) that <out> holds but made with other settings, each with what
    differs."""
    stale = []
    for name in plan["datasets"]:
        for key in plan["models"]:
            scope = cell_scope(args, plan, key)
            for horizon in plan["horizons"] if horizons is None else horizons:
                if not store.has(name, args.setting, labels[key], horizon):
                    continue
                old = recorded_scope(store.command_of(name, args.setting, labels[key], horizon), key)
                if old is None or old == scope:
                    continue
                diff = ", ".join(f"{k} {old.get(k)!r} (now {v!r})" for k, v in scope.items() if old.get(k) != v)
                stale.append(f"{name} {labels[key]} h={horizon}: {diff}")
    return stale


def build_finetune(args) -> dict:
    """Time-MoE's full-shot fine-tuning settings, with the --quick default."""
    finetune = {
        "epochs": None if args.finetune_steps else args.finetune_epochs,
        "steps": args.finetune_steps or (2 if args.quick and args.setting == "full-shot" else None),
        "lr": args.finetune_lr,
        "batch_size": args.finetune_batch_size,
        "max_length": args.finetune_max_length,
        "rounds": args.finetune_rounds,
        "val_windows": args.finetune_val_windows,
    }
    if finetune["steps"]:
        finetune["epochs"] = None
    return finetune


def build_timemoe(args, plan):
    from ours import TimeMoERunner

    finetune = build_finetune(args)
    return TimeMoERunner(
        args.model_path,
        setting=args.setting,
        preset=args.preset,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        context_lengths=context_lengths(args.context_length),
        normalize_window=args.normalize_window,
        max_windows=plan["max_windows"],
        horizons=plan["horizons"],
        finetune=finetune,
        label=args.label,
        seed=args.seed,
    )


def baseline_options(args, plan) -> dict:
    """The options every baseline is built with (``make_baseline``'s), with the --quick and --max-windows caps."""
    cap = plan["max_windows"]

    def capped(n):
        return n if cap is None else min(n, cap)

    return {
        "max_windows": cap,
        # An explicit flag wins over --quick's smaller default (--quick --stats-windows 10 ran 4 windows).
        "stats_windows": capped(args.stats_windows or (4 if args.quick else 50)),
        "stats_lookback": args.stats_lookback,
        "darts_windows": capped(args.darts_windows),
        "darts_lookback": args.darts_lookback,
        "darts_epochs": args.darts_epochs or (1 if args.quick else 2),
        "darts_samples": args.darts_samples or (256 if args.quick else 7000),
        "seed": args.seed,
    }


def build_baseline(key, data, args, plan):
    return make_baseline(key, data.season, quick=args.quick, jobs=args.jobs, **baseline_options(args, plan))


def run_cell(forecaster, data, horizon: int, channels: list[int]) -> dict:
    """Forecast every (subsampled) test window of every channel; pooled MSE/MAE and timings."""
    start = time.perf_counter()
    forecaster.prepare(data, horizon)
    span = max(HORIZONS) if forecaster.shared_windows else None
    starts = data.window_starts(horizon, forecaster.max_windows, span_horizon=span)
    ctx_len = forecaster.context_length(horizon)
    metrics = PooledMetrics()
    for c in channels:
        for i in range(0, len(starts), CHUNK):
            chunk = starts[i : i + CHUNK]
            pred = forecaster.predict(data.contexts(c, chunk, ctx_len), horizon)  # [N, H]
            metrics.update(pred, data.targets(c, chunk, horizon))
    return {
        "mse": metrics.mse,
        "mae": metrics.mae,
        "windows": len(starts) * len(channels),
        "windows_per_channel": len(starts),
        "window_set": window_set(data, horizon, len(starts), span),
        "seconds": time.perf_counter() - start,
        "context_length": ctx_len,
    }


def window_set(data, horizon: int, per_channel: int, span: int | None) -> str:
    """Which windows a cell scored: "all", or "K@hS" (K per channel spread over those valid at horizon S). Two
    subsamples of one count are other windows when spread over other spans; the report ranks like with like."""
    if per_channel >= data.num_windows(horizon):
        return "all"
    return f"{per_channel}@h{max(span or horizon, horizon)}"


def example_window(forecaster, data, horizon: int) -> dict:
    """One fixed window (last channel, middle of the test windows) for the forecast-vs-truth plot."""
    channel = data.num_channels - 1
    start = data.window_starts(horizon)[data.num_windows(horizon) // 2 : data.num_windows(horizon) // 2 + 1]
    pred = forecaster.predict(data.contexts(channel, start, forecaster.context_length(horizon)), horizon)[0]
    return {
        "channel": data.columns[channel],
        "start": int(start[0]),
        "horizon": horizon,
        "history": np.round(data.contexts(channel, start, 2 * horizon)[0].astype(float), 5).tolist(),
        "truth": np.round(data.targets(channel, start, horizon)[0].astype(float), 5).tolist(),
        "forecast": np.round(np.asarray(pred, dtype=float), 5).tolist(),
    }


def run(args) -> Path:
    plan = resolve(args)
    store = ResultStore(plan["out"])
    timemoe = build_timemoe(args, plan) if "timemoe" in plan["models"] else None
    total = len(plan["datasets"]) * len(plan["models"]) * len(plan["horizons"])
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    labels = {key: timemoe.name if key == "timemoe" else _baseline_name(key) for key in plan["models"]}
    if not args.rerun:
        stale = stale_cells(args, plan, store, labels)
        if stale:
            raise ValueError(
                f"{store.csv_path} already holds {len(stale)} of these cells made with other settings: "
                f"{_first_few(stale)}. "
                "Pass --rerun to replace them, or choose another --out"
            )
    # A model's avg row averages its four horizons: cells of the horizons this run leaves alone, made with other
    # settings (a capped --max-windows, say), would be averaged with this run's without a word.
    others = [h for h in HORIZONS if h not in plan["horizons"]]
    mixed = stale_cells(args, plan, store, labels, horizons=others)
    if mixed:
        raise ValueError(
            f"{store.csv_path} holds other horizons of these models made with other settings: {_first_few(mixed)}. "
            f"Their avg rows would mix the two: run all horizons (--horizons {','.join(map(str, HORIZONS))} "
            "--rerun), or choose another --out"
        )
    loaded = {}  # datasets read for that check, not read again for their cells
    if plan["channels"] and args.channels:  # checked before any cell runs: --channels 50 ran ETTh1's 7 silently
        for name in plan["datasets"]:
            loaded[name] = load_dataset(name, args.data_dir)
            if args.channels > loaded[name].num_channels:
                raise ValueError(
                    f"--channels {args.channels}, but {name} has only {loaded[name].num_channels} channels"
                )
    bar = tqdm(total=total, desc="cells", disable=args.no_progress, file=sys.stderr)
    command = "python benchmarks/leaderboard.py " + shlex.join(getattr(args, "_argv", []))
    with logging_redirect_tqdm():  # log lines go above the bar instead of breaking it into fragments
        skipped = _run_cells(args, plan, store, labels, timemoe, bar, command, loaded)
    bar.close()
    if skipped:  # a re-run "as written" against the committed results computed nothing, and said nothing
        log.info(
            "%d of %d cells were already in %s with these settings and were not run again; "
            "pass --rerun to recompute them, or --out for a fresh folder",
            skipped, total, store.csv_path,
        )  # fmt: skip
    store.save()
    if not args.no_report:
        from report import render

        render(plan["out"])
    return plan["out"]


def _run_cells(args, plan, store, labels, timemoe, bar, command, loaded: dict) -> int:
    """Run and store every cell of the plan not already stored; returns how many were skipped as stored.
    ``loaded``: datasets already read, by name."""
    skipped = 0
    for name in plan["datasets"]:
        data = None
        for key in plan["models"]:
            forecaster = None
            for horizon in plan["horizons"]:
                label = labels[key]
                if store.has(name, args.setting, label, horizon) and not args.rerun:
                    skipped += 1
                    bar.update(1)
                    continue
                if data is None:
                    data = loaded.pop(name) if name in loaded else load_dataset(name, args.data_dir)
                    if plan["channels"]:
                        data.values = data.values[:, : plan["channels"]]
                        data.columns = data.columns[: plan["channels"]]
                if forecaster is None:
                    forecaster = timemoe if key == "timemoe" else build_baseline(key, data, args, plan)
                bar.set_postfix_str(f"{name} {label} h={horizon}")
                cell = run_cell(forecaster, data, horizon, list(range(data.num_channels)))
                details = {**cell, "settings": forecaster.settings(), "command": command}
                store.add(name, args.setting, forecaster.name, horizon, cell, details)
                plotted = store.has_example(name, forecaster.name, args.setting) and not args.rerun
                # Always the shortest protocol horizon (96): a run of other horizons replaced the committed plot.
                if horizon == min(HORIZONS) and not plotted:
                    store.add_example(name, forecaster.name, args.setting, example_window(forecaster, data, horizon))
                msg = "%s %s %s h=%d: mse %.4f mae %.4f (%d windows, %.1f s)"
                log.info(msg, name, args.setting, forecaster.name, horizon, cell["mse"], cell["mae"],
                         cell["windows"], cell["seconds"])  # fmt: skip
                bar.update(1)
    return skipped


def _baseline_name(key: str) -> str:
    names = {"naive": "Naive", "seasonal_naive": "SeasonalNaive", "autoets": "AutoETS", "autotheta": "AutoTheta",
             "autoarima": "AutoARIMA", "dlinear": "DLinear", "nlinear": "NLinear", "tide": "TiDE",
             "tsmixer": "TSMixer", "nhits": "NHiTS"}  # fmt: skip
    return names[key]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "darts"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args = parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        out = run(args)
    except (ValueError, ImportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The leaderboard protocol: splits, scaler, window counts, pooled metrics, baselines, and the --quick run."""

from __future__ import annotations

import csv
import importlib
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))  # benchmarks/ is a folder of scripts, imported by path

protocol = importlib.import_module("protocol")
baselines = importlib.import_module("baselines")
results = importlib.import_module("results")


def _etth_like(rows=14400, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    raw = 5 + 2 * np.sin(2 * np.pi * t / 24) + rng.standard_normal((rows, channels)) * np.arange(1, channels + 1)
    return protocol.from_values("toy", [f"c{i}" for i in range(channels)], raw, "etth", 24), raw


def _data_dir_or_skip() -> Path:
    d = protocol.default_data_dir()
    if not (d / "ETTh1.csv").exists():
        pytest.skip(f"benchmark data not found in {d}")
    return d


# Splits --------------------------------------------------------------------------------------------
def test_split_borders_follow_the_paper():
    assert protocol.split_borders("etth", 17420) == (8640, 11520, 14400)
    assert protocol.split_borders("ettm", 69680) == (4 * 8640, 4 * 11520, 4 * 14400)
    # Weather: int(0.7 n) train, int(0.2 n) test, the rest val.
    assert protocol.split_borders("ratio", 52696) == (36887, 52696 - 10539, 52696)
    with pytest.raises(ValueError, match="at least 14400"):
        protocol.split_borders("etth", 1000)


def test_real_files_split_sizes():
    data_dir = _data_dir_or_skip()
    d = protocol.load_dataset("ETTh1", data_dir)
    assert (d.train.shape[0], d.val.shape[0], d.test.shape[0], d.num_channels) == (8640, 2880, 2880, 7)
    assert d.columns[-1] == "OT"


# Scaler --------------------------------------------------------------------------------------------
def test_scaler_is_fit_on_train_only_and_matches_sklearn():
    d, raw = _etth_like()
    np.testing.assert_allclose(d.train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(d.train.std(axis=0), 1, atol=1e-5)
    sklearn_pre = pytest.importorskip("sklearn.preprocessing")
    ref = sklearn_pre.StandardScaler().fit(raw[: d.train_end]).transform(raw[: d.test_end])
    np.testing.assert_allclose(d.values, ref, atol=1e-5)
    # Test rows are not used for the fit: changing them leaves train scaled values unchanged.
    raw2 = raw.copy()
    raw2[d.test_start :] += 100
    d2 = protocol.from_values("toy", d.columns, raw2, "etth", 24)
    np.testing.assert_array_equal(d2.train, d.train)


def test_constant_column_gets_unit_scale():
    mean, std = protocol.fit_scaler(np.ones((10, 2)))
    np.testing.assert_array_equal(std, [1.0, 1.0])


# Windows -------------------------------------------------------------------------------------------
def _official_windows(d, channel, context, horizon):
    """The official loop: the test segment starts `context` rows before the border; window ends at
    offsets range(context + horizon, n_points) (the window ending on the last row is never used)."""
    seq = d.values[d.test_start - context : d.test_end, channel]
    window = context + horizon
    xs, ys = [], []
    for offset in range(window, len(seq)):
        w = seq[offset - window : offset]
        xs.append(w[:context])
        ys.append(w[-horizon:])
    return np.array(xs), np.array(ys)


@pytest.mark.parametrize("horizon,context", [(96, 512), (192, 64)])
def test_windows_equal_the_official_loop(horizon, context):
    d, _ = _etth_like(channels=2)
    starts = d.window_starts(horizon)
    assert len(starts) == 2880 - horizon
    xs, ys = _official_windows(d, 1, context, horizon)
    np.testing.assert_array_equal(d.contexts(1, starts, context), xs)
    np.testing.assert_array_equal(d.targets(1, starts, horizon), ys)
    # The first context reaches back into val; the last label stops one row before the test end.
    assert starts[0] == d.test_start and starts[-1] + horizon == d.test_end - 1


def test_etth1_h96_has_2784_windows_per_channel():
    data_dir = _data_dir_or_skip()
    d = protocol.load_dataset("ETTh1", data_dir)
    assert d.num_windows(96) == 2784
    assert len(d.window_starts(96)) == 2784
    assert d.num_windows(720) == 2160


def test_subsample_is_even_and_shared_across_horizons():
    idx = protocol.subsample(101, 5)
    np.testing.assert_array_equal(idx, [0, 25, 50, 75, 100])
    assert len(protocol.subsample(10, None)) == 10
    d, _ = _etth_like(channels=1)
    a = d.window_starts(96, 10, span_horizon=720)
    b = d.window_starts(336, 10, span_horizon=720)
    np.testing.assert_array_equal(a, b)
    assert a[-1] + 720 < d.test_end


def test_bad_inputs_raise_clear_errors():
    d, _ = _etth_like(channels=1)
    with pytest.raises(ValueError, match="context_length"):
        d.contexts(0, d.window_starts(96)[:2], d.test_start + 1)
    with pytest.raises(ValueError, match="unknown dataset"):
        protocol.load_dataset("ETTh9")
    with pytest.raises(ValueError, match="differs"):
        protocol.PooledMetrics().update(np.zeros((1, 2)), np.zeros((1, 3)))


# Metrics -------------------------------------------------------------------------------------------
def test_metrics_pool_over_points_not_windows():
    m = protocol.PooledMetrics()
    m.update(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]]))  # squared 1 + 4, absolute 1 + 2
    m.update(np.array([[3.0]]), np.array([[3.0]]))  # no error, one point
    assert m.count == 3
    assert m.mse == pytest.approx(5 / 3)  # the mean of per-batch MSEs would be 1.25
    assert m.mae == pytest.approx(1.0)


# Baselines -----------------------------------------------------------------------------------------
def test_naive_and_seasonal_naive_match_sktime():
    pd = pytest.importorskip("pandas")
    naive_mod = pytest.importorskip("sktime.forecasting.naive")
    rng = np.random.default_rng(1)
    y = rng.standard_normal(60).cumsum()
    for sp, ours in ((1, baselines.NaiveLast(lookback=60)), (7, baselines.SeasonalNaive(7, lookback=60))):
        ref = naive_mod.NaiveForecaster(strategy="last", sp=sp).fit(pd.Series(y)).predict(fh=list(range(1, 20)))
        np.testing.assert_allclose(ours.predict(y[None, :], 19)[0], ref.to_numpy())


def test_average_rows_need_all_four_horizons(tmp_path):
    store = results.ResultStore(tmp_path)
    for h, mse in zip((96, 192, 336), (1.0, 2.0, 3.0)):
        store.add("D", "zero-shot", "M", h, {"mse": mse, "mae": mse, "windows": 10, "seconds": 1.0}, {})
    assert store.average_rows() == []
    store.add("D", "zero-shot", "M", 720, {"mse": 6.0, "mae": 2.0, "windows": 10, "seconds": 1.0}, {})
    (avg,) = store.average_rows()
    assert float(avg["mse"]) == pytest.approx(3.0) and float(avg["mae"]) == pytest.approx(2.0)
    assert avg["windows"] == "40"


# End to end ----------------------------------------------------------------------------------------
def test_quick_run_end_to_end_and_resume(tmp_path):
    _data_dir_or_skip()
    leaderboard = importlib.import_module("leaderboard")
    argv = ["--quick", "--no-progress", "--out", str(tmp_path), "--preset", "tiny", "--context-length", "256"]
    assert leaderboard.main(argv) == 0
    with (tmp_path / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(results.COLUMNS)
    ran = [r for r in rows if r["source"] == "ran"]
    assert {r["model"] for r in ran} == {"Naive", "SeasonalNaive", "Time-MoE[preset:tiny]"}
    assert {r["horizon"] for r in ran} == {"96", "192"}
    assert all(r["windows"] == "32" for r in ran)  # 2 channels x 16 windows
    assert all(np.isfinite(float(r["mse"])) and float(r["mse"]) > 0 for r in ran)
    for name in ("leaderboard.md", "avg_mse.png", "forecast_ETTh1.png"):
        assert (tmp_path / name).exists(), name
    assert "Reported" in (tmp_path / "leaderboard.md").read_text()
    cells = (tmp_path / "cells.jsonl").read_text().splitlines()
    assert leaderboard.main(argv) == 0  # resumable: nothing left to run
    assert (tmp_path / "cells.jsonl").read_text().splitlines() == cells


def test_cli_rejects_a_model_of_the_other_setting(tmp_path):
    leaderboard = importlib.import_module("leaderboard")
    assert leaderboard.main(["--quick", "--models", "dlinear", "--out", str(tmp_path), "--no-progress"]) == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--horizons", "abc"], "--horizons takes comma-separated int values, got 'abc'"),
        (["--context-length", "x"], "--context-length takes comma-separated int values"),
        (["--models", ","], "--models lists nothing"),
    ],
)
def test_list_flags_name_themselves_when_unreadable(tmp_path, flags, message, capsys):
    leaderboard = importlib.import_module("leaderboard")
    assert leaderboard.main(["--quick", "--out", str(tmp_path), "--no-progress", *flags]) == 2
    assert message in capsys.readouterr().err


def test_stats_baseline_fits_each_window_once_for_all_horizons():
    pytest.importorskip("statsforecast")
    rng = np.random.default_rng(2)
    t = np.arange(200)
    contexts = np.stack([np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(200) for _ in range(2)])
    model = baselines.StatsForecast("AutoTheta", season=24, lookback=200, max_windows=2)
    long = model.predict(contexts.astype(np.float32), 192)
    short = model.predict(contexts.astype(np.float32), 96)
    assert long.shape == (2, 192) and len(model._cache) == 2
    np.testing.assert_array_equal(short, long[:, :96])
    # A seasonal series: the forecast keeps the daily cycle (far better than the mean).
    truth = np.sin(2 * np.pi * (np.arange(200, 296)) / 24)
    assert np.mean((short[0] - truth) ** 2) < 0.1


def test_timemoe_runner_batches_by_tokens_and_forecasts_the_same():
    ours = importlib.import_module("ours")
    contexts = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    capped = ours.TimeMoERunner(preset="tiny", batch_size=8, batch_tokens=200, context_lengths={96: 64})
    plain = ours.TimeMoERunner(preset="tiny", batch_size=8, context_lengths={96: 64})
    assert capped.windows_per_batch(64) == 3 and capped.windows_per_batch(4096) == 1
    assert plain.windows_per_batch(4096) == 8
    data, _ = _etth_like()
    for runner in (capped, plain):
        runner.prepare(data, 96)
    a, b = capped.predict(contexts, 8), plain.predict(contexts, 8)
    assert a.shape == (10, 8) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_full_shot_selects_per_horizon_the_weights_best_on_val():
    ours = importlib.import_module("ours")
    data, _ = _etth_like()
    runner = ours.TimeMoERunner(
        preset="tiny",
        setting="full-shot",
        context_lengths={96: 128, 192: 128, 336: 128, 720: 128},
        finetune={"steps": 3, "rounds": 2, "max_length": 64, "batch_size": 4, "lr": 1e-2, "val_windows": 4},
    )
    runner.prepare(data, 96)
    info = runner.train_info
    assert info["total_steps"] == 6 and len(info["round_losses"]) == 2
    # The recorded settings keep the per-round steps (the total overwrote them: 300 recorded for 3 x 100).
    assert runner.settings()["finetune"]["steps"] == 3 and runner.settings()["finetune"]["total_steps"] == 6
    assert set(info["val_mse"]) == {"96", "192", "336", "720"}
    for h, scores in info["val_mse"].items():
        assert len(scores) == 3  # zero-shot weights, then after each round
        assert info["chosen_round"][h] == int(np.argmin(scores))
    # The weights in use are the chosen candidate's, and differ from another round's.
    chosen = runner._candidates[info["chosen_round"]["96"]]
    assert all(torch.equal(v, chosen[k]) for k, v in runner._model.state_dict().items())
    other = runner._candidates[(info["chosen_round"]["96"] + 1) % 3]
    assert any(not torch.equal(v, other[k]) for k, v in chosen.items())
    # Re-scoring the chosen weights gives the recorded validation MSE: selection used what it says.
    contexts_scores = runner._score_candidates(data)
    assert contexts_scores[96][info["chosen_round"]["96"]] == pytest.approx(min(info["val_mse"]["96"]), rel=1e-3)


def test_cli_passes_the_full_shot_and_batching_options_to_the_runner():
    leaderboard = importlib.import_module("leaderboard")
    args = leaderboard.parse_args(
        ["--setting", "full-shot", "--models", "timemoe", "--preset", "tiny", "--finetune-steps", "7",
         "--finetune-rounds", "3", "--finetune-val-windows", "5", "--batch-tokens", "1000"]
    )  # fmt: skip
    runner = leaderboard.build_timemoe(args, {"max_windows": None, "horizons": [96, 336]})
    assert runner.finetune["steps"] == 7 and runner.finetune["epochs"] is None
    assert runner.finetune["rounds"] == 3 and runner.finetune["val_windows"] == 5
    assert runner.windows_per_batch(512) == 1 and runner.windows_per_batch(100) == 10
    assert runner.horizons == [96, 336]


@pytest.mark.parametrize("flag", ["--max-windows", "--channels", "--finetune-rounds", "--finetune-val-windows"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_count_flags_refuse_zero_and_negatives(flag, value, capsys):
    # --max-windows 0 ran every window, --channels -1 dropped OT, --finetune-rounds 0 ran one round.
    leaderboard = importlib.import_module("leaderboard")
    with pytest.raises(SystemExit):
        leaderboard.parse_args([flag, value])
    assert "expected a whole number >= 1" in capsys.readouterr().err


def test_the_embedded_default_is_window_normalised_unless_asked_and_the_label_says_so():
    ours = importlib.import_module("ours")
    leaderboard = importlib.import_module("leaderboard")
    plan = {"max_windows": None, "horizons": [96]}
    runner = leaderboard.build_timemoe(leaderboard.parse_args(["--models", "timemoe"]), plan)
    assert runner.normalize_window and runner.name == "Time-MoE[default]"  # the model card's cells
    raw = leaderboard.build_timemoe(leaderboard.parse_args(["--no-normalize-window"]), plan)
    assert not raw.normalize_window and raw.name == "Time-MoE[default, raw windows]"  # a cell of its own
    tiny = leaderboard.build_timemoe(leaderboard.parse_args(["--preset", "tiny"]), plan)
    assert not tiny.normalize_window and tiny.name == "Time-MoE[preset:tiny]"  # run_eval.py's setting
    assert ours.model_label("/ckpt/base", None, True) == "Time-MoE[base, window-normalised]"
    # A folder named "default" (the embedded checkpoint's own, say) is read on raw windows: not the default's cell.
    assert ours.model_label("/x/assets/default") == "Time-MoE[path:/x/assets/default]"


def test_full_shot_scores_standardised_windows_as_it_fine_tunes_on_them():
    # A checkpoint given by path was scored on dataset-scaled windows while fine-tuning trained it on standardised
    # ones: the tuned weights lost on validation, the zero-shot ones were kept, and the row said "full-shot".
    ours = importlib.import_module("ours")
    leaderboard = importlib.import_module("leaderboard")
    plan = {"max_windows": None, "horizons": [96]}
    full = leaderboard.build_timemoe(leaderboard.parse_args(["--setting", "full-shot", "--preset", "tiny"]), plan)
    assert full.normalize_window and full.name == "Time-MoE[preset:tiny]"
    zero = leaderboard.build_timemoe(leaderboard.parse_args(["--preset", "tiny"]), plan)
    assert not zero.normalize_window  # zero-shot keeps run_eval.py's setting for other checkpoints
    with pytest.raises(ValueError, match="full-shot fine-tunes on standardised windows"):
        ours.TimeMoERunner("/some/ckpt", setting="full-shot", normalize_window=False)


def test_full_shot_scores_only_the_horizons_of_the_run():
    ours = importlib.import_module("ours")
    data, _ = _etth_like()
    runner = ours.TimeMoERunner(
        preset="tiny",
        setting="full-shot",
        horizons=[96],
        context_lengths={96: 128, 192: 128, 336: 128, 720: 128},
        finetune={"steps": 1, "rounds": 1, "max_length": 64, "batch_size": 4, "val_windows": 2},
    )
    runner.prepare(data, 96)
    assert set(runner.train_info["val_mse"]) == {"96"}


def test_a_forecast_plot_never_mixes_channels(tmp_path):
    store = results.ResultStore(tmp_path)
    window = {"start": 10, "horizon": 2, "history": [0.0], "truth": [1.0, 2.0], "forecast": [1.0, 1.0]}
    store.add_example("ETTh1", "A", "zero-shot", {**window, "channel": "HULL"})
    store.add_example("ETTh1", "B", "zero-shot", {**window, "channel": "OT"})
    entry = results.ResultStore(tmp_path).examples["ETTh1"]
    assert entry["channel"] == "OT" and list(entry["forecasts"]) == ["B (zero-shot)"]


def _synthetic_etth1(directory: Path) -> Path:
    """An ETTh1.csv of sine channels with the real file's length (the protocol's borders are fixed)."""
    t = np.arange(17420)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2016-07-01", periods=len(t), freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "HUFL": np.sin(2 * np.pi * t / 24),
            "OT": np.cos(2 * np.pi * t / 24) + 0.001 * t,
        }
    )
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_csv(directory / "ETTh1.csv", index=False)
    return directory


def test_a_rerun_with_other_settings_stops_instead_of_skipping_the_old_cells(tmp_path, capsys):
    # Cells made with --max-windows 4 used to be skipped as done by a run asking for 8 windows, so the
    # board silently kept the 4-window numbers.
    leaderboard = importlib.import_module("leaderboard")
    data = _synthetic_etth1(tmp_path / "data")
    out = tmp_path / "out"
    base = ["--datasets", "ETTh1", "--horizons", "96", "--models", "naive,seasonal_naive", "--data-dir", str(data)]
    base += ["--out", str(out), "--no-progress", "--no-report"]
    assert leaderboard.main(base + ["--max-windows", "4"]) == 0
    first = read_csv_rows(out)
    assert {r["windows"] for r in first} == {"8"}  # 2 channels x 4 windows

    assert leaderboard.main(base + ["--max-windows", "4"]) == 0  # same settings: resumes, runs nothing
    assert len((out / "cells.jsonl").read_text().splitlines()) == 2

    capsys.readouterr()
    assert leaderboard.main(base + ["--max-windows", "8"]) == 2
    err = capsys.readouterr().err
    assert "ETTh1 Naive h=96" in err and "max_windows 4 (now 8)" in err and "--rerun" in err
    assert read_csv_rows(out) == first  # nothing ran, nothing replaced

    assert leaderboard.main(base + ["--max-windows", "8", "--rerun"]) == 0
    assert {r["windows"] for r in read_csv_rows(out)} == {"16"}
    assert leaderboard.main(base + ["--max-windows", "8"]) == 0  # the replaced cells now match
    assert leaderboard.main(base + ["--max-windows", "8", "--seed", "1"]) == 0  # naive models ignore the seed

    # A command recorded before commands were quoted, and a line cut short by a kill, do not stop later runs.
    cells = out / "cells.jsonl"
    lines = cells.read_text().splitlines()
    cells.write_text("\n".join([lines[0].replace("--no-report", "--data-dir /home/o'brien")] + lines[1:]) + '\n{"dat')
    assert leaderboard.main(base + ["--max-windows", "8"]) == 0
    # The next record starts a new line instead of joining the fragment (and being lost with it).
    assert leaderboard.main(base + ["--max-windows", "8", "--rerun"]) == 0
    assert "--rerun" in results.ResultStore(out).command_of("ETTh1", "zero-shot", "Naive", 96)


def test_a_run_of_other_horizons_keeps_the_plot_and_a_cut_line_does_not_stop_the_report(tmp_path, capsys):
    # The plot took the run's shortest horizon: a --rerun of h=336 replaced the committed h=96 plot (and its other
    # models' forecasts). report.py failed on a cells.jsonl line cut short by a kill, which the runs skip.
    leaderboard = importlib.import_module("leaderboard")
    report = importlib.import_module("report")
    data = _synthetic_etth1(tmp_path / "data")
    out = tmp_path / "out"
    base = ["--datasets", "ETTh1", "--data-dir", str(data), "--out", str(out), "--no-progress", "--max-windows", "4"]
    assert leaderboard.main(base + ["--horizons", "96", "--models", "naive,seasonal_naive", "--no-report"]) == 0
    plotted = results.ResultStore(out).examples["ETTh1"]
    assert plotted["horizon"] == 96 and len(plotted["forecasts"]) == 2
    assert leaderboard.main(base + ["--horizons", "336", "--models", "naive", "--rerun", "--no-report"]) == 0
    assert results.ResultStore(out).examples["ETTh1"] == plotted
    with (out / "cells.jsonl").open("a") as f:
        f.write('{"dataset": "ETTh1", "setting": "zero-sh')
    report.main([str(out)])
    assert "Naive" in (out / "leaderboard.md").read_text()
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "data")])
    assert "holds no leaderboard.csv" in capsys.readouterr().err


def test_a_run_of_other_horizons_with_other_settings_would_mix_the_avg_row_and_is_refused(tmp_path, capsys):
    # A capped h=96 cell and full h=192/336/720 cells were averaged into one avg row without a word.
    leaderboard = importlib.import_module("leaderboard")
    data = _synthetic_etth1(tmp_path / "data")
    base = ["--datasets", "ETTh1", "--data-dir", str(data), "--out", str(tmp_path / "out"), "--no-progress"]
    base += ["--models", "naive", "--no-report"]
    assert leaderboard.main(base + ["--horizons", "96", "--max-windows", "4"]) == 0
    assert leaderboard.main(base + ["--horizons", "192,336,720", "--max-windows", "8"]) == 2
    assert re.search(r"other horizons .* h=96: max_windows 4 \(now 8\)\. Their avg rows", capsys.readouterr().err)
    assert leaderboard.main(base + ["--horizons", "192,336,720", "--max-windows", "4"]) == 0  # the same settings
    assert [r["horizon"] for r in read_csv_rows(tmp_path / "out")] == ["96", "192", "336", "720", "avg"]
    # Both commands made cells on the board, so the report lists both (it kept one per model: the last).
    importlib.import_module("report").main([str(tmp_path / "out")])
    listed = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "--horizons 96 " in listed and "--horizons 192,336,720 " in listed


def test_the_stale_check_sees_model_settings_and_ignores_spelling(tmp_path):
    leaderboard = importlib.import_module("leaderboard")

    def scope(*argv):
        args = leaderboard.parse_args(["--models", "timemoe", *argv])
        return leaderboard.cell_scope(args, leaderboard.resolve(args), "timemoe")

    assert scope("--model-path", "./ckpt") == scope("--model-path", "ckpt")
    assert scope("--preset", "tiny") != scope("--preset", "tiny", "--seed", "1")  # random weights are seeded
    assert scope() == scope("--seed", "1")  # a checkpoint's zero-shot forecasts are not
    assert scope() == scope("--normalize-window")  # the embedded default's own setting
    assert scope() != scope("--no-normalize-window")
    assert scope("--setting", "full-shot", "--quick")["finetune"]["steps"] == 2
    assert scope("--setting", "full-shot")["finetune"]["steps"] is None


def read_csv_rows(out: Path) -> list[dict]:
    with (out / "leaderboard.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["source"] == "ran"]


def test_a_run_that_finds_its_cells_stored_says_so(tmp_path, caplog):
    # Re-running the docs' command against the committed results computed nothing and said nothing.
    leaderboard = importlib.import_module("leaderboard")
    data = _synthetic_etth1(tmp_path / "data")
    argv = ["--datasets", "ETTh1", "--horizons", "96", "--models", "naive", "--data-dir", str(data), "--max-windows"]
    argv += ["2", "--out", str(tmp_path / "out"), "--no-progress", "--no-report"]
    assert leaderboard.main(argv) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="leaderboard"):
        assert leaderboard.main(argv) == 0
    assert "1 of 1 cells were already in" in caplog.text and "--rerun" in caplog.text


def test_more_channels_than_a_dataset_has_are_refused_before_running(tmp_path, capsys):
    leaderboard = importlib.import_module("leaderboard")
    data = _synthetic_etth1(tmp_path / "data")  # 2 channels
    argv = ["--datasets", "ETTh1", "--horizons", "96", "--models", "naive", "--data-dir", str(data), "--channels", "5"]
    assert leaderboard.main(argv + ["--out", str(tmp_path / "out"), "--no-progress", "--no-report"]) == 2
    assert "--channels 5, but ETTh1 has only 2 channels" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells.jsonl").exists()


def test_explicit_baseline_flags_win_over_the_quick_defaults():
    leaderboard = importlib.import_module("leaderboard")

    def options(*flags):
        args = leaderboard.parse_args(["--quick", *flags])
        return leaderboard.baseline_options(args, leaderboard.resolve(args))

    quick = options()
    assert (quick["stats_windows"], quick["darts_epochs"], quick["darts_samples"]) == (4, 1, 256)
    chosen = options("--stats-windows", "10", "--darts-epochs", "5", "--darts-samples", "7000")
    assert (chosen["stats_windows"], chosen["darts_epochs"], chosen["darts_samples"]) == (10, 5, 7000)
    full = leaderboard.baseline_options(*(lambda a: (a, leaderboard.resolve(a)))(leaderboard.parse_args([])))
    assert (full["stats_windows"], full["darts_epochs"], full["darts_samples"]) == (50, 2, 7000)


def test_the_board_ranks_only_cells_scored_on_the_same_windows():
    report = importlib.import_module("report")

    def row(model, mse, mae, windows):
        return {"dataset": "ETTh2", "setting": "zero-shot", "model": model, "horizon": "96", "mse": str(mse),
                "mae": str(mae), "source": "ran", "windows": str(windows)}  # fmt: skip

    rows = [row("AutoTheta", 0.32, 0.34, 350), row("Naive", 0.43, 0.42, 19481), row("Time-MoE", 0.29, 0.35, 19481)]
    table = "\n".join(report.setting_table(rows, "zero-shot"))
    line = next(x for x in table.splitlines() if x.startswith("| ETTh2 | 96 |"))
    # AutoTheta's MAE is the lowest, on 350 windows of its own: marked, not ranked; Time-MoE has the best of the rest.
    assert line == "| ETTh2 | 96 | 0.320 / 0.340 † | 0.430 / 0.420 | **0.290** / **0.350** |"
    assert "† scored on fewer windows" in table


def test_cells_of_one_window_count_on_other_windows_are_not_ranked_together():
    # --max-windows 50: the stats baselines spread 50 windows over those valid at horizon 720, the others over their
    # own horizon's; the same SeasonalNaive scored up to 9% apart on the two sets (helper-measured).
    report = importlib.import_module("report")

    def row(model, mse, window_set):
        return {"dataset": "ETTh1", "setting": "zero-shot", "model": model, "horizon": "336", "mse": str(mse),
                "mae": str(mse), "source": "ran", "windows": "350", "window_set": window_set}  # fmt: skip

    rows = [row("AutoTheta", 0.40, "50@h720"), row("Naive", 0.60, "50@h336"), row("Time-MoE", 0.45, "50@h336")]
    line = next(x for x in report.setting_table(rows, "zero-shot") if x.startswith("| ETTh1 | 336 |"))
    assert line == "| ETTh1 | 336 | 0.400 / 0.400 † | 0.600 / 0.600 | **0.450** / **0.450** |"
    # A tie between two sets ranks the one spread over the row's own horizon ("50@h720" sorts before "50@h96").
    tie = [row("AutoETS", 0.5, "50@h720"), row("AutoTheta", 0.4, "50@h720"), row("Naive", 0.6, "50@h96")]
    tie += [row("Time-MoE", 0.3, "50@h96")]
    for r in tie:
        r["horizon"] = "96"
    line = next(x for x in report.setting_table(tie, "zero-shot") if x.startswith("| ETTh1 | 96 |"))
    assert line.endswith("| 0.600 / 0.600 | **0.300** / **0.300** |") and line.count("†") == 2


def test_an_average_over_horizons_of_unrecorded_windows_is_ranked_with_new_cells(tmp_path):
    # A folder of cells from before window_set was recorded, plus a new model on the same (full) windows.
    report = importlib.import_module("report")
    store = results.ResultStore(tmp_path)
    for model, mse in (("Old1", 0.4), ("Old2", 0.45), ("New", 0.3)):
        for h in protocol.HORIZONS:
            cell = {"mse": mse, "mae": mse, "windows": 10, "seconds": 1.0}
            store.add("D", "zero-shot", model, h, {**cell, "window_set": "all"} if model == "New" else cell, {})
    rows = results.read_rows(tmp_path)
    line = next(x for x in report.setting_table(rows, "zero-shot") if x.startswith("| D | avg |"))
    assert line == "| D | avg | **0.300** / **0.300** | 0.400 / 0.400 | 0.450 / 0.450 |"


def test_a_cell_records_which_windows_it_scored():
    leaderboard = importlib.import_module("leaderboard")
    d, _ = _etth_like(channels=1)
    assert leaderboard.window_set(d, 96, d.num_windows(96), None) == "all"
    assert leaderboard.window_set(d, 96, 50, None) == "50@h96"
    assert leaderboard.window_set(d, 96, 50, 720) == "50@h720"
    starts_own, starts_720 = d.window_starts(96, 50), d.window_starts(96, 50, span_horizon=720)
    assert not np.array_equal(starts_own, starts_720)  # so the two labels do name other windows


def test_two_runs_into_one_folder_keep_each_others_cells(tmp_path):
    first, second = results.ResultStore(tmp_path), results.ResultStore(tmp_path)  # both read the empty folder
    for h in (96, 192):
        first.add("D", "zero-shot", "A", h, {"mse": 1.0, "mae": 1.0, "windows": 10, "seconds": 1.0}, {})
        second.add("D", "zero-shot", "B", h, {"mse": 2.0, "mae": 2.0, "windows": 10, "seconds": 1.0}, {})
    ran = [r for r in results.read_rows(tmp_path) if r["source"] == "ran"]
    assert sorted((r["model"], r["horizon"]) for r in ran) == [("A", "192"), ("A", "96"), ("B", "192"), ("B", "96")]
    # A rerun of a cell by one run replaces it; the other run's later save does not bring the old value back.
    first.add("D", "zero-shot", "A", 96, {"mse": 0.5, "mae": 0.5, "windows": 10, "seconds": 1.0}, {})
    second.add("D", "zero-shot", "B", 336, {"mse": 2.0, "mae": 2.0, "windows": 10, "seconds": 1.0}, {})
    by = {(r["model"], r["horizon"]): r for r in results.read_rows(tmp_path) if r["source"] == "ran"}
    assert float(by[("A", "96")]["mse"]) == 0.5 and ("B", "336") in by
    # A cell the first run saved long ago and the second has rerun since stays the second's.
    second.add("D", "zero-shot", "A", 192, {"mse": 0.25, "mae": 0.25, "windows": 20, "seconds": 1.0}, {})
    first.add("D", "zero-shot", "A", 720, {"mse": 1.0, "mae": 1.0, "windows": 10, "seconds": 1.0}, {})
    by = {(r["model"], r["horizon"]): r for r in results.read_rows(tmp_path) if r["source"] == "ran"}
    assert float(by[("A", "192")]["mse"]) == 0.25 and ("A", "720") in by
    # Each run's forecast plot survives the other's.
    example = {"channel": 0, "start": 5, "horizon": 96, "history": [0.0], "truth": [1.0]}
    first.add_example("D", "A", "zero-shot", {**example, "forecast": [1.0]})
    second.add_example("D", "B", "zero-shot", {**example, "forecast": [2.0]})
    assert results.ResultStore(tmp_path).has_example("D", "A", "zero-shot")


def test_a_damaged_dataset_and_an_out_that_is_a_file_are_named(tmp_path, capsys):
    raw = pd.DataFrame({"date": pd.date_range("2016-07-01", periods=14400, freq="h"), "a": 1.0, "OT": 2.0})
    raw.loc[100, "OT"] = np.nan
    raw.to_csv(tmp_path / "ETTh1.csv", index=False)
    with pytest.raises(ValueError, match=r"column 'OT', data row 101"):
        protocol.load_dataset("ETTh1", tmp_path)
    for bad in ("2.0x", np.inf):  # text failed as a bare float conversion; inf made the column's scaling NaN
        raw["OT"] = raw["OT"].astype(object)
        raw.loc[100, "OT"] = bad
        raw.to_csv(tmp_path / "ETTh1.csv", index=False)
        with pytest.raises(ValueError, match=r"ETTh1.csv: 1 missing, infinite or non-numeric value\(s\)"):
            protocol.load_dataset("ETTh1", tmp_path)
    leaderboard = importlib.import_module("leaderboard")
    (tmp_path / "file").write_text("")
    assert leaderboard.main(["--quick", "--no-progress", "--models", "naive", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_save_with_nothing_new_leaves_the_results_file_as_it_is(tmp_path):
    # A rerun whose cells were all done rewrote the committed leaderboard.csv (an older file gained the newer
    # window_set column on every line): a diff in the repository for no result.
    old_format = ",".join(results.COLUMNS[:-1]) + "\nD,zero-shot,A,96,1.000000,1.000000,ran,10,1.0\n"
    (tmp_path / "leaderboard.csv").write_text(old_format)
    store = results.ResultStore(tmp_path)
    store.save()
    assert (tmp_path / "leaderboard.csv").read_text() == old_format
    store.add("D", "zero-shot", "A", 192, {"mse": 2.0, "mae": 2.0, "windows": 10, "seconds": 1.0}, {})
    assert sorted(r["horizon"] for r in results.read_rows(tmp_path) if r["source"] == "ran") == ["192", "96"]


@pytest.mark.parametrize("name,context,horizon", [("ETTh1", 512, 96), ("ETTm1", 3072, 720), ("Weather", 2048, 336)])
def test_real_files_match_an_independent_run_eval_loader(name, context, horizon):
    """Borders, train-only scaling and every stride-1 window of the real files, against run_eval.py's
    BenchmarkEvalDataset written again from scratch (pandas + sklearn), for each split kind."""
    data_dir = _data_dir_or_skip()
    sklearn_pre = pytest.importorskip("sklearn.preprocessing")
    spec = protocol.DATASETS[name]
    df = pd.read_csv(data_dir / spec.file)
    n = len(df)
    if spec.kind in ("etth", "ettm"):
        m = 30 * 24 * (4 if spec.kind == "ettm" else 1)
        train_end, test_lo, test_end = 12 * m, 16 * m - context, 20 * m
    else:
        train_end, test_lo, test_end = int(n * 0.7), n - int(n * 0.2) - context, n
    vals = df[df.columns[1:]].values
    scaled = sklearn_pre.StandardScaler().fit(vals[:train_end]).transform(vals[test_lo:test_end]).T  # [C, ctx+test]
    d = protocol.load_dataset(name, data_dir)
    starts = d.window_starts(horizon)
    window = context + horizon
    offsets = range(window, scaled.shape[1])  # the official loop
    assert len(starts) == len(offsets)
    channel = d.num_channels - 1
    ref = np.stack([scaled[channel, o - window : o] for o in offsets])
    np.testing.assert_allclose(d.contexts(channel, starts, context), ref[:, :context], atol=2e-5)
    np.testing.assert_allclose(d.targets(channel, starts, horizon), ref[:, context:], atol=2e-5)

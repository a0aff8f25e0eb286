"""The ``timemoe`` command line: pretrain, finetune and forecast end to end, and its errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction
from timemoe_forecaster.cli import TIME_LIMIT_EXIT, build_parser, main, train_config_from_args
from timemoe_forecaster.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--data", "synthetic#max_length=512", "--batch-size", "2", "--max-length", "32", "--no-progress"]


def rows(text: str, kind: str) -> int:
    return sum(line.split()[:1] == [kind] for line in text.splitlines())


def test_pretrain_then_finetune_then_forecast(tmp_path, capsys):
    out = tmp_path / "pre"
    assert (
        main(["pretrain", "--config", "tiny", *FAST, "--max-steps", "3", "--output-dir", str(out), "--save-every", "2"])
        == 0
    )
    assert "trained 3 steps" in capsys.readouterr().out
    model = TimeMoEForPrediction.from_pretrained(out)
    assert model.config.hidden_size == 8 and [r["step"] for r in read_metrics(out)] == [3]  # log_every 10
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000003"]

    tuned = tmp_path / "tuned"
    args = ["finetune", "--model", str(out), *FAST, "--max-steps", "2", "--output-dir", str(tuned), "--lr", "1e-3"]
    assert main(args) == 0
    after = TimeMoEForPrediction.from_pretrained(tuned).state_dict()
    before = model.state_dict()
    assert set(after) == set(before) and any(not torch.equal(before[k], after[k]) for k in before)

    # Trained on 32-point windows, the model forecasts from 32 points unless told otherwise (airline has 144).
    assert TimeMoEConfig.from_json_file(tuned / "config.json").default_context_length == 32
    assert main(["forecast", "--model", str(tuned), "--dataset", "airline", "--horizon", "5", "--show", "3"]) == 0
    text = capsys.readouterr().out
    assert rows(text, "forecast") == 5 and rows(text, "observed") == 3
    assert "1961-01" in text and "UNTRAINED" not in text and "context 32," in text


def test_a_fresh_run_refuses_a_directory_holding_another_runs_checkpoints(tmp_path, capsys):
    # Interleaved runs would keep the earlier run's higher steps, so a later --resume continued the wrong one.
    out = tmp_path / "run"
    args = ["pretrain", "--config", "tiny", *FAST, "--output-dir", str(out), "--save-every", "2"]
    assert main([*args, "--max-steps", "4"]) == 0
    before = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    with pytest.raises(SystemExit):
        main([*args, "--max-steps", "2"])
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "step_00000004" in err and "--resume" in err
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == before  # nothing touched
    assert main([*args, "--max-steps", "6", "--resume"]) == 0
    assert "trained 6 steps" in capsys.readouterr().out


def test_a_fresh_run_refuses_a_directory_holding_a_saved_model(tmp_path, capsys):
    # Without checkpoints beside it, a saved model's folder was taken: the final save replaced its weights.
    out = tmp_path / "saved"
    TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny")).save_pretrained(out)
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", "tiny", *FAST, "--max-steps", "1", "--output-dir", str(out)])
    assert "already holds a saved model" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights and not (out / "checkpoints").exists()


def test_a_time_limited_run_points_at_its_checkpoint_not_at_a_model(tmp_path, capsys):
    # It printed "model in <dir>" although only a checkpoint was there: from_pretrained(<dir>) then failed.
    args = ["pretrain", "--config", "tiny", "--data", "synthetic", "--max-steps", "1000", "--batch-size", "2"]
    args += ["--max-length", "32", "--output-dir", str(tmp_path), "--time-limit", "1e-9", "--no-progress"]
    # Not 0 (it was): `timemoe pretrain --time-limit ... && timemoe forecast --model <dir>` went on to a missing
    # model, and a job script could not tell "resume me" from done. 75 is neither an error nor a signal's status.
    assert main(args) == TIME_LIMIT_EXIT == 75
    out = capsys.readouterr().out
    assert "time limit reached: trained 1 of 1000 steps" in out and "step_00000001" in out and "--resume" in out
    assert "model in" not in out and not (tmp_path / "model.safetensors").exists()
    # The loop the docs show: resumed with a limit it does not reach, the run finishes and exits 0.
    finish = [a if a != "1000" else "3" for a in args[:-3]] + ["--resume", "--no-progress"]
    assert main(finish) == 0
    assert "trained 3 steps" in capsys.readouterr().out and (tmp_path / "model.safetensors").exists()


def test_forecast_of_a_csv_with_a_date_column_continues_its_dates(tmp_path, capsys):
    csv = tmp_path / "d.csv"
    days = pd.date_range("2024-01-01", periods=40, freq="D")
    # Rows out of order and a text column besides the dates: the dates are found and sorted.
    lines = [f"{d.date()},site{i % 3},{10 + i % 7}" for i, d in enumerate(days)]
    csv.write_text("day,site,load\n" + "\n".join(lines[20:] + lines[:20]) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "1"]) == 0
    out = capsys.readouterr().out
    observed = [line.split() for line in out.splitlines() if line.strip().startswith("observed")]
    forecast = [line.split() for line in out.splitlines() if line.strip().startswith("forecast")]
    assert observed == [["observed", "2024-02-09", f"{10 + 39 % 7:.4f}"]]
    assert [row[1] for row in forecast] == ["2024-02-10", "2024-02-11"]


def _dates_and_values(out: str, kind: str) -> list[list[str]]:
    return [line.split()[1:] for line in out.splitlines() if line.strip().startswith(kind)]


def test_forecast_refuses_values_that_are_not_numbers_instead_of_dropping_them(tmp_path, capsys):
    days = [d.date() for d in pd.date_range("2023-01-01", periods=40, freq="D")]
    # Thousands separators on the values from 1000 on: the column was read as text, left out of the default
    # choice (the constant price was forecast), and with --column the rows from 1,000 on were dropped.
    thousands = tmp_path / "t.csv"
    sales = [f"{990 + i}" if 990 + i < 1000 else f"1,{990 + i - 1000:03d}.5" for i in range(40)]
    thousands.write_text("date,price,sales\n" + "\n".join(f'{d},9.99,"{v}"' for d, v in zip(days, sales)) + "\n")
    for extra in ([], ["--column", "sales"]):
        with pytest.raises(SystemExit):
            main(["forecast", "--dataset", str(thousands), "--horizon", "2", *extra])
        err = capsys.readouterr().err
        assert "column 'sales'" in err and "'1,000.5'" in err and "lines 12, 13" in err
        assert "thousands separators" in err
    # A stray word was counted as a missing value; now it is named with its line.
    word = tmp_path / "w.csv"
    word.write_text("date,sales\n" + "\n".join(f"{d},{'abc' if i == 7 else i}" for i, d in enumerate(days)) + "\n")
    with pytest.raises(SystemExit):
        main(["forecast", "--dataset", str(word), "--horizon", "2"])
    assert "('abc'; lines 9)" in capsys.readouterr().err


def test_forecast_default_column_skips_empty_and_constant_columns(tmp_path, capsys):
    days = [d.date() for d in pd.date_range("2023-01-01", periods=30, freq="D")]
    # A store number after the values, and a trailing comma on every line ("Unnamed: 3", all empty).
    csv = tmp_path / "s.csv"
    csv.write_text("date,sales,store,\n" + "\n".join(f"{d},{100 + i},7," for i, d in enumerate(days)) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "1", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "/ sales," in out and _dates_and_values(out, "observed") == [["2023-01-30", "129.0000"]]
    # A text column with a placeholder ('?') before the values, and a flag after them: neither blocks nor
    # replaces the series.
    lines = [f"{d},{'?' if i == 3 else 20 + i % 5},{100 + i},{i % 2 == 0}" for i, d in enumerate(days)]
    csv.write_text("date,temp,load,promo\n" + "\n".join(lines) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "1", "--show", "1"]) == 0
    assert "/ load," in capsys.readouterr().out


def test_forecast_keeps_a_trailing_infinite_value_as_an_error_and_says_what_it_left_out(tmp_path, capsys):
    days = [d.date() for d in pd.date_range("2023-01-01", periods=30, freq="D")]
    values = [str(i) for i in range(30)]
    values[-1] = "inf"  # dropped as if missing before, against the docs' "an infinite value is an error"
    csv = tmp_path / "i.csv"
    csv.write_text("date,v\n" + "\n".join(f"{d},{v}" for d, v in zip(days, values)) + "\n")
    with pytest.raises(SystemExit):
        main(["forecast", "--dataset", str(csv), "--horizon", "1"])
    assert "1 infinite values (at 2023-01-30)" in capsys.readouterr().err
    values[-3:] = ["", "", ""]  # not yet reported: left out, and the output says so
    csv.write_text("date,v\n" + "\n".join(f"{d},{v}" for d, v in zip(days, values)) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "1", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 rows after the last value hold none" in out
    assert _dates_and_values(out, "observed")[0][0] == "2023-01-27"


@pytest.mark.parametrize(
    "dates, expected",
    [
        # Business days: the last three rows (Wed, Thu, Fri) read as daily, and the forecast fell on the weekend.
        (pd.bdate_range("2023-01-02", periods=40), ["2023-02-27", "2023-02-28"]),
        # One missing day among the last rows left the forecast numbered +1, +2 instead of dated.
        (pd.date_range("2023-01-01", periods=40, freq="D").delete(38), ["2023-02-10", "2023-02-11"]),
        # Business days with a holiday among the last ten rows.
        (pd.bdate_range("2023-01-02", periods=40).delete(35), ["2023-02-27", "2023-02-28"]),
        # A missing month: the usual gap (31 days) would drift off the calendar (2023-03-04). Runs of months vote
        # for month starts, so the month is a missing value and the forecast continues the calendar.
        (pd.date_range("2020-01-01", periods=36, freq="MS").delete(34), ["2023-01-01", "2023-02-01"]),
        # Too few months to vote (fewer than 16 rows): numbered, not dated off the calendar.
        (pd.date_range("2020-01-01", periods=12, freq="MS").delete(10), ["+1", "+2"]),
    ],
)
def test_forecast_dates_follow_the_calendar_of_the_latest_rows(tmp_path, capsys, dates, expected):
    csv = tmp_path / "b.csv"
    csv.write_text("date,v\n" + "\n".join(f"{d.date()},{100 + i}" for i, d in enumerate(dates)) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "0"]) == 0
    assert [row[0] for row in _dates_and_values(capsys.readouterr().out, "forecast")] == expected


def test_rows_left_out_of_a_dated_file_are_missing_values_not_adjacent_points(tmp_path, capsys, caplog):
    # 60 hours dropped from an hourly file were joined as if adjacent, shifting the daily cycle in the context;
    # only empty cells counted as missing.
    hours = pd.date_range("2023-01-01", periods=400, freq="h")
    values = 10 + np.sin(np.arange(400) * 2 * np.pi / 24)
    kept = np.r_[0:300, 360:400]
    csv = tmp_path / "gap.csv"
    csv.write_text("time,load\n" + "\n".join(f"{hours[i]},{values[i]}" for i in kept) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "0"]) == 0
    out = capsys.readouterr().out
    assert "skips 60 time point(s) of its frequency h (the first: 2023-01-13 12:00:00)" in caplog.text
    assert "400 points" in out and "(60 missing values in the context were interpolated)" in out
    assert re.search(r"forecast +2023-01-17 16:00:00 .*\n +forecast +2023-01-17 17:00:00", out), out


def test_a_horizon_beyond_the_context_window_is_warned_of(tmp_path, capsys, caplog):
    from tests.helpers import make_model

    make_model(max_position_embeddings=16).save_pretrained(tmp_path / "m")
    with caplog.at_level("WARNING"):
        assert main(["forecast", "--model", str(tmp_path / "m"), "--horizon", "17", "--show", "0"]) == 0
    assert "the horizon (17 points) is longer than the model's whole context window (16 points)" in caplog.text


def test_forecast_defaults_to_the_recorded_context_and_warns_past_it(tmp_path, capsys, caplog):
    from tests.helpers import make_model

    model = make_model()
    model.config.record_default_context_length(24)
    model.save_pretrained(tmp_path / "m")
    assert main(["forecast", "--model", str(tmp_path / "m"), "--horizon", "3", "--show", "0"]) == 0
    assert "context 24," in capsys.readouterr().out
    with caplog.at_level("WARNING"):
        args = ["forecast", "--model", str(tmp_path / "m"), "--horizon", "3", "--show", "0", "--context-length", "100"]
        assert main(args) == 0
    assert "context 100," in capsys.readouterr().out
    assert "--context-length=100 is longer than this model's default context of 24 points" in caplog.text
    limit = model.config.max_position_embeddings
    args[-1] = str(limit + 1)
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert f"--context-length {limit + 1} exceeds the model's limit of {limit} points; using {limit}" in caplog.text


def test_forecast_times_print_alike_and_a_date_column_with_holes_is_explained(tmp_path, capsys, caplog):
    hours = pd.date_range("2023-01-01 20:00", periods=30, freq="h")
    csv = tmp_path / "h.csv"
    csv.write_text("time,v\n" + "\n".join(f"{t},{i}" for i, t in enumerate(hours)) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "30"]) == 0
    times = [" ".join(row[:-1]) for row in _dates_and_values(capsys.readouterr().out, "observed")]
    assert "2023-01-02 00:00:00" in times  # printed as a bare date among the hours before
    lines = [f"{t.date()},{i}" for i, t in enumerate(pd.date_range("2023-01-01", periods=30, freq="D"))]
    lines[4] = f",{4}"
    csv.write_text("date,v\n" + "\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["forecast", "--dataset", str(csv), "--horizon", "1", "--show", "0"]) == 0
    assert "column 'date' reads as dates but 1 row(s) have none (the first at line 6)" in caplog.text


def test_a_model_trained_further_no_longer_describes_itself_as_its_base(tmp_path, capsys):
    # A fine-tuned default model kept the default's name, "pretrained" status and training recipe in its config.
    out = tmp_path / "ft"
    # "default" names the embedded model (its path inside the installed package is no one's to know).
    args = ["finetune", "--model", "default", *FAST, "--max-steps", "1", "--output-dir", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    meta = TimeMoEForPrediction.from_pretrained(out).config.extra["timemoe_forecaster"]
    assert meta["status"].startswith("trained further from timemoe-forecaster default") and "training" not in meta
    assert main(["forecast", "--model", str(out), "--horizon", "1", "--show", "0"]) == 0
    assert "[trained further from timemoe-forecaster default" in capsys.readouterr().out
    assert main(["forecast", "--model", "default", "--horizon", "1", "--show", "0"]) == 0  # as finetune takes it
    assert "assets/default" in capsys.readouterr().out
    # A base that does not describe itself (a `timemoe pretrain` run, an official checkpoint) is named by its path.
    plain, tuned = tmp_path / "plain", tmp_path / "plain-ft"
    TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny")).save_pretrained(plain)
    assert main(["finetune", "--model", str(plain), *FAST, "--max-steps", "1", "--output-dir", str(tuned)]) == 0
    meta = TimeMoEForPrediction.from_pretrained(tuned).config.extra["timemoe_forecaster"]
    assert meta == {"status": f"trained further from {plain}", "trained_from": str(plain), "default_context_length": 32}
    # Training with no output directory says so, instead of "model in None".
    assert main(["finetune", "--model", str(out), *FAST, "--max-steps", "1", "--output-dir", ""]) == 0
    assert "nothing saved (no --output-dir)" in capsys.readouterr().out


def test_forecast_of_a_csv_with_a_repeated_date_says_why_it_is_not_dated(tmp_path, capsys, caplog):
    csv = tmp_path / "d.csv"
    days = [d.date() for d in pd.date_range("2024-01-01", periods=20, freq="D")]
    days[5] = days[4]
    csv.write_text("day,load\n" + "\n".join(f"{d},{i}" for i, d in enumerate(days)) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "0"]) == 0
    assert "2024-01-05" in caplog.text and "more than once" in caplog.text
    # Newest first, the series was forecast reversed: the rows are put in time order (the copies in file order).
    header, *lines = csv.read_text().splitlines()
    csv.write_text("\n".join([header, *lines[::-1]]) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "20"]) == 0
    observed = _dates_and_values(capsys.readouterr().out, "observed")
    assert [row[-1] for row in observed] == [f"{i:.4f}" for i in [0, 1, 2, 3, 5, 4, *range(6, 20)]]
    assert [row[0] for row in observed] == [str(i) for i in range(20)]
    # An infinite value is named by its line in the file, not by its place in time order.
    lines[0] = lines[0].split(",")[0] + ",inf"  # day 1, the first point in time, on the file's last line
    csv.write_text("\n".join([header, *lines[::-1]]) + "\n")
    with pytest.raises(SystemExit):
        main(["forecast", "--dataset", str(csv), "--horizon", "2"])
    assert "infinite values (at lines 21)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "zone, start, freq",
    [("Europe/Berlin", "2023-10-28 00:00", "h"), ("America/New_York", "2023-11-04 12:00", "30min")],
)
def test_forecast_dates_local_times_that_repeat_the_hour_the_clocks_go_back(
    tmp_path, capsys, caplog, zone, start, freq
):
    # Local times without offsets show the hour twice when daylight saving time ends (02:00, 02:00 in Berlin): read
    # as a repeated date, the forecast was numbered, with advice to remove "duplicate" rows that were real data.
    wall = pd.date_range(start, periods=60, freq=freq, tz=zone).tz_localize(None)
    assert not wall.is_unique
    csv = tmp_path / "local.csv"
    csv.write_text("time,load\n" + "\n".join(f"{t},{i}" for i, t in enumerate(wall)) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "60"]) == 0
    out = capsys.readouterr().out
    observed = [" ".join(row[:2]) for row in _dates_and_values(out, "observed")]
    assert observed == [str(t) for t in wall]  # printed as the file wrote them, the repeated times included
    after = pd.date_range(wall[-1], periods=3, freq=freq)[1:]
    assert [" ".join(row[:2]) for row in _dates_and_values(out, "forecast")] == [str(t) for t in after]
    assert "more than once" not in caplog.text and "skips" not in caplog.text
    # Newest first, as some exports write them: the same dates, the rows put in time order.
    header, *lines = csv.read_text().splitlines()
    csv.write_text("\n".join([header, *lines[::-1]]) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "60"]) == 0
    out = capsys.readouterr().out
    assert [row[-1] for row in _dates_and_values(out, "observed")] == [f"{i:.4f}" for i in range(60)]
    assert [" ".join(row[:2]) for row in _dates_and_values(out, "forecast")] == [str(t) for t in after]
    # Shuffled, which copy came first cannot be told: numbered, and the warning says what would date it.
    shuffled = [lines[i] for i in np.random.default_rng(0).permutation(len(lines))]
    csv.write_text("\n".join([header, *shuffled]) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "0"]) == 0
    assert [row[0] for row in _dates_and_values(capsys.readouterr().out, "forecast")] == ["60", "61"]
    assert "appears more than once" in caplog.text and "keep the rows in the order they were recorded" in caplog.text


def test_forecast_prints_times_at_the_utc_offsets_the_file_wrote(tmp_path, capsys):
    # Offsets that change across daylight saving time (+01:00, then +02:00) are read as UTC, and the dates were
    # printed so: 17:00+00:00 for 19:00+02:00 in the file. A forecast takes the last row's offset.
    local = pd.date_range("2023-03-24", periods=72, freq="h", tz="Europe/Berlin")
    csv = tmp_path / "offsets.csv"
    csv.write_text("time,load\n" + "\n".join(f"{t.isoformat()},{i % 24}" for i, t in enumerate(local)) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "72"]) == 0
    out = capsys.readouterr().out
    observed = [" ".join(row[:2]) for row in _dates_and_values(out, "observed")]
    assert observed == [str(t) for t in local]  # 2023-03-26 01:00:00+01:00, then 03:00:00+02:00
    forecast = [" ".join(row[:2]) for row in _dates_and_values(out, "forecast")]
    assert forecast == ["2023-03-27 01:00:00+02:00", "2023-03-27 02:00:00+02:00"]
    assert "+00:00" not in out


@pytest.mark.parametrize("start, months", [("2022-01-01", 12), ("2022-03-01", 6)])
def test_forecast_dates_day_first_months_of_a_year_or_less_as_months(tmp_path, capsys, start, months):
    # 01.02.2022 ... 01.12.2022 also read month-first, as January 2 ... 12: both readings have a frequency, and the
    # more regular daily one won. Dates between dots are written day-first only.
    dates = pd.date_range(start, periods=months, freq="MS")
    csv = tmp_path / "months.csv"
    csv.write_text("date,sales\n" + "\n".join(f"{d:%d.%m.%Y},{50 + i}" for i, d in enumerate(dates)) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert [row[0] for row in _dates_and_values(out, "observed")] == [str(dates[-1].date())]
    after = pd.date_range(dates[-1], periods=3, freq="MS")[1:]
    assert [row[0] for row in _dates_and_values(out, "forecast")] == [str(d.date()) for d in after]


def test_forecast_warns_of_dates_that_read_as_days_and_as_months_alike(tmp_path, capsys, caplog):
    # 01/02/2022 ... 01/12/2022: January 2 to 12 (US) or February to December (UK); nothing in them tells.
    dates = pd.date_range("2022-01-01", periods=12, freq="MS")
    csv = tmp_path / "slashes.csv"
    csv.write_text("date,sales\n" + "\n".join(f"{d:%d/%m/%Y},{50 + i}" for i, d in enumerate(dates)) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["forecast", "--dataset", str(csv), "--horizon", "1", "--show", "0"]) == 0
    both = "dates such as '01/02/2022' read both month-first (2022-01-02, frequency D) and day-first (2022-02-01"
    assert f"column 'date': {both}, frequency MS); read month-first" in caplog.text
    assert "write them year-first (yyyy-mm-dd)" in caplog.text


def test_forecast_does_not_take_codes_for_dates(tmp_path, capsys):
    # pandas' last-resort date reading took T1, T2, ... for days of the year 1: the forecast was dated 0001-01-31.
    csv = tmp_path / "codes.csv"
    csv.write_text("code,load\n" + "".join(f"T{i},{i % 7}\n" for i in range(1, 31)))
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "1"]) == 0
    out = capsys.readouterr().out
    forecast = [line.split() for line in out.splitlines() if line.strip().startswith("forecast")]
    assert "0001-" not in out and [row[1] for row in forecast] == ["30", "31"]


def test_forecast_of_a_long_table_needs_a_single_id(tmp_path, capsys):
    # The rows of every id were forecast together as one series that jumps between them, and it exited 0.
    rows_of = {u: [f"{u},2024-01-{d:02d},{(d + k) % 7}" for d in range(1, 21)] for k, u in enumerate("ab")}
    both = tmp_path / "long.csv"
    both.write_text("unique_id,ds,y\n" + "\n".join(rows_of["a"] + rows_of["b"]) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", "--dataset", str(both)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "long table of 2 series (column 'unique_id': a, b)" in err
    assert "filter the file" in err and "TimeMoEForecaster" in err
    one = tmp_path / "one.csv"
    one.write_text("unique_id,ds,y\n" + "\n".join(rows_of["b"]) + "\n")
    assert main(["forecast", "--dataset", str(one), "--horizon", "1", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "/ y, 20 points" in out and "2024-01-20" in out and "2024-01-21" in out


@pytest.mark.parametrize("name", ["s.jsonl", "a.npy"])
def test_forecast_names_the_formats_it_reads(tmp_path, capsys, name):
    # Any name was read as CSV text: a .npy failed with a UnicodeDecodeError, a .jsonl with a confusing message.
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, np.arange(50.0))
    else:
        path.write_text("[1, 2, 3]\n")
    with pytest.raises(SystemExit):
        main(["forecast", "--dataset", str(path)])
    suffix = name.partition(".")[2]
    assert f"reads CSV, TSV or parquet tables, not .{suffix} files" in capsys.readouterr().err


def _forecast_lines(out: str) -> list[float]:
    return [float(line.split()[-1]) for line in out.splitlines() if line.strip().startswith("forecast")]


def test_forecast_of_a_series_with_gaps_interpolates_them(tmp_path, capsys):
    # A gap inside the context went to the model as an attention mask with holes, which it refuses: the CLI
    # failed with an error about attention_mask, a flag the user never passed.
    values = 10 + np.sin(np.arange(100) / 5)
    filled = tmp_path / "filled.csv"
    pd.DataFrame({"v": values}).to_csv(filled, index=False)
    holes = values.copy()
    holes[[40, 60, 61]] = np.nan
    gappy = tmp_path / "gappy.csv"
    pd.DataFrame({"v": holes}).to_csv(gappy, index=False)
    assert main(["forecast", "--dataset", str(gappy), "--horizon", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 missing values in the context were interpolated" in out
    # The holes are on a smooth curve: linear interpolation restores it closely, and so the forecast.
    assert main(["forecast", "--dataset", str(filled), "--horizon", "3"]) == 0
    np.testing.assert_allclose(_forecast_lines(out), _forecast_lines(capsys.readouterr().out), atol=0.05)
    # A gap at the start of a short context is bridged from the points before it (it used to be left padding;
    # interpolating the window alone left one observed point and failed).
    holes[98] = np.nan
    pd.DataFrame({"v": holes}).to_csv(gappy, index=False)
    assert main(["forecast", "--dataset", str(gappy), "--horizon", "3", "--context-length", "2"]) == 0
    assert "1 missing values in the context were interpolated" in capsys.readouterr().out
    holes[:3] = np.nan  # leading: dropped, not counted as interpolated
    pd.DataFrame({"v": holes}).to_csv(gappy, index=False)
    assert main(["forecast", "--dataset", str(gappy), "--horizon", "3"]) == 0
    assert "(4 missing values in the context were interpolated)" in capsys.readouterr().out
    holes[70] = np.inf
    pd.DataFrame({"v": holes}).to_csv(gappy, index=False)
    with pytest.raises(SystemExit):
        main(["forecast", "--dataset", str(gappy), "--horizon", "3"])
    assert "1 infinite values (at lines 72)" in capsys.readouterr().err  # the file line, not the row (70)


def test_forecast_reads_tsv_and_csv_text_of_any_name(tmp_path, capsys):
    # Every file was read as a CSV: a .tsv had "no numeric column", a parquet file a UnicodeDecodeError.
    frame = pd.DataFrame({"day": pd.date_range("2024-01-01", periods=30).astype(str), "v": np.arange(30.0) % 7})
    frame.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    frame.to_csv(tmp_path / "s.csv", index=False)
    assert main(["forecast", "--dataset", str(tmp_path / "s.tsv"), "--horizon", "2"]) == 0
    tsv = capsys.readouterr().out
    assert main(["forecast", "--dataset", str(tmp_path / "s.csv"), "--horizon", "2"]) == 0
    assert tsv.split("\n")[2:] == capsys.readouterr().out.split("\n")[2:]  # the same but for the file name
    assert "2024-01-31" in tsv
    frame.to_csv(tmp_path / "s.txt", index=False)  # any other name is read as CSV text, as before
    assert main(["forecast", "--dataset", str(tmp_path / "s.txt"), "--horizon", "2"]) == 0
    assert "2024-01-31" in capsys.readouterr().out


def test_forecast_with_default_and_placeholder_models(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text("t,a,b\n" + "".join(f"{i},{i % 7},{(i % 5) * 2.0}\n" for i in range(60)))
    assert main(["forecast", "--dataset", str(csv), "--column", "a", "--horizon", "3"]) == 0
    text = capsys.readouterr().out
    assert "UNTRAINED PLACEHOLDER" not in text and rows(text, "forecast") == 3  # the default is pretrained
    from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction

    config = TimeMoEConfig.from_preset("tiny", extra={"timemoe_forecaster": {"status": "UNTRAINED PLACEHOLDER"}})
    TimeMoEForPrediction(config).save_pretrained(tmp_path / "ph")
    assert main(["forecast", "--model", str(tmp_path / "ph"), "--dataset", str(csv), "--column", "a"]) == 0
    assert "UNTRAINED PLACEHOLDER" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", "--dataset", str(csv), "--column", "zzz"])
    assert exit_info.value.code == 2
    assert "--column 'zzz'" in capsys.readouterr().err


def test_flags_map_one_to_one_onto_train_config():
    args = build_parser().parse_args(
        [
            "pretrain",
            "--data",
            "a.csv",
            "synthetic",
            "--data-weights",
            "1,3",
            "--betas",
            "0.8",
            "0.9",
            "--fsdp",
            "true",
            "--no-pack",
            "--activation-checkpointing",
            "--optim-dtype",
            "bf16",
            "--fused",
            "false",
            "--data-prefetch",
            "process",
            "--no-quality-filter",
        ]
    )
    cfg = train_config_from_args(args)
    assert cfg.quality_filter is False
    assert cfg.data == ["a.csv", "synthetic"] and cfg.data_weights == [1.0, 3.0]
    assert cfg.betas == (0.8, 0.9) and cfg.fsdp is True and cfg.pack is False and cfg.fused is False
    assert cfg.activation_checkpointing and cfg.optim_dtype == "bf16" and cfg.data_prefetch == "process"
    cfg = train_config_from_args(build_parser().parse_args(["finetune", "--model", "some/dir", "--data", "a.csv"]))
    assert cfg.init_from == "some/dir" and cfg.lr == 1e-4 and cfg.compile is False
    assert cfg.config is None  # train_config.json used to record the unused default "tiny"
    compiles = {
        "--compile": "blocks",
        "--compile=model": "model",
        "--compile=off": False,
    }
    for flag, expected in compiles.items():
        cfg = train_config_from_args(build_parser().parse_args(["pretrain", flag, "--attn-backend", "flex"]))
        assert cfg.compile == expected and cfg.attn_backend == "flex", flag


@pytest.mark.parametrize(
    "argv, match",
    [
        (["pretrain", "--max-steps", "0"], "max_steps must be a positive integer"),
        (["pretrain", "--config", "nope", "--max-steps", "1"], "neither a preset"),
        (["pretrain", "--data", "/no/such/file.csv", "--max-steps", "1"], "file.csv"),
        (["finetune", "--model", "/no/such/dir", "--data", "synthetic", "--max-steps", "1"], "does not exist"),
        (["finetune", "--model", "./runs/typo", "--data", "synthetic", "--max-steps", "1"], "does not exist locally"),
        # Without --data, finetune trained on synthetic series (the pretraining default) and said nothing.
        (["finetune", "--model", "./runs/typo", "--max-steps", "1"], "timemoe finetune needs your data: pass --data"),
        (["pretrain", "--device", "tpu", "--max-steps", "1"], "device must be cpu, cuda, cuda:N or mps"),
        (["pretrain", "--data-weights", "inf", "--max-steps", "1"], "finite positive"),
        (["pretrain", "--data", "synthetic#foo=1", "--max-steps", "1"], "unknown option 'foo' in 'synthetic#foo=1'"),
    ],
)
def test_bad_arguments_give_one_clear_line(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output-dir", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_damaged_data_files_are_one_line_naming_them(tmp_path, capsys):
    # A corrupt .csv.gz escaped as a gzip.BadGzipFile traceback from pretrain and forecast alike.
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"garbage")
    pretrain = ["pretrain", *FAST, "--data", str(bad), "--max-steps", "1", "--output-dir", str(tmp_path / "run")]
    for argv in (pretrain, ["forecast", "--dataset", str(bad)]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, argv[0]
        assert f"{bad}: cannot be read as CSV (BadGzipFile: " in err and "Traceback" not in err


def test_forecast_show_zero_prints_no_observations_and_negative_is_refused(capsys):
    # --show 0 used to print the whole history (values[-0:]), and a negative count all but its first points.
    assert main(["forecast", "--horizon", "2", "--show", "0"]) == 0
    text = capsys.readouterr().out
    assert rows(text, "observed") == 0 and rows(text, "forecast") == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["forecast", "--horizon", "2", "--show", "-3"])
    assert exit_info.value.code == 2
    assert "--show: expected a whole number >= 0, got -3" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["pretrain", "forecast"])
def test_ctrl_c_before_training_starts_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys, command):
    # Reading real files takes seconds before the run takes Ctrl-C over: a KeyboardInterrupt traceback from inside
    # pandas or torch came out.
    import timemoe_forecaster.cli as cli
    import timemoe_forecaster.train.trainer as trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "open_data", interrupted)
    monkeypatch.setattr(cli, "load_series", interrupted)
    args = [*FAST, "--output-dir", str(tmp_path / "run")] if command == "pretrain" else ["--horizon", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and "Traceback" not in err
    assert (
        err.strip()
        == f"timemoe {command}: interrupted (Ctrl-C): stopped at once, unsaved (earlier checkpoints are kept)"
    )


def test_a_missing_optional_package_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    import pandas as pd

    def no_engine(*args, **kwargs):  # what pandas raises without pyarrow and fastparquet
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow', 'fastparquet'.\nmore lines")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    (tmp_path / "d.parquet").write_bytes(b"PAR1xxPAR1")
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", *FAST, "--data", str(tmp_path / "d.parquet"), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "Unable to find a usable engine" in err and "more lines" not in err
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", *FAST, "--data", str(tmp_path / "d.parquet"), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert 'needs pyarrow, which is not installed: pip install "timemoe-forecaster[data]"' in err

    import timemoe_forecaster.train.trainer as trainer

    def missing(cfg):  # any other optional module missing somewhere in training
        raise ModuleNotFoundError("No module named 'flash_attn'", name="flash_attn")

    monkeypatch.setattr(trainer, "train", missing)
    with pytest.raises(SystemExit):
        main(["pretrain", *FAST, "--output-dir", str(tmp_path / "run2")])
    assert "pip install flash-attn --no-build-isolation" in capsys.readouterr().err


def test_resuming_a_finished_run_says_so_instead_of_a_nan_loss(tmp_path, capsys):
    args = ["pretrain", "--config", "tiny", *FAST, "--output-dir", str(tmp_path), "--max-steps", "2"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already complete at step 2" in out and "nan" not in out


def test_module_entry_point_runs():
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "timemoe_forecaster.cli", "pretrain", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0 and "--max-steps" in done.stdout and "--grad-accum" in done.stdout


def test_airline_without_sktime_reads_the_bundled_copy(monkeypatch):
    from timemoe_forecaster.cli import load_series

    with_sktime = load_series("airline")
    monkeypatch.setitem(sys.modules, "sktime.datasets", None)  # import fails as if sktime were missing
    bundled = load_series("airline")
    assert len(bundled) == 144 and str(bundled.index[0]) == "1949-01"
    assert (bundled.to_numpy() == with_sktime.to_numpy()).all()


def documented_train_commands() -> list[list[str]]:
    """The full ``pretrain``/``finetune`` commands in docs/pretraining.md's code blocks, as argument lists."""
    import shlex

    text = (ROOT / "docs" / "pretraining.md").read_text()
    blocks = text.split("```")[1::2]  # the insides of the fenced blocks
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for command in ("pretrain", "finetune"):
                if command in words and "..." not in words:  # "timemoe pretrain ... --resume" is a sketch
                    commands.append(words[words.index(command) :])
    return commands


def test_every_documented_train_command_makes_a_valid_config():
    commands = documented_train_commands()
    # the tiny, base, base-step-graph, ultra, two torchrun and the finetune examples at least
    assert len(commands) >= 6 and any("model-step-graph" in c and "ultra" in c for c in commands)
    parser = build_parser()
    for words in commands:
        config = train_config_from_args(parser.parse_args(words))  # TrainConfig validates flag combinations
        assert config.config or config.init_from, words


def test_forecast_names_the_other_numeric_columns_and_refuses_spreadsheets(tmp_path, capsys, caplog):
    # With several numeric columns the last was forecast, named only in the header line; an Excel file gave a
    # UnicodeDecodeError from the CSV reader.
    csv = tmp_path / "multi.csv"
    rows = [f"2020-01-{d:02d},{d % 5},{10 + d % 3},7" for d in range(1, 21)]
    csv.write_text("date,sales,price,store\n" + "\n".join(rows) + "\n")
    with caplog.at_level("INFO", logger="timemoe_forecaster.cli"):
        assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "0"]) == 0
    assert "forecasting its last numeric column 'price' (also numeric: 'sales'); choose with --column" in caplog.text
    book = tmp_path / "book.xlsx"
    book.write_bytes(b"PK\x03\x04\x84 not a csv")
    with pytest.raises(SystemExit):
        main(["forecast", "--dataset", str(book)])
    assert "not .xlsx files; convert it to a CSV" in capsys.readouterr().err


def test_forecast_of_series_stacked_one_after_another_keeps_the_file_order(tmp_path, capsys, caplog):
    # Two series with the same dates, one after the other (no id column): put in time order, their rows were
    # interleaved, and the forecast was of a series jumping between them at every step.
    days = [f"{d.date()}" for d in pd.date_range("2024-01-01", periods=30, freq="D")]
    csv = tmp_path / "stacked.csv"
    rows = [f"{d},{100 + i}" for i, d in enumerate(days)] + [f"{d},{-i}" for i, d in enumerate(days)]
    csv.write_text("date,value\n" + "\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "4"]) == 0
    observed = _dates_and_values(capsys.readouterr().out, "observed")
    assert [row[-1] for row in observed] == [f"{-i:.4f}" for i in range(26, 30)]
    assert "several series one after another" in caplog.text

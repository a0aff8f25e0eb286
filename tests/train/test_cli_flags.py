"""The ``timemoe`` command line's flags: what --help promises is what the parser takes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from timemoe_forecaster.cli import TIME_LIMIT_EXIT, build_parser, main, train_config_from_args


def test_fused_takes_the_auto_its_help_offers_and_compile_defaults_to_off():
    # The help said "(auto = on GPU)" while the parser refused "auto"; --compile showed "(default: False)".
    parser = build_parser()
    for text, expected in (("auto", None), ("true", True), ("off", False)):
        args = parser.parse_args(["pretrain", "--config", "tiny", "--fused", text])
        assert train_config_from_args(args).fused is expected
    args = parser.parse_args(["pretrain", "--config", "tiny"])
    assert args.compile == "off" and train_config_from_args(args).compile is False
    help_text = parser._subparsers._group_actions[0].choices["pretrain"].format_help()
    assert "(default: None)" not in help_text and help_text.count("(default:") > 20


def test_a_time_limited_run_without_output_dir_does_not_advise_resuming(tmp_path, monkeypatch, capsys):
    # --output-dir '' wrote checkpoints and train_config.json into the working directory, then advised --resume.
    monkeypatch.chdir(tmp_path)
    args = ["pretrain", "--config", "tiny", "--data", "synthetic", "--max-steps", "1000", "--batch-size", "2"]
    args += ["--max-length", "32", "--output-dir", "", "--time-limit", "1e-9", "--no-progress"]
    # Unfinished, so not 0; not 75 either, which asks to be resumed: a resume loop ran forever.
    assert main(args) == 1 != TIME_LIMIT_EXIT
    out = capsys.readouterr().out
    assert "nothing was saved (no --output-dir), so the run cannot be resumed" in out and "--resume" not in out
    assert list(tmp_path.iterdir()) == []


def test_forecast_uses_all_history_by_default_as_the_estimators_do(tmp_path, capsys):
    # The command cut the context to 512 points while TimeMoEForecaster() reads up to the model's limit, so the two
    # gave different forecasts of the same file.
    from timemoe_forecaster import TimeMoEForecaster

    y = pd.Series(10 + np.sin(np.arange(700) / 9) + 0.001 * np.arange(700), name="load")
    y.to_frame().to_csv(tmp_path / "s.csv", index=False)
    assert main(["forecast", "--dataset", str(tmp_path / "s.csv"), "--horizon", "3", "--show", "0"]) == 0
    out = capsys.readouterr().out
    assert "700 points, context 700, horizon 3" in out
    printed = [float(line.split()[-1]) for line in out.splitlines() if line.split()[:1] == ["forecast"]]
    expected = TimeMoEForecaster().fit(y).predict(fh=[1, 2, 3]).to_numpy()
    np.testing.assert_allclose(printed, expected, atol=1e-4)


def test_config_beside_init_from_is_refused_not_ignored(tmp_path, capsys):
    # --init-from trains its checkpoint's architecture: --config small was ignored (a tiny model trained) and
    # train_config.json recorded "small"; without --config it recorded the default "tiny".
    from timemoe_forecaster.train.config import TrainConfig

    parser = build_parser()
    args = parser.parse_args(["pretrain", "--init-from", str(tmp_path)])
    assert train_config_from_args(args).config is None
    assert train_config_from_args(parser.parse_args(["pretrain"])).config == "tiny"
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "--init-from", str(tmp_path), "--config", "small", "--output-dir", ""])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--config and --init-from both choose the model" in err
    assert TrainConfig(init_from="somewhere").config is None
    with pytest.raises(ValueError, match="both choose the model"):
        TrainConfig(init_from="somewhere", config="small")


def test_quiet_leaves_warnings_and_the_summary_only():
    # --no-progress silenced the bar but every log line stayed, with no way to turn the INFO ones off.
    import subprocess
    import sys

    args = ["pretrain", "--config", "tiny", "--max-steps", "2", "--batch-size", "2", "--max-length", "32"]
    args += ["--output-dir", "", "--no-progress", "--warmup-steps", "5"]  # warmup > steps: a warning is logged
    runs = {}
    for flags in ([], ["-q"]):
        runs[bool(flags)] = subprocess.run(
            [sys.executable, "-m", "timemoe_forecaster.cli", *flags, *args], capture_output=True, text=True, timeout=300
        )
    loud, quiet = runs[False], runs[True]
    assert loud.returncode == quiet.returncode == 0
    assert " INFO " in loud.stderr and " INFO " not in quiet.stderr
    assert " WARNING " in quiet.stderr and "warmup_steps 5 exceeds max_steps 2" in quiet.stderr
    assert "trained 2 steps" in quiet.stdout


def test_pretrain_init_from_default_is_the_embedded_model_as_finetune_model_default_is():
    # finetune --model default trained the embedded model; pretrain --init-from default said it did not exist.
    from timemoe_forecaster.checkpoint import default_checkpoint

    parser = build_parser()
    cfg = train_config_from_args(parser.parse_args(["pretrain", "--init-from", "default"]))
    assert cfg.init_from == str(default_checkpoint()) and cfg.config is None
    tuned = train_config_from_args(parser.parse_args(["finetune", "--model", "default", "--data", "synthetic"]))
    assert tuned.init_from == cfg.init_from


def test_python_m_runs_the_command_line():
    # Without the `timemoe` script on PATH (a notebook's kernel env, say) there was no way in: no __main__.py.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "timemoe_forecaster", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("timemoe ")

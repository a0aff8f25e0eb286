"""Runs the trainer refuses instead of doing something else: --resume into a saved model with no checkpoint (a fresh
run replaced it), evaluation flags without --eval-every (never used)."""

from __future__ import annotations

from unittest import mock

import pytest

from timemoe_forecaster.cli import main
from timemoe_forecaster.config import TimeMoEConfig
from timemoe_forecaster.model.modeling import TimeMoEForPrediction
from timemoe_forecaster.train.trainer import TrainConfig, Trainer, train

FAST = ["--data", "synthetic#max_length=512", "--batch-size", "2", "--max-length", "48", "--no-progress"]


def test_resume_into_a_saved_model_without_checkpoints_is_refused_not_restarted(tmp_path, capsys):
    # A finished run whose checkpoints were deleted to save space, then "extended" with --resume: there is nothing
    # to resume, and the run started from scratch, replacing the saved model and truncating metrics.jsonl.
    out = tmp_path / "saved"
    TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny")).save_pretrained(out)
    (out / "metrics.jsonl").write_text('{"step": 1000, "loss": 0.3}\n')
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", "tiny", *FAST, "--max-steps", "1", "--output-dir", str(out), "--resume"])
    err = capsys.readouterr().err
    assert "saved model" in err and "--init-from" in err
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "metrics.jsonl").read_text() == '{"step": 1000, "loss": 0.3}\n'
    assert not (out / "checkpoints").exists()


def test_resume_into_an_empty_directory_still_starts_fresh(tmp_path):
    out = tmp_path / "new"
    assert main(["-q", "pretrain", *FAST, "--max-steps", "1", "--output-dir", str(out), "--resume"]) == 0
    assert (out / "model.safetensors").exists()


@pytest.mark.parametrize("changes", [dict(eval_data=["synthetic:7"]), dict(eval_batches=8)])
def test_evaluation_settings_without_eval_every_are_refused_not_ignored(changes):
    # --eval-data (even a path that does not exist) or --eval-batches without --eval-every was accepted and never
    # used: the run reported no held-out loss at all, without a word.
    # (TrainConfig itself keeps accepting eval_batches alone: a Trainer built by hand may call evaluate().)
    cfg = TrainConfig(data=["synthetic"], output_dir=None, max_steps=1, **changes)
    with mock.patch.object(Trainer, "train_step", side_effect=AssertionError("trained")):
        with pytest.raises(ValueError, match="eval-every"):
            train(cfg)
    with pytest.raises(SystemExit):
        flag = ["--eval-data", "/no/such/file.csv"] if "eval_data" in changes else ["--eval-batches", "8"]
        main(["pretrain", *FAST, "--max-steps", "1", "--output-dir", "", *flag])

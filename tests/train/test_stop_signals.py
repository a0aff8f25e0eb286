"""Ctrl-C (SIGINT) and SIGTERM save a checkpoint after the step in progress and stop; --resume goes on from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timemoe_forecaster.cli import main
from timemoe_forecaster.train import signals
from timemoe_forecaster.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--data", "synthetic#max_length=512", "--batch-size", "2", "--max-length", "32", "--no-progress"]
# Far more steps than a test waits for, and no periodic save: only the stop can write a checkpoint.
ENDLESS = ["--max-steps", "1000000", "--save-every", "1000000", "--log-every", "1"]


def env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def wait_for_steps(process: subprocess.Popen, out: Path, steps: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.communicate()}")
        if (out / "metrics.jsonl").exists() and len(read_metrics(out)) >= steps:
            return
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"no {steps} steps within {timeout} s")


def checkpoints(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))


@pytest.mark.parametrize(
    "sig, prefetch, whole_group",
    [
        (signal.SIGINT, "off", False),
        # The job's process group, the data worker process included, as Ctrl-C at a terminal and Slurm's scancel
        # signal it: the worker must not die of it before the trainer's last batches and save.
        (signal.SIGTERM, "process", True),
        (signal.SIGINT, "process", True),
    ],
)
def test_a_signal_saves_a_checkpoint_that_resume_continues(tmp_path, capsys, sig, prefetch, whole_group):
    out = tmp_path / "run"
    args = ["pretrain", "--config", "tiny", *FAST, "--output-dir", str(out), "--data-prefetch", prefetch]
    cmd = [sys.executable, "-m", "timemoe_forecaster.cli", *args, *ENDLESS]
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True
    )
    try:
        wait_for_steps(process, out, 3)
        if whole_group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + sig, stdout + stderr[-3000:]
    name = signal.Signals(sig).name
    assert f"stopped by {name}: trained" in stdout and "--resume" in stdout, stdout
    assert f"{name} received" in stderr and "Traceback" not in stderr, stderr[-3000:]
    saved = checkpoints(out)
    assert len(saved) == 1 and saved[0] >= 3  # the step the signal came in, not a periodic save
    assert read_metrics(out)[-1]["step"] == saved[0]

    # The stopped run goes on from its checkpoint, and only the final model marks it finished.
    assert not (out / "model.safetensors").exists()
    resumed = ["pretrain", "--config", "tiny", *FAST, "--output-dir", str(out), "--resume"]
    assert main([*resumed, "--max-steps", str(saved[0] + 2), "--save-every", "1000000"]) == 0
    assert f"trained {saved[0] + 2} steps" in capsys.readouterr().out
    assert (out / "model.safetensors").exists()


def test_a_second_signal_soon_after_the_first_is_the_same_request(monkeypatch):
    # A terminal's Ctrl-C reaches torchrun and its workers at once, and torchrun forwards its own copy: the
    # worker sees two SIGINTs within milliseconds, which must not abort the save the first one asked for.
    clock = [100.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: clock[0])
    with signals.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT"
        clock[0] += signals.REPEAT_AFTER_S / 2
        os.kill(os.getpid(), signal.SIGINT)  # ignored: no KeyboardInterrupt
        clock[0] += signals.REPEAT_AFTER_S
        with pytest.raises(KeyboardInterrupt):  # a later one stops at once, as Ctrl-C did before
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here at the latest
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the usual meaning is back


def test_handlers_are_restored_after_the_run():
    before = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    with signals.StopRequest():
        assert all(signal.getsignal(sig) != before[sig] for sig in signals.STOP_SIGNALS)
    assert {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS} == before


def test_a_signal_ignored_when_the_run_started_stays_ignored():
    # `timemoe pretrain ... &` in a script starts with SIGINT ignored: the Ctrl-C meant for the script's
    # foreground job must not stop it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals.StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            assert stop.received is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


class Signalled:
    """A StopRequest whose signal came before the first step."""

    received = "SIGINT"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.mark.parametrize("max_steps, code", [(1, 0), (3, 130)])
def test_a_stop_at_the_last_step_is_a_finished_run_and_skips_its_evaluation(
    tmp_path, capsys, monkeypatch, max_steps, code
):
    # A signal during the last step still finished the run (final model written) but exited 130; and a stop
    # at an evaluation step evaluated before saving, spending the time the signal's sender waits before it kills.
    import timemoe_forecaster.train.trainer as trainer

    monkeypatch.setattr(trainer, "StopRequest", Signalled)
    out = tmp_path / "run"
    args = ["pretrain", "--config", "tiny", *FAST, "--output-dir", str(out), "--max-steps", str(max_steps)]
    assert main([*args, "--eval-every", "1", "--log-every", "1"]) == code
    assert (out / "model.safetensors").exists() is (code == 0)
    assert checkpoints(out) == [1]
    if code == 0:  # finished: the line is written, without the evaluation
        assert [r["step"] for r in read_metrics(out)] == [1] and "eval_loss" not in read_metrics(out)[0]
    else:  # the checkpoint keeps the step and the pending evaluation; the resumed run writes the line with it
        assert read_metrics(out) == []
        monkeypatch.undo()
        assert main([*args, "--eval-every", "1", "--log-every", "1", "--resume"]) == 0
        assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
        assert all("eval_loss" in r for r in read_metrics(out))


def test_a_stop_during_the_last_steps_evaluation_still_writes_its_line(tmp_path, monkeypatch):
    # The run finishes (final model, status 0), so no resume runs a deferred evaluation: the line is written now,
    # without eval_loss. Deferred, it was never written.
    import timemoe_forecaster.train.trainer as trainer

    stop = Signalled()
    stop.received = None
    monkeypatch.setattr(trainer, "StopRequest", lambda: stop)
    original = trainer.Trainer._eval_loss

    def counted(self, batch):
        if self.step == 4:
            stop.received = "SIGTERM"
        return original(self, batch)

    monkeypatch.setattr(trainer.Trainer, "_eval_loss", counted)
    out = tmp_path / "run"
    args = ["pretrain", "--config", "tiny", *FAST, "--output-dir", str(out), "--max-steps", "4", "--log-every", "2"]
    assert main([*args, "--eval-every", "2", "--eval-batches", "6"]) == 0
    assert (out / "model.safetensors").exists()
    assert [r["step"] for r in read_metrics(out)] == [2, 4] and "eval_loss" not in read_metrics(out)[1]


def test_a_stop_during_an_evaluation_abandons_it_and_saves_at_once(tmp_path, monkeypatch, caplog):
    # An evaluation under way when the signal came ran to its end (26 s for 1,500 batches of tiny on a CPU),
    # past the grace period after which torchrun or Slurm kill: the checkpoint the stop was for was lost.
    import timemoe_forecaster.train.trainer as trainer

    stop = Signalled()
    stop.received = None
    monkeypatch.setattr(trainer, "StopRequest", lambda: stop)
    evaluated = []
    original = trainer.Trainer._eval_loss

    def counted(self, batch):
        evaluated.append(1)
        if len(evaluated) == 3:
            stop.received = "SIGTERM"  # as the handler sets it, in the middle of the evaluation
        return original(self, batch)

    monkeypatch.setattr(trainer.Trainer, "_eval_loss", counted)
    out = tmp_path / "run"
    args = ["pretrain", "--config", "tiny", *FAST, "--output-dir", str(out), "--max-steps", "6", "--log-every", "1"]
    assert main([*args, "--eval-every", "2", "--eval-batches", "1000"]) == 143
    assert len(evaluated) == 3  # abandoned before the fourth batch
    assert checkpoints(out) == [2] and [r["step"] for r in read_metrics(out)] == [1]  # step 2's line waits for its
    assert "evaluation abandoned after 3 of 1000 batches" in caplog.text and "SIGTERM at step 2" in caplog.text
    monkeypatch.undo()  # evaluation, which the resumed run runs first
    assert main([*args, "--eval-every", "2", "--eval-batches", "2", "--resume", "--max-steps", "2"]) == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2] and "eval_loss" in read_metrics(out)[1]

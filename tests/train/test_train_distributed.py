"""Two gloo processes under torchrun equal one process with the same global batch (DDP and FSDP2).

Rank r of 2 draws its micro-batch from data shard r; one process with --grad-accum 2 draws micro-batch
a from shard a: the same rows, so the weights must agree (they do to the last bit on CPU, the test
allows fp32 tolerance). Both runs are also killed and resumed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from timemoe_forecaster.train import state as ckpt
from timemoe_forecaster.train.trainer import TrainConfig, train

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = dict(
    data=["synthetic#max_length=512"],
    max_steps=3,
    batch_size=2,
    max_length=48,
    lr=1e-2,
    seed=5,
    log_every=1,
    progress=False,
)


def flags(**settings) -> list[str]:
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def torchrun(output_dir: Path, *extra: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "timemoe_forecaster.cli",
        "pretrain",
        *flags(**SETTINGS),
        "--output-dir",
        str(output_dir),
        *extra,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_model(directory)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    try:
        train(TrainConfig(**SETTINGS, grad_accum=2, output_dir=str(out)))
    finally:
        torch.set_num_threads(threads)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def kill_after_step_2_and_resume(output_dir: Path, *extra: str) -> None:
    """Drop the step-3 checkpoint and the final model ("killed" after step 2), resume on two processes,
    and check the resumed step 3 equals the uninterrupted one bit for bit."""
    straight = weights(output_dir / "checkpoints" / "step_00000003")
    shutil.rmtree(output_dir / "checkpoints" / "step_00000003")
    (output_dir / "checkpoints" / "latest").unlink()
    (output_dir / "model.safetensors").unlink()
    torchrun(output_dir, *extra, "--resume")
    resumed = weights(output_dir / "checkpoints" / "step_00000003")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (output_dir / "model.safetensors").exists()


# auto: no prefetch on the CPU; process: a data worker per rank. Fused AdamW: the update is launched before the
# step's host sync (as on GPUs), on each rank.
@pytest.mark.parametrize("extra", [("--data-prefetch", "auto"), ("--data-prefetch", "process", "--fused", "true")])
def test_ddp_two_processes_equal_one_process_with_accumulation(single, tmp_path, extra):
    torchrun(tmp_path, "--fsdp", "false", "--save-every", "1", *extra)
    assert_same(weights(single), weights(tmp_path))
    # Seeded alike for the same initial weights, the ranks' torch generators stayed alike: every rank drew the
    # same dropout masks. Each has its own stream after the init.
    rng = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_00000003", weights=False)["trainer"]["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    kill_after_step_2_and_resume(tmp_path, "--fsdp", "false", "--save-every", "1", *extra)


def test_fsdp2_equals_one_process_and_resumes_exactly(single, tmp_path):
    torchrun(tmp_path, "--fsdp", "true", "--save-every", "1")
    assert_same(weights(single), weights(tmp_path))
    kill_after_step_2_and_resume(tmp_path, "--fsdp", "true", "--save-every", "1")


def test_ddp_with_bf16_optimizer_states_keeps_every_rank_the_same(tmp_path):
    # The rounding noise was seeded by each rank's own number: under DDP (replicated weights, the same update)
    # the ranks' copies drifted apart at every step, so the checkpoint (rank 0's) no longer followed the run and
    # a resume was not exact. Now they round alike, and two processes equal one with accumulation.
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**SETTINGS, grad_accum=2, optim_dtype="bf16", output_dir=str(single)))
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    torchrun(two, "--fsdp", "false", "--optim-dtype", "bf16", "--save-every", "1")
    assert_same(weights(single), weights(two))
    kill_after_step_2_and_resume(two, "--fsdp", "false", "--optim-dtype", "bf16", "--save-every", "1")


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (torchrun's workers), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def start_endless_run(output_dir: Path, settings: dict, *extra: str) -> subprocess.Popen:
    """A 2-process torchrun of ``pretrain`` in a session of its own (so that its group can be signalled), saving
    only when stopped; the caller waits for its steps and signals it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd += ["timemoe_forecaster.cli", "pretrain", *flags(**settings), "--output-dir", str(output_dir)]
    cmd += [*extra, "--save-every", "1000000"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads torchrun's workers from /proc")
@pytest.mark.parametrize("whole_group", [True, False])
def test_sigterm_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path, whole_group):
    # Slurm's scancel signals the whole job (torchrun and its workers); a single `kill` reaches one worker. Either
    # way every rank stops at the same step, after saving it, and --resume goes on from there.
    from timemoe_forecaster.train.metrics import read_metrics

    process = start_endless_run(tmp_path, {**SETTINGS, "max_steps": 1_000_000}, "--fsdp", "false")
    try:
        deadline = time.monotonic() + 180
        while not ((tmp_path / "metrics.jsonl").exists() and len(read_metrics(tmp_path)) >= 3):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        if whole_group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            os.kill(max(children(process.pid)), signal.SIGTERM)  # one worker, either rank
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    # torchrun itself reports the signal it got with a traceback of its own; no worker may fail with one.
    assert not re.search(r'File ".*timemoe_forecaster', stderr), stderr[-4000:]
    saved = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert len(saved) == 1, stdout + stderr[-4000:]
    step = int(saved[0].name.split("_")[1])
    assert step >= 3 and read_metrics(tmp_path)[-1]["step"] == step
    torchrun(tmp_path, "--fsdp", "false", "--resume", "--max-steps", str(step + 1))
    assert read_metrics(tmp_path)[-1]["step"] == step + 1 and (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("fsdp", ["false", "true"])
def test_eval_loss_is_the_same_on_one_and_two_processes(tmp_path, fsdp):
    # Each rank evaluated eval_batches batches of its own data shard, so the figure moved with the process count.
    # Now the batches are split over the ranks; 3 batches on 2 ranks also checks that the rank with one batch
    # joins the other's second forward (FSDP gathers weights inside it: a missing one hung the run).
    from timemoe_forecaster.train.metrics import read_metrics

    evals = dict(eval_every=3, eval_batches=3)
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**SETTINGS, **evals, grad_accum=2, output_dir=str(single)))
    finally:
        torch.set_num_threads(threads)
    two = tmp_path / "two"
    torchrun(two, "--fsdp", fsdp, *flags(**evals))
    one_loss, two_loss = ([r["eval_loss"] for r in read_metrics(d) if "eval_loss" in r] for d in (single, two))
    assert len(one_loss) == 1 and len(two_loss) == 1
    assert two_loss[0] == pytest.approx(one_loss[0], rel=1e-5)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads torchrun's workers from /proc")
def test_a_sigterm_to_one_rank_during_an_evaluation_stops_every_rank_with_a_checkpoint(tmp_path):
    # The evaluation under way ran to its end before the stop was acted on. Now the ranks agree before each round
    # of evaluation batches, so one signalled rank stops all of them at the same batch (FSDP gathers weights in
    # every forward: a rank that left alone would hang the others).
    from timemoe_forecaster.train.metrics import read_metrics

    settings = {**SETTINGS, "max_steps": 1_000_000, "eval_every": 2, "eval_batches": 1_000_000}
    process = start_endless_run(tmp_path, settings, "--fsdp", "true")
    try:
        deadline = time.monotonic() + 180
        while not ((tmp_path / "metrics.jsonl").exists() and len(read_metrics(tmp_path)) >= 1):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        time.sleep(3)  # step 2 takes a fraction of this; its evaluation of a million batches would take hours
        os.kill(max(children(process.pid)), signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "evaluation abandoned after" in stderr, stderr[-4000:]
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*")] == ["step_00000002"], stderr[-4000:]
    # step 2's line waits for its evaluation, which the resumed run runs first
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    from timemoe_forecaster.train import state as ckpt

    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_00000002")["trainer"]["eval_due"] is True

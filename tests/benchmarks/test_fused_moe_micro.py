"""benchmarks/fused_moe_micro.py runs end to end on the CPU under the Triton interpreter (--smoke): both tile
orders pass its check against the library's kernels, and it writes its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_checks_both_tile_orders_and_writes_the_table(tmp_path):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "fused_moe_micro.py"), "--smoke", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "fused_moe_micro.md").read_text()
    assert "rows fastest" in table and "cols fastest (library)" in table and "grouped GEMMs" in table
    assert (tmp_path / "fused_moe_micro.json").exists()

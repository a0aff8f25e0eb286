"""Pretrain the embedded default checkpoint on one GPU, inside one device call (~10 minutes).

Steps: (1) draw a pool of synthetic series in parallel into the binary layout on local disk (the
trainer then only crops windows, so one host process keeps the GPU fed); (2) a short smoke run with
the chosen kernels, falling back to the plain ones if they fail; (3) the main run through our CLI,
its step count sized from the smoke run's throughput so the cosine schedule ends inside the budget;
(4) the final weights (fp32, shards <= 15 MiB), metrics and a summary under --out.

    python benchmarks/default_model/pretrain_default.py --corpus .carry/corpus --out $OUT --budget 420
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction
from timemoe_forecaster.data import SyntheticSource, write_binary_dataset

log = logging.getLogger("pretrain_default")

# The architecture of the default: official Time-MoE layout, sized for <= 16 MiB in bf16 and
# <= 50 ms per forecast (context 512, horizon 96) on 2 CPU cores (see docs/model_card.md).
DEFAULT_ARCH = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_experts=8,
    num_experts_per_tok=2,
    horizon_lengths=[1, 8, 32, 64],
    max_position_embeddings=4096,
)


def _draw(args: tuple[int, int, int]) -> list[np.ndarray]:
    seed, start, stop = args
    source = SyntheticSource(seed=seed)
    return [source[i] for i in range(start, stop)]


def synthetic_pool(folder: Path, num_series: int, seed: int, workers: int) -> dict:
    t0 = time.time()
    chunk = 2000
    jobs = [(seed, s, min(s + chunk, num_series)) for s in range(0, num_series, chunk)]
    with mp.get_context("fork").Pool(workers) as pool:
        series = [x for part in pool.imap(_draw, jobs) for x in part]
    write_binary_dataset(series, folder, num_files=8)
    points = int(sum(len(x) for x in series))
    info = {"series": num_series, "points": points, "seconds": round(time.time() - t0, 1), "seed": seed}
    log.info("synthetic pool: %s", info)
    return info


def cli_pretrain(args: list[str], log_path: Path, timeout: float) -> int:
    cmd = [sys.executable, "-m", "timemoe_forecaster.cli", "pretrain", *args]
    log.info("running: %s", " ".join(cmd))
    with open(log_path, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        try:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return -9


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=".carry/corpus", help="real-series corpus (binary layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, default=420.0, help="seconds of main training")
    p.add_argument("--synthetic-series", type=int, default=200_000)
    p.add_argument("--real-weight", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 2) - 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke-steps", type=int, default=40)
    p.add_argument("--init-from", default=None, help="continue from these weights (fresh optimizer)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/default_run")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    train_log = out / "train.log"

    pool_info = synthetic_pool(work / "synthetic", args.synthetic_series, args.seed, args.workers)
    config_path = work / "config.json"
    TimeMoEConfig.from_preset("base", **DEFAULT_ARCH).to_json_file(config_path)
    data = [str(work / "synthetic"), args.corpus]
    weights = [f"{1 - args.real_weight:g}", f"{args.real_weight:g}"]
    common = ["--config", str(config_path), "--data", *data, "--data-weights", *weights]
    common += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--seed", str(args.seed)]
    common += ["--no-progress", "--log-every", "10"]
    if args.init_from:
        common += ["--init-from", args.init_from]

    kernels = None
    for attn, moe in (("varlen", "auto"), ("sdpa", "auto"), ("sdpa", "loop")):
        smoke = work / f"smoke-{attn}-{moe}"
        rc = cli_pretrain(
            common
            + ["--attn-backend", attn, "--moe-dispatch", moe, "--max-steps", str(args.smoke_steps)]
            + ["--output-dir", str(smoke)],
            train_log,
            timeout=150,
        )
        metrics = read_metrics(smoke / "metrics.jsonl")
        if rc == 0:
            kernels = (attn, moe, metrics)
            break
        log.warning("smoke run with attn=%s moe=%s failed (rc=%s)", attn, moe, rc)
    if kernels is None:
        raise SystemExit("every smoke run failed; see train.log")
    attn, moe, metrics = kernels
    rates = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
    tokens_per_s = float(np.median(rates[len(rates) // 2 :])) if rates else 1e5
    tokens_per_step = args.batch_size * args.max_length
    max_steps = max(100, int(0.95 * args.budget * tokens_per_s / tokens_per_step))
    log.info("kernels attn=%s moe=%s, %.0f tokens/s -> %d steps", attn, moe, tokens_per_s, max_steps)

    run = work / "run"
    t0 = time.time()
    rc = cli_pretrain(
        common
        + ["--attn-backend", attn, "--moe-dispatch", moe, "--max-steps", str(max_steps), "--lr", str(args.lr)]
        + ["--warmup-steps", str(min(500, max_steps // 20)), "--min-lr-ratio", "0.05"]
        + ["--time-limit", str(args.budget * 1.15), "--save-every", "0", "--output-dir", str(run)],
        train_log,
        timeout=args.budget * 1.3 + 60,
    )
    wall = time.time() - t0
    metrics = read_metrics(run / "metrics.jsonl")
    shutil.copy(run / "metrics.jsonl", out / "metrics.jsonl") if (run / "metrics.jsonl").exists() else None
    final = run
    if not (run / "config.json").exists():  # stopped by the time limit: its last checkpoint is the model
        final = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    model = TimeMoEForPrediction.from_pretrained(final, dtype="float32")
    model.save_pretrained(out / "fp32", max_shard_size="15MiB")
    summary = {
        "returncode": rc,
        "wall_seconds": round(wall, 1),
        "kernels": {"attn_backend": attn, "moe_dispatch": moe},
        "smoke_tokens_per_s": tokens_per_s,
        "planned_steps": max_steps,
        "steps_done": metrics[-1]["step"] if metrics else 0,
        # Rows are packed nearly full, so steps x rows x length is the (slight over-) count of points seen.
        "token_capacity": (metrics[-1]["step"] if metrics else 0) * tokens_per_step,
        "final_loss": metrics[-1].get("loss") if metrics else None,
        "synthetic_pool": pool_info,
        "args": vars(args),
        "parameters": model.num_parameters(),
        "activated_parameters": model.num_parameters(activated=True),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info("summary: %s", summary)


if __name__ == "__main__":
    main()

"""The real trainer on a GPU: what ``timemoe pretrain`` reaches on packed synthetic rows, per setting.

``benchmarks/speed.py`` times one training step on a fixed random batch without documents; this
script runs the ``Trainer`` itself (data stream, packing, autocast with fp32 master weights, loss
normalisation, gradient clipping, fused AdamW, the one host sync per step) for each attention
backend and ``--compile`` mode, and, in the same process, the reference's step on the same model
size (as speed.py measures it: bf16 parameters, plain AdamW, one random batch) for the ratio.

Each setting: a fresh model, ``--warmup`` steps (compilation, CUDA-graph recording), then
``--steps`` timed steps; the median step time gives positions/s (batch x length, what the reference
rows count) and the real (non-padding) tokens/s. Writes ``trainer_gpu.json`` and ``trainer_gpu.md``
to ``--out``.

    python benchmarks/trainer_gpu.py --size base --out benchmarks/results/raw
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timemoe_forecaster.model.modeling import model_flops_per_token  # noqa: E402
from timemoe_forecaster.train.parallel import DistContext  # noqa: E402
from timemoe_forecaster.train.trainer import TrainConfig, Trainer, build_model, open_data, rank_streams  # noqa: E402

log = logging.getLogger("trainer_gpu")

# (attention backend, compile mode), most informative first: later ones are skipped when time runs out.
SETTINGS = [
    ("flex", "model-cudagraphs"),
    ("sdpa", "blocks"),
    ("flex", "model"),
    ("flex", "blocks"),
    ("varlen", "blocks"),
    ("sdpa", False),
    ("varlen", "model"),
]
BATCH = {"base": 4, "large": 2, "ultra": 1, "small": 8}


def build_trainer(
    size: str,
    backend: str,
    compile,
    length: int,
    batch: int,
    device: str = "cuda",
    prefetch: str = "off",
    **options,
) -> Trainer:
    """A Trainer as ``timemoe pretrain`` builds one, on packed synthetic rows of one process.

    ``options``: further ``TrainConfig`` fields (``activation_checkpointing``, ``optim_dtype``, ``grad_accum``)."""
    cfg = TrainConfig(
        config=size, data=["synthetic"], output_dir=None, max_steps=10**6, batch_size=batch, max_length=length,
        progress=False, device=device, attn_backend=backend, compile=compile, log_every=10**6,
        data_prefetch=prefetch, **options,
    )  # fmt: skip
    ctx = DistContext(device=torch.device(device))
    streams = rank_streams(open_data(cfg.data, cfg.seed), cfg, rank=0, world_size=1)
    return Trainer(cfg, ctx, build_model(cfg, ctx.device), streams)


def time_trainer(
    size: str,
    backend: str,
    compile,
    length: int,
    batch: int,
    warmup: int,
    steps: int,
    device: str = "cuda",
    profile_to: Path | None = None,
    prefetch: str = "off",
    launch_ahead: bool = True,
    clip_pass: bool = False,
    **options,
) -> dict:
    trainer = build_trainer(size, backend, compile, length, batch, device, prefetch, **options)
    if clip_pass:  # how the trainer clipped before session 7 (the fused update now applies the factor)
        trainer._clip_gradients = lambda: torch.nn.utils.clip_grad_norm_(
            trainer.params, trainer.cfg.grad_clip if trainer.cfg.grad_clip > 0 else float("inf")
        )
    host = {"fetch": [], "prepare": []}  # host time of the data pipeline, per call
    trainer._fetch = _timed(trainer._fetch, host["fetch"])
    trainer._prepare = _timed(trainer._prepare, host["prepare"])
    # As Trainer.run does: under the step graph each call enqueues the next step before reading its own results.
    launch = trainer.step_graph and launch_ahead
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step(launch_next=launch)
    warmup_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens, losses = [], [], []
    host["fetch"].clear()
    host["prepare"].clear()
    for _ in range(steps):
        t = time.perf_counter()
        record = trainer.train_step(launch_next=launch)  # ends with the step's host sync (loss, norm, tokens)
        times.append(time.perf_counter() - t)
        tokens.append(record["tokens"])
        losses.append(record["loss"])
    step_s = statistics.median(times)
    fetch_ms = statistics.median(host["fetch"]) * 1e3 if host["fetch"] else None
    prepare_ms = statistics.median(host["prepare"]) * 1e3 if host["prepare"] else None
    busy_ms = profile_steps(trainer, profile_to, launch=launch) if profile_to is not None else None
    if trainer._launched is not None:
        trainer.train_step()  # the step enqueued ahead
    trainer.close()  # stops the data thread
    positions = batch * length * trainer.cfg.grad_accum
    flops = positions * model_flops_per_token(trainer.model.config, length, training=True)
    return {
        "impl": "ours (Trainer)", "size": size, "attn_backend": backend, "compile": compile or "off",
        "data_prefetch": trainer.data_prefetch,
        "activation_checkpointing": trainer.cfg.activation_checkpointing, "optim_dtype": trainer.cfg.optim_dtype,
        "grad_accum": trainer.cfg.grad_accum,
        "seq_len": length, "batch": batch, "step_ms_median": step_s * 1e3, "step_ms_min": min(times) * 1e3,
        "positions_per_s": positions / step_s, "real_tokens_per_s": statistics.mean(tokens) / step_s,
        "tflops": flops / step_s / 1e12,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0,
        # CUDA graphs keep activations in a private pool that the allocated count may miss; reserved has it.
        "reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else 0.0,
        "warmup_s": warmup_s, "losses": losses, "steps": steps, "status": "ok",
        "gpu_busy_ms_per_step": busy_ms, "host_fetch_ms": fetch_ms, "host_prepare_ms": prepare_ms,
    }  # fmt: skip


def _timed(fn, into: list):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        into.append(time.perf_counter() - t)
        return out

    return wrapper


def profile_steps(trainer: Trainer, path: Path, steps: int = 3, launch: bool = False) -> float:
    """Kernel table of a few more steps; returns the GPU's busy time per step (sum of kernel times)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            trainer.train_step(launch_next=launch)
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=400, max_name_column_width=70)
    path.write_text(table)
    busy_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    return busy_us / steps / 1e3


def time_reference(size: str, length: int, batch: int, reps: int = 5) -> dict:
    """The reference's training step exactly as speed.py's rows (bf16 parameters, plain AdamW)."""
    from benchmarks.speed import LR, build_pair, random_batch, ref_loss, train_step_fn
    from benchmarks.timing import time_cuda
    from timemoe_forecaster.config import TimeMoEConfig

    config = TimeMoEConfig.from_preset(size)
    with tempfile.TemporaryDirectory() as tmp:
        ref = build_pair(config, Path(tmp)).to("cuda", torch.bfloat16).train()
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=0.1)
    data = random_batch(batch, length, "cuda", torch.bfloat16)
    timing = time_cuda(train_step_fn(ref_loss, ref, opt, data), warmup=2, reps=reps)
    step_s = timing["ms_median"] / 1e3
    del ref, opt, data
    return {
        "impl": "reference", "size": size, "attn_backend": "eager", "compile": "off", "seq_len": length,
        "batch": batch, "step_ms_median": step_s * 1e3, "positions_per_s": batch * length / step_s,
        "real_tokens_per_s": batch * length / step_s, "peak_gib": timing["peak_gib"], "status": "ok",
    }  # fmt: skip


def parse_setting(item: str, prefetch: str = "off") -> tuple[str, str | bool, str]:
    """``backend:compile[:thread|:process]`` -> (backend, compile mode or False for "off", data prefetch)."""
    parts = item.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("thread", "process", "off")):
        raise ValueError(f"setting {item!r} is not backend:compile[:thread|:process]")
    return parts[0], False if parts[1] == "off" else parts[1], parts[2] if len(parts) == 3 else prefetch


def _prefetch(row: dict) -> str:
    return row.get("data_prefetch") or ("thread" if row.get("data_thread") else "off")


def _options_line(rows: list[dict]) -> list[str]:
    ours = next((r for r in rows if r.get("grad_accum") is not None), None)
    if ours is None:
        return []
    return [
        "",
        f"Options: activation checkpointing {'on' if ours['activation_checkpointing'] else 'off'}, "
        f"optimizer states {ours['optim_dtype']}, {ours['grad_accum']} micro-batch(es) per step.",
    ]


def _one_decimal(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown(rows: list[dict], device: str, peak_tflops: float | None = None) -> str:
    ref = next((r for r in rows if r["impl"] == "reference" and r["status"] == "ok"), None)
    peak = f"{peak_tflops:.0f} TFLOP/s, measured in this run" if peak_tflops else "not measured"
    lines = [
        f"# The trainer on {device}",
        "",
        "Median step over the timed steps after warm-up; positions = batch x length x micro-batches per step "
        "(what the reference rows count); real tokens exclude padding. Ours: the trainer's defaults on a GPU "
        "(autocast bf16 with fp32 master weights and fused AdamW) unless the options below say otherwise; "
        "reference: bf16 parameters, plain AdamW, one random batch. "
        f"MFU: model FLOPs per second over the bf16 matmul peak ({peak}). Peak GiB is the most allocated "
        "after warm-up, which misses what a CUDA graph keeps in its private pool; reserved GiB includes it.",
        *_options_line(rows),
        "",
        "| impl | attention | compile | prefetch | step ms | positions/s | real tokens/s | vs reference | MFU "
        "| peak GiB | reserved GiB | warm-up s | GPU busy ms/step | data fetch ms | prepare ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            head = f"| {r['impl']} | {r['attn_backend']} | {r['compile']} | {_prefetch(r)} | {r['status']} |"
            lines.append(head + " |" * 10)
            continue
        ratio = f"{r['positions_per_s'] / ref['positions_per_s']:.1f}×" if ref and r is not ref else "–"
        mfu = f"{r['tflops'] / peak_tflops:.1%}" if peak_tflops and r.get("tflops") else "–"
        lines.append(
            f"| {r['impl']} | {r['attn_backend']} | {r['compile']} | {_prefetch(r)} | "
            f"{r['step_ms_median']:.1f} | "
            f"{r['positions_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | {ratio} | {mfu} | {r['peak_gib']:.1f} | "
            f"{_one_decimal(r.get('reserved_gib'))} | {r.get('warmup_s', 0):.0f} | "
            + " | ".join(_one_decimal(r.get(k)) for k in ("gpu_busy_ms_per_step", "host_fetch_ms", "host_prepare_ms"))
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=None, help="rows per step (default: the speed.py case)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--settings", default=None, help="comma list of backend:compile[:thread|:process] (default: all)"
    )
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--budget-s", type=float, default=480)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/raw"))
    parser.add_argument(
        "--prefetch", default="off", choices=["off", "thread", "process"], help="data prefetch of every setting"
    )
    parser.add_argument("--profile", action="store_true", help="kernel tables of each setting (after timing)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, eager settings: check the script")
    parser.add_argument(
        "--clip-pass", action="store_true", help="baseline: clip with clip_grad_norm_'s own pass over the gradients"
    )
    parser.add_argument(
        "--no-launch-ahead", action="store_true", help="baseline: step graph without enqueueing the next step early"
    )
    # The trainer's memory options (every setting), e.g. ultra as docs/pretraining.md recommends it on 80 GB.
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--optim-dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.size, args.length, args.warmup, args.steps, args.no_reference = "tiny", 64, 1, 2, True
        args.settings = args.settings or "sdpa:off,flex:off"
    elif not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU (--smoke runs on the CPU)")
    deadline = time.time() + args.budget_s
    batch = args.batch or BATCH.get(args.size, 4)
    settings = [(backend, mode, args.prefetch) for backend, mode in SETTINGS]
    if args.settings:
        settings = [parse_setting(item, args.prefetch) for item in args.settings.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    peak_tflops = None
    if device == "cuda":  # the MFU denominator, measured on this GPU in this run
        from benchmarks.timing import matmul_peak_tflops

        peak_tflops = matmul_peak_tflops()
    if not args.no_reference:
        try:
            rows.append(time_reference(args.size, args.length, batch))
        except Exception as exc:  # noqa: BLE001 - reported in the table (e.g. sktime not installed)
            rows.append({"impl": "reference", "attn_backend": "eager", "compile": "off", "status": f"failed: {exc}"})
        if device == "cuda":
            torch.cuda.empty_cache()
    for backend, compile, prefetch in settings:
        if time.time() > deadline - 60:
            rows.append({"impl": "ours (Trainer)", "attn_backend": backend, "compile": compile or "off",
                         "data_prefetch": prefetch, "status": "skipped (time budget)"})  # fmt: skip
            continue
        try:
            suffix = "" if prefetch == "off" else f"_{prefetch}"
            name = f"profile_trainer_{args.size}_{backend}_{compile or 'off'}{suffix}.txt"
            profile_to = args.out / name if args.profile else None
            rows.append(
                time_trainer(
                    args.size, backend, compile, args.length, batch, args.warmup, args.steps, device, profile_to,
                    prefetch=prefetch, launch_ahead=not args.no_launch_ahead, clip_pass=args.clip_pass,
                    activation_checkpointing=args.activation_checkpointing, optim_dtype=args.optim_dtype,
                    grad_accum=args.grad_accum,
                )
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one failing setting must not hide the others
            log.exception("setting %s/%s failed", backend, compile)
            rows.append({"impl": "ours (Trainer)", "attn_backend": backend, "compile": compile or "off",
                         "data_prefetch": prefetch,
                         "status": f"failed: {type(exc).__name__}: {str(exc)[:200]}"})  # fmt: skip
        log.info("%s", rows[-1])
        torch._dynamo.reset()
        if device == "cuda":
            torch.cuda.empty_cache()
        (args.out / f"trainer_gpu_{args.size}.json").write_text(json.dumps(rows, indent=1))
    device = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    result = {"device": device, "matmul_peak_tflops": peak_tflops, "rows": rows}
    (args.out / f"trainer_gpu_{args.size}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"trainer_gpu_{args.size}.md").write_text(markdown(rows, device, peak_tflops))
    print(markdown(rows, device, peak_tflops))


if __name__ == "__main__":
    main()

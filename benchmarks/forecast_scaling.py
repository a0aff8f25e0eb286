"""How forecast time and memory grow with the context length, per SDPA kernel (GPU).

The leaderboard's long-context cells (ETTh1 h 720 at context 3072) were far slower than the short
ones; this separates the prefill from the decode steps and forces each of PyTorch's attention kernels
in turn, so the cost of every piece can be read off one table.

    python benchmarks/forecast_scaling.py --out DIR [--model PATH|preset:base] [--batch 256]

Writes DIR/forecast_scaling.jsonl (one record per case) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import free_memory, time_cuda  # noqa: E402
from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction  # noqa: E402
from timemoe_forecaster.model.modeling import build_attention_mask  # noqa: E402

KERNELS = ("default", "flash", "efficient", "cudnn")


def kernel_context(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "default":
        return contextlib.nullcontext()
    chosen = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    # Decode steps carry a mask, which flash cannot take: let them fall back to the efficient kernel.
    backends = [chosen] if name != "flash" else [chosen, SDPBackend.EFFICIENT_ATTENTION]
    return sdpa_kernel(backends)


def load(model: str | None) -> TimeMoEForPrediction:
    if model and model.startswith("preset:"):
        torch.manual_seed(0)
        net = TimeMoEForPrediction(TimeMoEConfig.from_preset(model.split(":", 1)[1]))
        return net.to(device="cuda", dtype=torch.bfloat16).eval()
    return TimeMoEForPrediction.from_pretrained(model, dtype=torch.bfloat16, device="cuda").eval()


def profile(model, batch: int, ctx: int, horizon: int, out: Path) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = torch.randn(batch, ctx, device="cuda", dtype=torch.bfloat16)
    model.forecast(x, horizon)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        model.forecast(x, horizon)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
    (out / f"profile_forecast_ctx{ctx}_h{horizon}.txt").write_text(table)
    print(table)


def trace_memory(model, batch: int, ctx: int, horizon: int, kernel: str) -> None:
    """Peak memory inside every attention and FFN call of one forecast: where does it go?"""
    events = []

    def before(name):
        def hook(module, args):
            torch.cuda.synchronize()
            events.append((name, "in", torch.cuda.memory_allocated() / 2**30))
            torch.cuda.reset_peak_memory_stats()

        return hook

    def after(name):
        def hook(module, args, out):
            torch.cuda.synchronize()
            events.append((name, "peak", torch.cuda.max_memory_allocated() / 2**30))

        return hook

    handles = []
    for i, layer in enumerate(model.model.layers[:2]):
        for part in ("self_attn", "ffn_layer"):
            mod = getattr(layer, part)
            handles.append(mod.register_forward_pre_hook(before(f"L{i}.{part}")))
            handles.append(mod.register_forward_hook(after(f"L{i}.{part}")))
    x = torch.randn(batch, ctx, device="cuda", dtype=torch.bfloat16)
    free_memory()
    torch.cuda.reset_peak_memory_stats()
    with kernel_context(kernel):
        model.forecast(x, horizon)
    torch.cuda.synchronize()
    total = torch.cuda.max_memory_allocated() / 2**30
    for h in handles:
        h.remove()
    print(f"trace kernel={kernel} batch={batch} ctx={ctx} h={horizon}: total peak since last reset {total:.2f} GiB")
    for name, what, gib in events[:24]:
        print(f"  {name:16s} {what:5s} {gib:7.2f} GiB")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default=None, help="checkpoint path, preset:NAME, or the embedded default")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--contexts", default="512,1024,2048,3072,4000")
    p.add_argument("--horizons", default="96,720")
    p.add_argument("--kernels", default=",".join(KERNELS))
    p.add_argument("--budget-s", type=float, default=240)
    p.add_argument("--profile-ctx", type=int, default=0, help="also write a kernel table of one forecast")
    p.add_argument("--profile-horizon", type=int, default=720)
    p.add_argument("--trace", default=None, help="BATCH,CTX,HORIZON: per-layer memory trace, then exit")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("this benchmark needs a CUDA GPU")
    if args.trace:
        model = load(args.model)
        b, c, h = (int(v) for v in args.trace.split(","))
        for kernel in args.kernels.split(","):
            trace_memory(model, b, c, h, kernel)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.budget_s
    model = load(args.model)
    records = []
    jsonl = args.out / "forecast_scaling.jsonl"
    for ctx in [int(c) for c in args.contexts.split(",")]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, ctx, generator=g).to("cuda", torch.bfloat16)
        positions = torch.arange(ctx, device="cuda").expand(args.batch, ctx)
        for kernel in args.kernels.split(","):
            cases = [("prefill", None)] + [("forecast", int(h)) for h in args.horizons.split(",")]
            for what, horizon in cases:
                if time.time() > deadline:
                    break
                if what == "prefill":
                    fn = lambda x=x, p=positions, s=ctx: model.model(  # noqa: E731
                        x[..., None], p, build_attention_mask(None, None, s)
                    )
                else:
                    if ctx + horizon > model.config.max_position_embeddings:
                        continue
                    fn = lambda x=x, h=horizon: model.forecast(x, h)  # noqa: E731
                rec = {"model": args.model or "default", "batch": args.batch, "ctx": ctx, "kernel": kernel,
                       "what": what, "horizon": horizon}  # fmt: skip
                try:
                    with kernel_context(kernel), torch.no_grad():
                        stats = time_cuda(fn, 1, 3)
                    rec.update(status="ok", ms=round(stats["ms_median"], 2), peak_gib=round(stats["peak_gib"], 2))
                    rec["tokens_per_s"] = round(args.batch * ctx / (stats["ms_median"] * 1e-3))
                except Exception as err:  # noqa: BLE001 - a refused kernel is a result too
                    rec.update(status=f"{type(err).__name__}: {str(err)[:160]}")
                free_memory()
                records.append(rec)
                with jsonl.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
    if args.profile_ctx:
        profile(model, args.batch, args.profile_ctx, args.profile_horizon, args.out)
    print("\n| ctx | kernel | what | horizon | ms | peak GiB | status |\n|---|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['ctx']} | {r['kernel']} | {r['what']} | {r['horizon'] or ''} | {r.get('ms', '')} | "
              f"{r.get('peak_gib', '')} | {r['status'][:60]} |")  # fmt: skip


if __name__ == "__main__":
    main()

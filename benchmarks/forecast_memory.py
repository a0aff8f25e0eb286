"""What is alive at the peak of a forecast: the h 720 memory question of sessions 13 and 14.

The base h 96 forecast runs about 3% faster with 2^17-token prefill chunks than with the default 2^16, but at
2^17 the h 720 case (256 series, context 512) peaks at 0.53 of the reference's memory, over the target of 0.5.
Its KV cache alone is about 5.4 GiB; what the chunk adds on top was guessed twice and guessed wrong. This script
records the CUDA caching allocator's history during one forecast (compiled blocks, as the default fast path,
without a CUDA graph so that every allocation shows) and replays it to find the moment of the largest
allocated total, then lists what was alive then, biggest first, each with the frames that allocated it
(inductor's generated lines are printed as source text).

    python3 benchmarks/forecast_memory.py [--tokens 65536,131072] [--horizon 720] [--batch 256] [--out DIR]
"""

from __future__ import annotations

import argparse
import linecache
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import GIB  # noqa: E402
from timemoe_forecaster.compile import compile_blocks  # noqa: E402
from timemoe_forecaster.config import TimeMoEConfig  # noqa: E402
from timemoe_forecaster.model.modeling import TimeMoEForPrediction  # noqa: E402


def peak_live_blocks(trace: list[dict]) -> tuple[int, list[dict]]:
    """Replay the allocator's events: the largest total of live allocations and the allocations alive then."""
    live: dict[int, dict] = {}
    total = best = 0
    best_live: list[dict] = []
    for event in trace:
        action = event["action"]
        if action == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > best:
                best, best_live = total, list(live.values())
        elif action in ("free_requested", "free") and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return best, best_live


def describe(frames: list[dict], depth: int = 4) -> str:
    """The innermost frames worth reading: generated kernels' lines and this library's."""
    useful = []
    for frame in frames:
        name = frame.get("filename", "")
        if "torchinductor" in name or "timemoe_forecaster" in name:
            text = linecache.getline(name, frame.get("line", 0)).strip()
            useful.append(f"{Path(name).name}:{frame.get('line')} {frame.get('name')}: {text[:110]}")
        if len(useful) == depth:
            break
    return " | ".join(useful) or "(no library or generated frame)"


def measure(model, context: torch.Tensor, horizon: int, tokens: int, top: int) -> list[str]:
    model.forecast(context, horizon, max_batch_tokens=tokens)  # compile first, outside the recording
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)
    model.forecast(context, horizon, max_batch_tokens=tokens)
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak = torch.cuda.max_memory_allocated()
    best, alive = peak_live_blocks(snapshot["device_traces"][torch.cuda.current_device()])
    lines = [
        f"## max_batch_tokens = {tokens}: peak allocated {peak / GIB:.2f} GiB "
        f"({before / GIB:.2f} before the call, {best / GIB:.2f} allocated during it at its peak)",
        "",
        "| GiB | allocated by |",
        "|---|---|",
    ]
    alive.sort(key=lambda e: -e["size"])
    for event in alive[:top]:
        lines.append(f"| {event['size'] / GIB:.3f} | {describe(event.get('frames', []))} |")
    rest = sum(e["size"] for e in alive[top:])
    lines += [f"| {rest / GIB:.3f} | {len(alive) - top} smaller allocations |", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=720)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tokens", default="65536,131072", help="comma-separated max_batch_tokens values")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="folder for forecast_memory.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (it reads the CUDA caching allocator's history)")
    torch.manual_seed(0)
    model = TimeMoEForPrediction(TimeMoEConfig.from_preset(args.size)).to("cuda", torch.bfloat16).eval()
    compile_blocks(model)
    context = torch.randn(args.batch, args.context, device="cuda")
    lines = [
        f"# Forecast memory at the peak: {args.size}, bf16, compiled blocks, ctx {args.context}, "
        f"h {args.horizon}, {args.batch} series",
        "",
    ]
    for tokens in (int(t) for t in args.tokens.split(",")):
        lines += measure(model, context, args.horizon, tokens, args.top)
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "forecast_memory.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

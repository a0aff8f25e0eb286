"""Turn the benchmark's JSON-lines records into ``speed.json`` and the tables of ``speed.md``.

``speed.json`` is a list of records. Timings have kind "train" or "infer" and the fields impl
("reference" | "ours"), variant, size, dtype, seq_len, ctx, horizon, batch, tokens_per_s or
series_per_s, peak_gib, mfu, device, status ("ok", "OOM", …); the fastest of our variants per case
has ``best: true``. Records of kind "env" (versions, GPU, measured matmul peak, command), "check"
(equivalence with the reference) and "params" follow them. ``speed_cpu.json`` holds the CPU section.
"""

from __future__ import annotations

import json
from pathlib import Path

CASE_KEYS = ("kind", "size", "dtype", "seq_len", "ctx", "horizon", "batch")
TARGETS = {  # (kind, size) -> minimum speed-up over the reference in bf16 (issue 6)
    ("train", "base"): 10.0,
    ("train", "large"): 8.0,
    ("infer", "base"): 5.0,
    ("infer", "large"): 5.0,
}


def case_key(r: dict) -> tuple:
    return tuple(r.get(k) for k in CASE_KEYS)


def rate(r: dict | None) -> float | None:
    if r is None or r.get("status") != "ok":
        return None
    return r.get("tokens_per_s") or r.get("series_per_s")


def build(jsonl: Path, out: Path, command: str, note: str | None = None) -> list[dict]:
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    timings = [r for r in records if r.get("kind") in ("train", "infer")]
    best: dict[tuple, dict] = {}
    for r in timings:
        if r["impl"] == "ours" and rate(r) is not None:
            key = case_key(r)
            if key not in best or rate(r) > rate(best[key]):
                best[key] = r
    for r in timings:
        r["best"] = r["impl"] == "ours" and best.get(case_key(r)) is r
    others = [r for r in records if r.get("kind") not in ("train", "infer")]
    for r in others:
        if r.get("kind") == "env":
            r.setdefault("command", command)
            if note:
                r["note"] = note
    (out / "speed.json").write_text(json.dumps(timings + others, indent=1) + "\n")
    write(out)
    return records


def _fmt(x, digits=0) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:,.{digits}f}"


def _case_name(r: dict) -> str:
    if r["kind"] == "train":
        return f"train {r['size']} {r['dtype']}, seq {r['seq_len']}, batch {r['batch']}"
    return f"forecast {r['size']} {r['dtype']}, ctx {r['ctx']}, h {r['horizon']}, {r['batch']} series"


def _status_or_rate(r: dict | None, digits=0) -> str:
    if r is None:
        return "–"
    return _fmt(rate(r), digits) if rate(r) is not None else r.get("status", "?")


# The library's default forecasting path as measured, most specific first: compiled blocks replayed
# as a CUDA graph, compiled blocks, eager; all with the default max_batch_tokens.
DEFAULT_INFER_VARIANTS = ("compiled-blocks + CUDA graph", "compiled-blocks", "eager")


def _default_variant(rows: list[dict]) -> dict | None:
    ours = {r.get("variant"): r for r in rows if r["impl"] == "ours"}
    return next((ours[v] for v in DEFAULT_INFER_VARIANTS if v in ours), None)


def _main_table(timings: list[dict], kind: str, choose=None) -> list[str]:
    """One row per case: the reference against ours (the fastest variant, or ``choose(rows)``)."""
    unit = "tokens/s" if kind == "train" else "series/s"
    lines = [
        f"| case | reference {unit} | ours {unit} (variant) | speed-up | target | ref peak GiB | ours peak GiB "
        "| memory ours/ref | ref MFU | ours MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    seen = []
    for r in timings:
        if r["kind"] == kind and case_key(r) not in seen:
            seen.append(case_key(r))
    for key in seen:
        rows = [r for r in timings if case_key(r) == key]
        if all(r["size"].endswith("dense") for r in rows):
            continue
        ref = next((r for r in rows if r["impl"] == "reference"), None)
        ours = choose(rows) if choose else None
        ours = ours or next((r for r in rows if r.get("best")), None)
        ours = ours or next((r for r in rows if r["impl"] == "ours"), None)
        speed_up = rate(ours) / rate(ref) if rate(ours) and rate(ref) else None
        target = TARGETS.get((kind, rows[0]["size"])) if rows[0]["dtype"] == "bf16" else None
        verdict = "–"
        if ref is not None and ref.get("status") == "OOM":
            verdict = "runs where the reference is out of memory: " + ("met" if rate(ours) else "missed")
        elif target:
            verdict = f"≥{target:g}×: " + ("met" if speed_up and speed_up >= target else "missed")
        mem = None
        if ours and ref and ours.get("peak_gib") and ref.get("peak_gib") and rate(ref) and rate(ours):
            ratio = ours["peak_gib"] / ref["peak_gib"]
            mem = f"{ratio:.2f} ({'≤' if ratio <= 0.5 else '>'} 0.5)"
        ours_txt = _status_or_rate(ours) + (f" ({ours['variant']})" if ours and rate(ours) else "")
        lines.append(
            f"| {_case_name(rows[0])} | {_status_or_rate(ref)} | {ours_txt} | "
            f"{_fmt(speed_up, 1) + '×' if speed_up else '–'} | {verdict} | "
            f"{_fmt(ref.get('peak_gib') if ref and rate(ref) else None, 1)} | "
            f"{_fmt(ours.get('peak_gib') if ours and rate(ours) else None, 1)} | {mem or '–'} | "
            f"{_fmt(100 * ref['mfu'], 1) + '%' if rate(ref) and ref.get('mfu') else '–'} | "
            f"{_fmt(100 * ours['mfu'], 1) + '%' if rate(ours) and ours.get('mfu') else '–'} |"
        )
    return lines


def _dense_table(timings: list[dict], params: list[dict]) -> list[str]:
    lines = [
        "| model | parameters | activated per token | train tokens/s | forecast series/s (ctx 512, h 96) |",
        "|---|---|---|---|---|",
    ]
    counts = {p["size"]: p for p in params}
    for size in ("base", "base-dense"):
        best = [r for r in timings if r["size"] == size and r.get("best") and r["dtype"] == "bf16"]
        train = next((r for r in best if r["kind"] == "train"), None)
        infer = next((r for r in best if r["kind"] == "infer" and r["ctx"] == 512 and r["horizon"] == 96), None)
        p = counts.get(size, {})
        lines.append(
            f"| {size} | {_fmt(p.get('total'))} | {_fmt(p.get('activated'))} | {_status_or_rate(train)} | "
            f"{_status_or_rate(infer)} |"
        )
    return lines


def write(out: Path) -> None:
    """Render speed.md from speed.json (and speed_cpu.json when present)."""
    path = out / "speed.json"
    records = json.loads(path.read_text()) if path.exists() else []
    timings = [r for r in records if r.get("kind") in ("train", "infer")]
    env = next((r for r in records if r.get("kind") == "env"), {})
    checks = [r for r in records if r.get("kind") == "check"]
    params = [r for r in records if r.get("kind") == "params"]
    lines = ["# Speed: timemoe-forecaster against the reference Time-MoE", ""]
    if env:
        lines += [
            f"GPU: **{env.get('gpu', '?')}**, CUDA {env.get('cuda', '?')}; torch {env.get('torch')}, "
            f"triton {env.get('triton', '–')}; reference: sktime {env.get('sktime', '?')} `sktime.libs.timemoe` "
            f"with transformers {env.get('transformers', '?')} (eager attention, experts in a Python loop). "
            f"Measured bf16 matmul peak (8192³, random data): **{_fmt(env.get('bf16_matmul_tflops'), 0)} TFLOP/s**; "
            "MFU = model FLOPs (`model_flops_per_token`) per second over that peak.",
            "",
            f"Command: `{env.get('command', 'python benchmarks/speed.py')}`",
            "",
            *([env["note"], ""] if env.get("note") else []),
            "Both implementations run in one process on one GPU with the same random weights (the reference's "
            "`save_pretrained`, loaded by ours) and the same inputs; training is a full AdamW step "
            "(forward, backward, update) with bf16 parameters for both; forecasts are the reference's "
            "`generate` against our `forecast`. Medians over CUDA-event-timed repetitions after warm-up "
            "(compilation included in the warm-up). Peak = `torch.cuda.max_memory_allocated` after a reset.",
            "",
        ]
    if timings:
        lines += ["## Training", ""] + _main_table(timings, "train") + [""]
        lines += ["## Forecasting (fastest variant)", ""] + _main_table(timings, "infer") + [""]
        lines += [
            "## Forecasting, default settings",
            "",
            "The fast path as a user gets it without tuning: compiled blocks replayed as a CUDA graph "
            "(`compile_blocks` + `CUDAGraphForecaster`) where measured, else compiled blocks, with the default "
            "`max_batch_tokens` (prefill in chunks of 2^16 context points, at most 2^19 cached positions per pass).",
            "",
        ]
        lines += _main_table(timings, "infer", choose=_default_variant) + [""]
        lines += ["## Sparse against dense (ours, same activated FFN width)", ""] + _dense_table(timings, params)
        lines += [""]
        lines += ["## Every variant measured", "", "| case | impl | variant | rate | peak GiB | MFU | status |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for r in timings:
            lines.append(
                f"| {_case_name(r)} | {r['impl']} | {r.get('variant', '')} | {_status_or_rate(r)} | "
                f"{_fmt(r.get('peak_gib'), 1)} | "
                f"{_fmt(100 * r['mfu'], 1) + '%' if r.get('mfu') and rate(r) else '–'} | {r.get('status')} |"
            )
        lines += [""]
    micro = [r for r in records if r.get("kind") == "micro"]
    if micro:
        lines += ["## Levers measured alone (base shapes)", "", "| what | variant | ms (median) | rel. error |"]
        lines += ["|---|---|---|---|"]
        for m in micro:
            err = f"{m['rel_err']:.1e}" if m.get("rel_err") is not None else "–"
            lines.append(
                f"| {m['what']} | {m['variant']} | {_fmt(m.get('ms'), 3) if 'ms' in m else m.get('status')} | {err} |"
            )
        lines += [""]
    if checks:
        lines += ["## Equivalence with the reference (checked before timing)", ""]
        lines += ["| size | dtype | what | detail | relative error | tolerance | equivalent |"]
        lines += ["|---|---|---|---|---|---|---|"]
        for c in checks:
            forecast = c["what"] == "forecast"
            detail = f"ctx {c.get('ctx')}, h {c.get('horizon')}" if forecast else f"seq {c.get('seq_len')}"
            lines.append(
                f"| {c['size']} | {c['dtype']} | {c['what']} | {detail} | {c['rel_err']:.2e} | {c['tol']:g} | "
                f"{'yes' if c['equivalent'] else '**no**'} |"
            )
        lines += [""]
    cpu_path = out / "speed_cpu.json"
    if cpu_path.exists():
        cpu = json.loads(cpu_path.read_text())
        lines += ["## CPU: end-to-end forecast", ""]
        lines += [
            f"{cpu['machine']}; torch {cpu['torch']}, {cpu['threads']} threads; checkpoint: {cpu['checkpoint']}; "
            f"1-minute load average before/after: {[round(x, 1) for x in cpu.get('load_average', [])]}. "
            f"Command: `{cpu['command']}`",
            "",
            "| path | median ms | min ms | target |",
            "|---|---|---|---|",
        ]
        for row in cpu["rows"]:
            lines.append(
                f"| {row['what']} | {_fmt(row.get('ms_median'), 1)} | {_fmt(row.get('ms_min'), 1)} | "
                f"{row.get('target', '–')} |"
            )
        lines += [""]
    (out / "speed.md").write_text("\n".join(lines))

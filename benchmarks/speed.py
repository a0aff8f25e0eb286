"""Speed of timemoe-forecaster against the reference Time-MoE (sktime's vendored copy), side by side.

For every case both implementations run in one process on one GPU, with the same random weights
(the reference saves them with its own ``save_pretrained``; we load that directory). Each group first
checks that the two agree (training loss, forecasts), then times: warm-up (compilation included),
peak-memory reset, CUDA events around every repetition, medians.

    python benchmarks/speed.py                    # GPU: every group (one process each), then the report
    python benchmarks/speed.py --groups base      # some groups only
    python benchmarks/speed.py --groups base-forecast,large-forecast   # re-measure the forecasting cases
    python benchmarks/speed.py --smoke            # every code path on the CPU with tiny models, a few minutes
    python benchmarks/speed.py --cpu              # CPU section: end-to-end forecast on this machine
    python benchmarks/speed.py --report --jsonl F # rebuild speed.json/speed.md from a records file

Results: ``benchmarks/results/speed.json`` (records) and ``speed.md`` (tables with ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks import speed_report  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    environment,
    forecast_flops,
    free_memory,
    matmul_peak_tflops,
    time_cpu,
    time_cuda,
)
from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction  # noqa: E402
from timemoe_forecaster.compile import compile_blocks, uncompile_blocks  # noqa: E402
from timemoe_forecaster.cuda_graphs import CUDAGraphForecaster  # noqa: E402
from timemoe_forecaster.model.modeling import model_flops_per_token  # noqa: E402

log = logging.getLogger("speed")
RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
GROUPS = ("base", "large", "ultra", "dense")
# Re-measurements of parts of a group, each with the model size it runs.
EXTRA_GROUPS = {
    "base-forecast": "base",
    "large-forecast": "large",
    "long-forecast": "base",
    "large-train": "large",
    "base-train": "base",
    "base-forecast-h96": "base",
    "base-forecast-h720": "base",
}
TRAIN_ONLY_GROUPS = ("large-train", "base-train")  # the reference and our fastest training set-ups only
LR = 1e-4


# Plan: what runs, at which size -----------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    smoke: bool
    device: str
    configs: dict
    seq_len: int
    infer: dict  # group -> [(dtype, ctx, horizon, batch)]
    train: dict  # group -> [(dtype, batch)]
    reps_train: tuple = (4, 10)  # compile, then cudagraph warm-up and recording, then replays
    reps_ref_train: tuple = (2, 5)
    reps_infer: tuple = (2, 5)
    reps_ref_infer: tuple = (1, 3)
    compile_backend: str = "inductor"


def dense_twin(config: TimeMoEConfig) -> TimeMoEConfig:
    """A dense model with the MoE model's activated FFN width: shared expert + top-k routed experts."""
    width = config.intermediate_size + config.num_experts_per_tok * config.expert_size
    return config.replace(use_dense=True, apply_aux_loss=False, intermediate_size=width, num_experts=1)


def make_plan(smoke: bool) -> Plan:
    if not smoke:
        configs = {n: TimeMoEConfig.from_preset(n) for n in ("base", "large", "ultra")}
        configs["dense"] = dense_twin(configs["base"])
        configs.update({group: configs[size] for group, size in EXTRA_GROUPS.items()})
        return Plan(
            smoke=False,
            device="cuda",
            configs=configs,
            seq_len=4096,
            infer={
                "base": [
                    ("bf16", 512, 96, 1024),
                    ("bf16", 512, 720, 256),
                    ("bf16", 4096, 96, 16),
                    ("bf16", 4096, 96, 64),
                    ("fp32", 512, 96, 1024),
                ],
                "large": [("bf16", 512, 96, 1024)],
                "dense": [("bf16", 512, 96, 1024)],
                "base-forecast": [("bf16", 512, 96, 1024), ("bf16", 512, 720, 256), ("fp32", 512, 96, 1024)],
                "base-forecast-h96": [("bf16", 512, 96, 1024)],
                "base-forecast-h720": [("bf16", 512, 720, 256)],
                "large-forecast": [("bf16", 512, 96, 1024)],
                "long-forecast": [("bf16", 4096, 96, 16), ("bf16", 4096, 96, 64)],
            },
            train={
                "base": [("bf16", 4)],
                "large": [("bf16", 2)],
                "ultra": [("bf16", 1)],
                "dense": [("bf16", 4)],
                "large-train": [("bf16", 2)],
                "base-train": [("bf16", 4)],
            },
        )
    small = dict(horizon_lengths=[1, 8, 32, 64], max_position_embeddings=4096, num_experts=4, num_attention_heads=2)
    configs = {
        "base": TimeMoEConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, **small),
        "large": TimeMoEConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, **small),
        "ultra": TimeMoEConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, **small),
    }
    configs["dense"] = dense_twin(configs["base"])
    configs.update({group: configs[size] for group, size in EXTRA_GROUPS.items()})
    return Plan(
        smoke=True,
        device="cpu",
        configs=configs,
        seq_len=64,
        infer={
            "base": [("bf16", 32, 96, 4), ("bf16", 32, 720, 2), ("fp32", 32, 96, 4)],
            "large": [("bf16", 32, 96, 4)],
            "dense": [("bf16", 32, 96, 4)],
            "base-forecast": [("bf16", 32, 96, 4)],
            "base-forecast-h96": [("bf16", 32, 96, 4)],
            "base-forecast-h720": [("bf16", 32, 720, 2)],
            "large-forecast": [("bf16", 32, 96, 4)],
            "long-forecast": [("bf16", 64, 96, 4)],
        },
        train={
            "base": [("bf16", 2)],
            "large": [("bf16", 2)],
            "ultra": [("bf16", 1)],
            "dense": [("bf16", 2)],
            "large-train": [("bf16", 2)],
            "base-train": [("bf16", 2)],
        },
        reps_train=(1, 2),
        reps_ref_train=(1, 2),
        reps_infer=(1, 2),
        reps_ref_infer=(1, 2),
        compile_backend="aot_eager",  # traces exactly what inductor would, without minutes of C++ builds
    )


# Models --------------------------------------------------------------------------------------------
def reference_module():
    from sktime.libs.timemoe import TimeMoeConfig, TimeMoeForPrediction

    return TimeMoeConfig, TimeMoeForPrediction


def reference_config(config: TimeMoEConfig):
    ref_config_cls, _ = reference_module()
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "extra"}
    return ref_config_cls(**values)


def build_pair(config: TimeMoEConfig, workdir: Path, seed: int = 0):
    """The reference with seeded random weights, saved by itself; ours loaded from that directory."""
    _, ref_cls = reference_module()
    torch.manual_seed(seed)
    ref = ref_cls(reference_config(config))
    ref.save_pretrained(workdir)
    return ref


def load_ours(workdir: Path, dtype: torch.dtype, device: str) -> TimeMoEForPrediction:
    return TimeMoEForPrediction.from_pretrained(workdir, dtype=dtype, device=device)


def prepare_blocks(model: TimeMoEForPrediction, checkpointing: bool, compile_parts: str | None, backend: str):
    """Set-up applied from outside the model (as ``train/parallel.py`` does): activation checkpointing
    per decoder block, then ``torch.compile`` of

    - "blocks": each decoder block (torchtitan's granularity, what ``train/parallel.py`` does);
    - "ffn": each block's norms and MoE layer only (attention and the KV cache stay eager);
    - "model": the whole model with its losses, one graph forward and one backward;
    - "model-cudagraphs": the same, replayed as CUDA graphs (``mode="reduce-overhead"``);
    - "model-step-graph": compiled as "model"; ``train_case`` then records the whole step, optimizer
      included, as one CUDA graph (``GraphedStep``); "-autotune" and "-coordesc" add inductor's tuning
      options (EXTRA_TRAIN_VARIANTS).
    """
    blocks = model.model.layers
    if checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block)
    if compile_parts == "blocks":
        compile_blocks(model, backend=backend)
    elif compile_parts == "ffn":
        for block in blocks:
            for part in (block.input_layernorm, block.post_attention_layernorm, block.ffn_layer):
                part.compile(backend=backend)
    elif compile_parts in ("model", "model-step-graph"):
        model.compile(backend=backend)
    elif compile_parts == "model-step-graph-autotune":  # inductor's GEMM autotuning (Triton templates vs aten)
        model.compile(backend=backend, options={"max_autotune": True, "max_autotune_gemm_backends": "ATEN,TRITON"})
    elif compile_parts == "model-step-graph-coordesc":  # inductor's own kernels' tiles tuned by coordinate descent
        model.compile(backend=backend, options={"coordinate_descent_tuning": True})
    elif compile_parts == "model-cudagraphs":
        model.compile(backend=backend, **({"mode": "reduce-overhead"} if backend == "inductor" else {}))
    return model


def random_batch(batch: int, seq: int, device: str, dtype: torch.dtype, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, seq, generator=g)
    labels = torch.randn(batch, seq, generator=g)
    return {
        "inputs": inputs.to(device=device, dtype=dtype),
        "labels": labels.to(device=device, dtype=dtype),
        "loss_mask": torch.ones(batch, seq, device=device, dtype=dtype),
    }


def ref_loss(ref, batch):
    # The reference reshapes input_ids/labels in place: hand it copies.
    out = ref(
        input_ids=batch["inputs"].clone(),
        labels=batch["labels"].clone(),
        loss_masks=batch["loss_mask"].clone(),
        use_cache=False,
        return_dict=True,
    )
    return out.loss


def ours_loss(model, batch):
    return model(batch["inputs"], labels=batch["labels"], loss_mask=batch["loss_mask"]).loss


def ours_loss_masked(model, batch):
    """As ``ours_loss``, with every position marked real: the same loss, through the masked attention path."""
    mask = batch["loss_mask"].bool()
    return model(batch["inputs"], labels=batch["labels"], loss_mask=batch["loss_mask"], attention_mask=mask).loss


def train_step_fn(loss_fn, model, optimizer, batch):
    """One training step; called with no argument on ``batch``, or on the batch given (graphed steps)."""

    def step(inputs=None):
        loss = loss_fn(model, batch if inputs is None else inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def ours_optimizer(model, lean: bool, fused_ok: bool, capturable: bool = False):
    """Fused AdamW (our trainer's default on GPU); ``lean``: the trainer's bf16 stochastic-rounding AdamW;
    ``capturable``: the update recordable in a CUDA graph."""
    try:
        from timemoe_forecaster.train.optim import build_optimizer

        dtype = "bf16" if lean else "fp32"
        return build_optimizer(model, lr=LR, weight_decay=0.1, optim_dtype=dtype, capturable=capturable)
    except ImportError:
        return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, fused=fused_ok or None)


# Measurement ---------------------------------------------------------------------------------------
class Runner:
    """Runs cases, turns timings into records and appends them to a JSON-lines file."""

    def __init__(self, plan: Plan, jsonl: Path, deadline: float, peak_tflops: float | None, profile_dir=None,
                 profile_rows: int = 30, train_variants: tuple[str, ...] = ()):  # fmt: skip
        self.plan, self.jsonl, self.deadline, self.peak = plan, jsonl, deadline, peak_tflops
        self.profile_dir = profile_dir if plan.device == "cuda" else None
        self.profile_rows, self.train_variants = profile_rows, tuple(train_variants)
        self.device_name = torch.cuda.get_device_name() if plan.device == "cuda" else "cpu"

    def emit(self, record: dict) -> dict:
        record = {"device": self.device_name, "smoke": self.plan.smoke, **record}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("%s", json.dumps(record))
        return record

    def time(self, fn, reps: tuple) -> dict:
        if self.plan.device == "cuda":
            return time_cuda(fn, *reps)
        return {**time_cpu(fn, *reps), "peak_gib": None}

    def out_of_time(self, need_s: float) -> bool:
        return time.time() + need_s > self.deadline

    def measure(self, fn, reps, base: dict, work: float, flops: float, unit: str, need_s: float = 30) -> dict:
        """Time ``fn``; record rate (work per second), peak memory, MFU. OOM and errors become records."""
        if self.out_of_time(need_s):
            return self.emit({**base, "status": "skipped (time budget)"})
        status, stats = "ok", None
        # What is already allocated counts into the peak: recorded so a leak between cases shows.
        before_gib = torch.cuda.memory_allocated() / 2**30 if self.plan.device == "cuda" else None
        base = {**base, "allocated_before_gib": before_gib}
        try:
            stats = self.time(fn, reps)
        except torch.OutOfMemoryError:
            status = "OOM"
        except Exception as err:  # noqa: BLE001 - one failing case must not lose the others
            status = f"error: {type(err).__name__}: {str(err)[:300]}"
            log.exception("case failed: %s", base)
        free_memory()
        if stats is None:
            return self.emit({**base, "status": status})
        seconds = stats["ms_median"] * 1e-3
        mfu = flops / seconds / (self.peak * 1e12) if self.peak else None
        return self.emit({**base, "status": status, unit: work / seconds, "mfu": mfu, **stats})


def check_forecasts(runner: Runner, size: str, dtype_name: str, ref, ours, ctx_len: int, horizons, tol: float):
    dtype, device = DTYPES[dtype_name], runner.plan.device
    g = torch.Generator().manual_seed(2)
    context = torch.randn(8, ctx_len, generator=g).to(dtype).float()  # representable in both dtypes
    for horizon in horizons:
        with torch.no_grad():
            generated = ref.generate(context.to(device, dtype).clone(), max_new_tokens=horizon)  # [B, S + L(, 1)]
        expected = generated.reshape(len(context), -1)[:, -horizon:].float().cpu()
        got = ours.forecast(context.to(device), horizon).cpu()
        err = ((got - expected).norm() / expected.norm()).item()
        runner.emit(
            {"kind": "check", "what": "forecast", "size": size, "dtype": dtype_name, "ctx": ctx_len,
             "horizon": horizon, "rel_err": err, "tol": tol, "equivalent": bool(err <= tol)}
        )  # fmt: skip


def check_loss(runner: Runner, size: str, dtype_name: str, ref, ours, seq: int, tol: float):
    batch = random_batch(2, seq, runner.plan.device, DTYPES[dtype_name], seed=3)
    with torch.no_grad():
        a, b = ref_loss(ref, batch).float().item(), ours_loss(ours, batch).float().item()
    err = abs(a - b) / abs(a)
    runner.emit(
        {"kind": "check", "what": "train_loss", "size": size, "dtype": dtype_name, "seq_len": seq,
         "reference_attention": getattr(ref.config, "_attn_implementation", "?"),
         "reference": a, "ours": b, "rel_err": err, "tol": tol, "equivalent": bool(err <= tol)}
    )  # fmt: skip


def infer_cases(runner: Runner, size, config, dtype_name, ref, ours, cases, variants):
    plan, device, dtype = runner.plan, runner.plan.device, DTYPES[dtype_name]
    for _, ctx, horizon, batch in [c for c in cases if c[0] == dtype_name]:
        g = torch.Generator().manual_seed(4)
        context = torch.randn(batch, ctx, generator=g).to(device=device, dtype=dtype)
        base = {"kind": "infer", "size": size, "dtype": dtype_name, "seq_len": None, "ctx": ctx,
                "horizon": horizon, "batch": batch}  # fmt: skip
        flops = forecast_flops(config, batch, ctx, horizon)
        if ref is not None:
            ours.to("cpu")
            ref.to(device)
            # The reference reshapes its input in place: a copy per call.
            fn = lambda c=context, h=horizon: ref.generate(c.clone(), max_new_tokens=h)  # noqa: E731
            runner.measure(fn, plan.reps_ref_infer, {"impl": "reference", "variant": "eager+loop", **base},
                           batch, flops, "series_per_s", need_s=60)  # fmt: skip
            ref.to("cpu")
            ours.to(device)
        for name, model, kwargs in variants(ours, (size, ctx, horizon)):
            fn = lambda m=model, c=context, h=horizon, kw=kwargs: m.forecast(c, h, **kw)  # noqa: E731
            record = runner.measure(fn, plan.reps_infer, {"impl": "ours", "variant": name, **base}, batch, flops,
                                    "series_per_s")  # fmt: skip
            profiled = (ctx, dtype_name, size) == (512, "bf16", "base") and name in PROFILED_INFER
            if runner.profile_dir and profiled and record.get("status") == "ok":
                slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.replace(", ", "_"))  # the device returns plain names only
                profile_to_file(fn, runner.profile_dir / f"profile_infer_{size}_h{horizon}_{slug}.txt", warmup=1)
        del context


def train_case(runner: Runner, size, config, dtype_name, batch, make_ref, make_ours, variants):
    """Reference step (``make_ref`` gives the model, or None), then each of our ``TrainVariant``s."""
    plan, device = runner.plan, runner.plan.device
    dtype, seq = DTYPES[dtype_name], plan.seq_len
    data = random_batch(batch, seq, device, dtype)
    base = {"kind": "train", "size": size, "dtype": dtype_name, "seq_len": seq, "ctx": None, "horizon": None,
            "batch": batch}  # fmt: skip
    tokens = batch * seq
    flops = tokens * model_flops_per_token(config, seq, training=True)
    if make_ref is not None:
        ref = make_ref().to(device).train()
        opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=0.1)
        fn = train_step_fn(ref_loss, ref, opt, data)
        runner.measure(fn, plan.reps_ref_train, {"impl": "reference", "variant": "eager+loop+adamw", **base},
                       tokens, flops, "tokens_per_s", need_s=60)  # fmt: skip
        ref.zero_grad(set_to_none=True)
        del opt, fn, ref
        free_memory()
    for variant in variants:
        with forced_qkv_gemms(variant.qkv_gemms), swapped_aux_loss(variant.aux_loss), forced_routing(variant.routing):
            train_variant(runner, size, variant, base, data, tokens, flops, make_ours)


def train_variant(runner: Runner, size, variant: TrainVariant, base, data, tokens, flops, make_ours) -> None:
    """Build, prepare and time one of our training set-ups (``train_case``'s loop body)."""
    plan, device = runner.plan, runner.plan.device
    name, compile_parts = variant.name, variant.compile
    step_graph = bool(compile_parts) and compile_parts.startswith("model-step-graph")
    if step_graph and device != "cuda":
        runner.emit({"impl": "ours", "variant": name, **base, "status": "skipped (CUDA graphs need a GPU)"})
        return
    model = make_ours()
    model.set_moe_dispatch(variant.moe_dispatch)
    loss_fn = ours_loss
    if variant.attention == "flex":
        from timemoe_forecaster.model.attention import prepare_flex_tiles

        model.set_attn_backend("flex")
        prepare_flex_tiles(device)  # a compiled model only reads the tile table
        loss_fn = ours_loss_masked
    prepare_blocks(model.train(), variant.checkpointing, compile_parts, plan.compile_backend)
    graphed = None
    opt = ours_optimizer(model, variant.lean_optimizer, fused_ok=device == "cuda", capturable=step_graph)
    fn = train_step_fn(loss_fn, model, opt, data)
    if step_graph:
        from timemoe_forecaster.train.step_graph import GraphedStep, check_capturable

        check_capturable(opt)
        graphed = GraphedStep(fn)
        fn = lambda g=graphed: g(data)  # noqa: E731
    need = 120 if compile_parts else 30
    record = runner.measure(fn, plan.reps_train, {"impl": "ours", "variant": name, **base}, tokens, flops,
                            "tokens_per_s", need_s=need)  # fmt: skip
    if runner.profile_dir and record.get("status") == "ok" and name in PROFILED_TRAIN:
        path = runner.profile_dir / f"profile_train_{size}_{name.replace('+', '_')}.txt"
        profile_to_file(fn, path, rows=runner.profile_rows)
    del model, opt, fn
    graphed = None  # a graphed step holds the model and its graph's memory pool
    free_memory()


def profile_to_file(fn, path: Path, warmup: int = 2, rows: int = 30) -> None:
    """One profiled call of ``fn`` after warm-up: the top kernels by device time, as a text table."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    free_memory()


class GraphedForecast:
    """``forecast`` through a CUDAGraphForecaster (captured on the first, warm-up, call)."""

    def __init__(self, model, **kwargs):
        self.fast = CUDAGraphForecaster(model, max_graphs=1, **kwargs)

    def forecast(self, context, horizon):
        return self.fast(context, horizon)


@contextlib.contextmanager
def swapped_attribute(owner, name: str, value):
    """``owner.name`` is ``value`` inside, restored after: the benchmarks' A/B switches. Dynamo's caches are
    reset on the way in and out, because compiled code keeps what it traced."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    torch._dynamo.reset()
    try:
        yield
    finally:
        setattr(owner, name, saved)
        torch._dynamo.reset()


@contextlib.contextmanager
def forced_qkv_gemms(count: int | None):
    """A/B switch for the q/k/v projection (session 11): while on, it runs as one GEMM (``count=1``) or as
    three on row slices of the joined weight (``count=3``) whether autograd is on or not; the library runs
    one without autograd and three with (``Attention``). Models compiled inside must run inside: the
    compiled code keeps what it traced."""
    if count is None:
        yield
        return
    from timemoe_forecaster.model.attention import Attention

    method = {1: Attention._qkv_one_gemm, 3: Attention._qkv_three_gemms}[count]
    with swapped_attribute(Attention, "_project_qkv", method):
        yield


@contextlib.contextmanager
def swapped_aux_loss(name: str):
    """A/B switch for the load-balancing loss (session 12): "candidate" runs ``aux_loss_micro``'s candidate
    formula in the model's loss instead of ``moe.load_balancing_loss``; "library" changes nothing."""
    if name == "library":
        yield
        return
    from benchmarks.aux_loss_micro import candidate_load_balancing_loss
    from timemoe_forecaster.model import modeling

    with swapped_attribute(modeling, "load_balancing_loss", {"candidate": candidate_load_balancing_loss}[name]):
        yield


def balanced_route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``moe.route``'s outputs with the experts dealt round-robin (token t takes experts t*k .. t*k+k-1, modulo E):
    every expert gets the same number of rows, as a trained, load-balanced router gives them. The weights are
    the router's probabilities of those experts, so the router still gets a gradient."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)  # [T, E]
    t, e = probs.shape
    slots = torch.arange(t, device=probs.device)[:, None] * top_k + torch.arange(top_k, device=probs.device)
    experts = slots % e  # [T, K]
    return probs.gather(-1, experts), experts


@contextlib.contextmanager
def forced_routing(name: str):
    """A/B switch for the routing (session 18): "balanced" deals the experts round-robin (``balanced_route``);
    "router" changes nothing. Randomly initialised models send nearly every token to two experts
    (benchmarks/routing_balance.py), trained ones spread them."""
    if name == "router":
        yield
        return
    from timemoe_forecaster.model import moe

    with swapped_attribute(moe, "route", {"balanced": balanced_route}[name]):
        yield


class InferVariant(NamedTuple):
    """A compiled-block forecasting set-up: MoE dispatch, ``forecast`` keyword arguments, whether a CUDA graph
    replays it, and how many GEMMs the q/k/v projection runs as (``forced_qkv_gemms``; None: the library's choice)."""

    name: str
    dispatch: str
    kwargs: dict
    graph: bool
    qkv_gemms: int | None = None


# Compiled-block forecasting variants of the base and large ctx-512 cases. The first is the library's
# default path; the last is session 2's set-up.
COMPILED_INFER_VARIANTS = [
    InferVariant("compiled-blocks", "auto", {}, False),
    InferVariant("compiled-blocks + CUDA graph", "auto", {}, True),
    InferVariant("compiled-blocks + CUDA graph, separate q k v GEMMs", "auto", {}, True, qkv_gemms=3),
    InferVariant("compiled-blocks + CUDA graph, 2^17 tokens", "auto", {"max_batch_tokens": 2**17}, True),
    # Not listed: session 14 measured the shared expert in 2^16-row blocks at 2^17 tokens (commit 2f2e220,
    # raw/session14/call1): h 720 still peaked at 0.52 of the reference's memory and h 96 ran 0.9% slower.
    # Not listed, session 15 (raw/session15): one pass caching up to 2^20 positions at the default's 2^16-token
    # chunks (commit 1ee1b27, call 1) gave base h 96 5,215 against 5,185 series/s for the default and 5,355 for
    # 2^17 tokens: the chunk size, not the split into two passes, is what 2^17 gains. The shared expert through the
    # fused MoE kernels (commit 6191b45, call 3) ran 3% slower at h 96 and h 720 and saved 0.13 GiB at 2^17.
    InferVariant("compiled-blocks + CUDA graph, one batch", "auto", {"max_batch_tokens": None}, True),
    InferVariant("compiled-blocks, one batch", "auto", {"max_batch_tokens": None}, False),
    InferVariant("compiled-blocks, grouped MoE, one batch", "grouped", {"max_batch_tokens": None}, False),
]


def infer_variants(plan: Plan):
    """Our forecasting set-ups as (name, model, forecast keyword arguments): the defaults (fused MoE
    kernels where they run, prefill in chunks of ``max_batch_tokens``) eager and with compiled blocks;
    for the base and large ctx-512 cases also the levers one by one (COMPILED_INFER_VARIANTS), so each
    is measured against the others in the same run. Host-bound cases slow down as dynamo caches more
    graphs per block, so the CUDA-graph variants (insensitive to that) come early."""

    def variants(model, case):
        bf16 = next(model.parameters()).dtype == torch.bfloat16
        every = case[0] in ("base", "large") and case[1] < 4096  # the ctx-512 cases
        yield "eager", model, {}
        if not bf16:  # fp32 runs the loop dispatch on CUDA: nothing for the compiler to fuse around it
            yield "eager, one batch", model, {"max_batch_tokens": None}
            return
        if every and plan.device == "cuda":
            graphed = GraphedForecast(model)
            yield "eager + CUDA graph", graphed, {}
            graphed.fast.clear()
        prepare_blocks(model, False, "blocks", plan.compile_backend)
        try:
            for variant in COMPILED_INFER_VARIANTS if every else COMPILED_INFER_VARIANTS[:1]:
                if variant.graph and plan.device != "cuda":
                    continue
                model.set_moe_dispatch(variant.dispatch)
                with forced_qkv_gemms(variant.qkv_gemms):
                    if variant.graph:
                        graphed = GraphedForecast(model, **variant.kwargs)
                        yield variant.name, graphed, {}
                        graphed.fast.clear()
                    else:
                        yield variant.name, model, variant.kwargs
        finally:
            model.set_moe_dispatch("auto")
            uncompile_blocks(model)

    return variants


class TrainVariant(NamedTuple):
    """One of our training set-ups. ``attention`` "flex" passes the rows with an all-ones attention mask, which
    gives FlexAttention a causal block mask (plain causal rows take SDPA whatever the backend): the same loss."""

    name: str
    checkpointing: bool
    compile: str | None
    lean_optimizer: bool
    moe_dispatch: str
    attention: str = "sdpa"
    qkv_gemms: int | None = None  # ``forced_qkv_gemms``; None: the library's three
    aux_loss: str = "library"  # ``swapped_aux_loss``
    routing: str = "router"  # ``forced_routing``


TRAIN_VARIANTS = [
    TrainVariant("eager", False, None, False, "auto"),
    TrainVariant("compiled-model+cudagraphs", False, "model-cudagraphs", False, "auto"),
    TrainVariant("compiled-model+step-graph", False, "model-step-graph", False, "auto"),
    TrainVariant("compiled-model", False, "model", False, "auto"),
    TrainVariant("compiled-blocks", False, "blocks", False, "auto"),
]
# Only on request (--train-variants): experiments, not part of the standing table.
EXTRA_TRAIN_VARIANTS = [
    TrainVariant("compiled-model-autotune+step-graph", False, "model-step-graph-autotune", False, "auto"),
    # Session 13: the generated element-wise and reduction kernels (SwiGLU, norms, rotary, their backwards) tuned
    # one tile parameter at a time; session 7's autotune variant tuned GEMMs and pointwise tiles, not this.
    TrainVariant("compiled-model-coordesc+step-graph", False, "model-step-graph-coordesc", False, "auto"),
    # Session 17: the routed experts through the fused Triton kernels forward and backward (fused_moe.routed_experts).
    TrainVariant("compiled-model+step-graph+fused-moe", False, "model-step-graph", False, "fused"),
    # Session 18: the grouped GEMMs whatever the width, the A/B of auto's width rule (fused_moe.TRAIN_MAX_EXPERT_SIZE).
    TrainVariant("compiled-model+step-graph+grouped-moe", False, "model-step-graph", False, "grouped"),
    # Session 19: the same A/B without torch.compile (the trainer's default), where every kernel is launched
    # from Python: "eager" takes auto's fused kernels for base.
    TrainVariant("eager+grouped-moe", False, None, False, "grouped"),
    # The same A/B with the experts dealt evenly, as a trained router spreads the tokens (forced_routing).
    TrainVariant(
        "compiled-model+step-graph+balanced-routing", False, "model-step-graph", False, "auto", routing="balanced"
    ),
    TrainVariant(
        "compiled-model+step-graph+grouped-moe+balanced-routing",
        False,
        "model-step-graph",
        False,
        "grouped",
        routing="balanced",
    ),  # fmt: skip
    # FlexAttention instead of SDPA (cuDNN on an H100/H200) for the causal rows.
    TrainVariant("compiled-model+step-graph+flex", False, "model-step-graph", False, "auto", attention="flex"),
    # Session 11's A/B: q/k/v as one GEMM in training too (the library runs three there).
    TrainVariant("compiled-model+step-graph+one-qkv-gemm", False, "model-step-graph", False, "auto", qkv_gemms=1),
    # Session 12's A/B: the load-balancing loss by aux_loss_micro's candidate formula (no gain; not adopted).
    TrainVariant(
        "compiled-model+step-graph+candidate-aux", False, "model-step-graph", False, "auto", aux_loss="candidate"
    ),
]
# Kernel profiles of base cases (4 files: the device returns at most 8 with the results and the log).
PROFILED_TRAIN = {
    "compiled-blocks",
    "compiled-model",
    "compiled-model+step-graph",
    "compiled-model-autotune+step-graph",
    "compiled-model-coordesc+step-graph",
    "compiled-model+step-graph+one-qkv-gemm",
    "compiled-model+step-graph+candidate-aux",
    "compiled-model+step-graph+fused-moe",
    "compiled-model+step-graph+grouped-moe",
}
# At h 96 and h 720: 2 files more, within the device's 8 returned files for the base group. (Session 10's
# profile of the three-q/k/v-GEMM variant is committed under results/raw/session10/call2/.)
PROFILED_INFER = {"compiled-blocks + CUDA graph"}


def run_group(group: str, plan: Plan, runner: Runner, workdir: Path) -> None:
    config, device = plan.configs[group], plan.device
    size = "base-dense" if group == "dense" else EXTRA_GROUPS.get(group, group)
    ivariants = infer_variants(plan)
    if size in ("base", "large"):
        ref32 = build_pair(config, workdir)
        for dtype_name in ("bf16", "fp32"):
            if dtype_name == "fp32" and not any(c[0] == "fp32" for c in plan.infer.get(group, [])):
                continue
            dtype = DTYPES[dtype_name]
            ref = copy.deepcopy(ref32).to(device, dtype).eval()
            ours = load_ours(workdir, dtype, device).eval()
            if dtype_name == "bf16":
                runner.emit({"kind": "params", "size": size, "total": ours.num_parameters(),
                             "activated": ours.num_parameters(activated=True)})  # fmt: skip
            tol_f, tol_l = (5e-2, 2e-2) if dtype_name == "bf16" else (1e-3, 1e-4)
            check_forecasts(runner, size, dtype_name, ref, ours, 512 if not plan.smoke else 32, (96, 720), tol_f)
            check_loss(runner, size, dtype_name, ref, ours, 1024 if not plan.smoke else 48, tol_l)
            infer_cases(runner, size, config, dtype_name, ref, ours, plan.infer.get(group, []), ivariants)
            for _, batch in [t for t in plan.train.get(group, []) if t[0] == dtype_name]:
                variants = list(TRAIN_VARIANTS)
                if group in TRAIN_ONLY_GROUPS:  # the fastest set-ups, with kernel profiles
                    fastest = runner.train_variants or ("compiled-model+step-graph", "compiled-model+cudagraphs",
                                                        "compiled-model")  # fmt: skip
                    variants = [v for v in TRAIN_VARIANTS + EXTRA_TRAIN_VARIANTS if v.name in fastest]
                if group == "base":
                    variants.append(TrainVariant("eager-loop-dispatch", False, None, False, "loop"))
                make = lambda d=dtype: load_ours(workdir, d, device)  # noqa: E731
                ours.to("cpu")
                train_case(runner, size, config, dtype_name, batch, lambda r=ref: r, make, variants)
            del ref, ours
            free_memory()
    elif group == "dense":
        torch.manual_seed(0)
        TimeMoEForPrediction(config).save_pretrained(workdir)
        ours = load_ours(workdir, torch.bfloat16, device).eval()
        runner.emit({"kind": "params", "size": size, "total": ours.num_parameters(),
                     "activated": ours.num_parameters(activated=True)})  # fmt: skip
        infer_cases(runner, size, config, "bf16", None, ours, plan.infer[group], ivariants)
        del ours
        make = lambda: load_ours(workdir, torch.bfloat16, device)  # noqa: E731
        for _, batch in plan.train[group]:
            train_case(runner, size, config, "bf16", batch, None, make, TRAIN_VARIANTS)
    elif group == "ultra":

        def make_ours():
            with torch.device(device):
                torch.manual_seed(0)
                return TimeMoEForPrediction(config).to(torch.bfloat16)

        def make_ref():
            _, ref_cls = reference_module()
            with torch.device("meta"):
                ref = ref_cls(reference_config(config))
            ref = ref.to_empty(device=device).to(torch.bfloat16)
            with torch.no_grad():  # random weights straight on the device; the values do not matter here
                for p in ref.parameters():
                    p.normal_(0.0, config.initializer_range) if p.dim() > 1 else p.fill_(1.0)
            return ref

        ultra_variants = [
            TrainVariant("ckpt+compiled-blocks+fused-adamw", True, "blocks", False, "auto"),
            TrainVariant("ckpt+compiled-blocks+lean-adamw", True, "blocks", True, "auto"),
            TrainVariant("compiled-blocks+fused-adamw", False, "blocks", False, "auto"),
        ]
        if runner.train_variants:  # --train-variants picks among these and the base/large set-ups
            known = ultra_variants + TRAIN_VARIANTS + EXTRA_TRAIN_VARIANTS
            ultra_variants = [v for v in known if v.name in runner.train_variants]
        for _, batch in plan.train[group]:
            train_case(runner, size, config, "bf16", batch, make_ref, make_ours, ultra_variants)


# Entry points --------------------------------------------------------------------------------------
def run_groups_here(groups, plan: Plan, jsonl: Path, deadline: float, profile_dir: Path | None = None,
                    **runner_options) -> None:  # fmt: skip
    peak = None
    if plan.device == "cuda":
        # Forecasting meets a few shapes (prefill, decode steps, batch sizes) before sizes go dynamic.
        torch._dynamo.config.recompile_limit = 64
        peak = matmul_peak_tflops()
    runner = Runner(plan, jsonl, deadline, peak, profile_dir, **runner_options)
    runner.emit({"kind": "env", **environment(), "bf16_matmul_tflops": peak,
                 "reference_attention": "eager", "groups": list(groups)})  # fmt: skip
    for group in groups:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            run_group(group, plan, runner, Path(tmp))
            log.info("group %s took %.1f s", group, time.time() - t0)
    # Last, so that nothing they leave behind can touch the cases above.
    if plan.device == "cuda" and "base" in groups and not runner.out_of_time(60):
        from benchmarks.speed_micro import run_all

        try:
            run_all(runner.emit, plan.configs["base"])
        except Exception:  # noqa: BLE001 - the micro-benchmarks only inform, never block the cases
            log.exception("micro-benchmarks failed")
        free_memory()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--groups",
        default=",".join(GROUPS),
        help=f"comma-separated subset of {GROUPS}, or of the re-measurements {tuple(EXTRA_GROUPS)}",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: exercise every code path")
    parser.add_argument("--cpu", action="store_true", help="CPU section: end-to-end forecast timing")
    parser.add_argument("--report", action="store_true", help="only rebuild speed.json/speed.md from --jsonl")
    parser.add_argument("--jsonl", type=Path, default=None, help="records file (appended to)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where speed.json and speed.md go")
    parser.add_argument("--budget-s", type=float, default=540, help="wall-clock budget; later cases are skipped")
    parser.add_argument("--in-process", action="store_true", help="run the groups in this process")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for --cpu")
    parser.add_argument("--profile-dir", type=Path, default=None, help="write kernel profiles of base cases here")
    parser.add_argument("--profile-rows", type=int, default=30, help="kernels listed per profile")
    parser.add_argument(
        "--train-variants", default="", help="large-train/base-train only: comma-separated variant names"
    )
    parser.add_argument("--command", default=None, help="with --report: the command that produced the records")
    parser.add_argument("--note", default=None, help="with --report: a line for the report (e.g. the commit measured)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)

    if args.cpu:
        from benchmarks.speed_cpu import run_cpu

        run_cpu(args.out, threads=args.threads, command=command)
        speed_report.write(args.out)
        return
    groups = [g for g in args.groups.split(",") if g]
    unknown = set(groups) - set(GROUPS) - set(EXTRA_GROUPS)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; choose from {GROUPS + tuple(EXTRA_GROUPS)}")
    if args.smoke:
        args.out = args.out if args.out != RESULTS else Path(tempfile.mkdtemp(prefix="speed-smoke-"))
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.jsonl or args.out / "speed.jsonl"
    if args.report:
        if not jsonl.exists():
            parser.error(f"--report rebuilds the tables from a records file, and {jsonl} does not exist; pass --jsonl")
        speed_report.build(jsonl, args.out, args.command or command, note=args.note)
        return
    plan = make_plan(args.smoke)
    if plan.device == "cuda" and not torch.cuda.is_available():
        parser.error("the GPU benchmark needs CUDA; use --smoke or --cpu on this machine")
    deadline = time.time() + args.budget_s
    if args.in_process:  # a worker of the driver below: records only, the driver writes the report
        variants = tuple(v for v in args.train_variants.split(",") if v)
        run_groups_here(groups, plan, jsonl, deadline, args.profile_dir, profile_rows=args.profile_rows,
                        train_variants=variants)  # fmt: skip
        return
    else:
        # One process per group: a device-side failure in one cannot take the others with it.
        for group in groups:
            remaining = deadline - time.time()
            if remaining < 20:
                log.warning("no time left for group %s", group)
                continue
            cmd = [sys.executable, __file__, "--in-process", "--groups", group, "--jsonl", str(jsonl),
                   "--budget-s", str(remaining)]  # fmt: skip
            if args.smoke:
                cmd.append("--smoke")
            if args.profile_dir:
                cmd += ["--profile-dir", str(args.profile_dir), "--profile-rows", str(args.profile_rows)]
            if args.train_variants:
                cmd += ["--train-variants", args.train_variants]
            rc = subprocess.call(cmd)
            if rc:
                log.warning("group %s exited with %d", group, rc)
    speed_report.build(jsonl, args.out, command)
    log.info("results in %s", args.out)


if __name__ == "__main__":
    main()

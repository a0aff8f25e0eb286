"""Training settings: one dataclass whose fields are the CLI flags one to one (``--max-steps``).

Runtime choices of how to train live here; the model's architecture stays in its config.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .optim import OPTIM_DTYPES
from .prefetch import PREFETCH_MODES

DTYPES = ("auto", "bf16", "fp32")
# torch.compile granularity: each decoder block (torchtitan's way, works with everything), the whole
# model with its losses, or the whole model replayed as CUDA graphs (needs static shapes: unpacked rows
# or the flex attention backend).
# "model-step-graph" compiles the whole model and records each training step (forward, backward, clipping,
# AdamW) as one CUDA graph: no host work between the pieces (one GPU, one process, a fused AdamW).
COMPILE_MODES = ("blocks", "model", "model-cudagraphs", "model-step-graph")
WHOLE_MODEL_COMPILES = ("model", "model-cudagraphs", "model-step-graph")  # one graph of the whole forward


DEFAULT_PRESET = "tiny"  # the model a run builds when given neither config nor init_from


@dataclass
class TrainConfig:
    """Every training setting; each field is one CLI flag (``--max-steps`` for ``max_steps``)."""

    config: str | None = DEFAULT_PRESET  # preset name or config.json path (None with init_from)
    init_from: str | None = None  # checkpoint directory to start from (fine-tuning)
    data: list[str] = field(default_factory=lambda: ["synthetic"])  # "synthetic" and/or paths
    data_weights: list[float] | None = None  # mixture weight per data source
    eval_data: list[str] | None = None  # held-out data (default: the training specs, other windows/seed)
    output_dir: str | None = "runs/pretrain"
    max_steps: int = 1000
    batch_size: int = 8  # rows per micro-batch per rank
    grad_accum: int = 1
    max_length: int = 512
    min_length: int = 17  # shortest window kept (points)
    pack: bool = True
    quality_filter: bool = True  # drop mostly-zero/constant stretches of file data (off for intermittent demand)
    data_prefetch: str = "auto"  # draw the next batches in the background: off, thread, process (auto: on GPU)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    dtype: str = "auto"  # "auto" = bf16 autocast on GPU, fp32 on CPU
    optim_dtype: str = "fp32"  # "bf16": bf16 weights + AdamW states, stochastic rounding (see optim.py)
    fused: bool | None = None  # fused AdamW kernel (None = on GPU)
    attn_backend: str = "sdpa"
    moe_dispatch: str = "auto"
    activation_checkpointing: bool = False
    compile: bool | str = False  # False, True (= "blocks") or one of COMPILE_MODES
    fsdp: bool | str = "auto"  # True/False or "auto" (FSDP2 for >= 1B parameters on several ranks)
    device: str | None = None  # None = this rank's GPU if any, else CPU
    save_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2
    save_dtype: str = "fp32"  # dtype of the final model.safetensors
    eval_every: int = 0  # 0 = never
    eval_batches: int = 4  # in all, split over the processes: the same batches on any number of them
    seed: int = 0
    log_every: int = 10
    progress: bool = True
    resume: bool = False
    time_limit: float = 0.0  # seconds; stop (with a checkpoint) when exceeded, 0 = none

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # numpy values (a grid search's np.arange) as plain ones, for JSON
            setattr(self, f.name, _plain(getattr(self, f.name)))
        if isinstance(self.output_dir, str) and not self.output_dir.strip():
            # "" is "no output folder", as None: Path("") is the working directory, where the run wrote its
            # checkpoints and train_config.json while the summary said nothing was saved.
            self.output_dir = None
        for name in ("output_dir", "init_from"):
            # "~" as every path read is (--output-dir=~/run, which the shell leaves alone, wrote ./~/run); a hub
            # id never starts with it.
            if isinstance(getattr(self, name), (str, os.PathLike)):
                setattr(self, name, os.path.expanduser(os.fspath(getattr(self, name))))
        if self.init_from is not None and self.config is not None:
            # init_from trains the checkpoint's own architecture: another config was ignored without a word, and
            # train_config.json recorded it (or the default preset) as the model trained.
            if self.config != DEFAULT_PRESET:
                raise ValueError(
                    f"TrainConfig: config {self.config!r} and init_from {self.init_from!r} both choose the model; "
                    "init_from trains the checkpoint's own architecture, so give one of them"
                )
            self.config = None
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        try:
            self.betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise ValueError(f"TrainConfig: betas must be two numbers, got {self.betas!r}") from None
        if isinstance(self.compile, str) and self.compile.lower() in ("true", "on", "false", "off", "none"):
            self.compile = self.compile.lower() in ("true", "on")
        if self.compile is True:
            self.compile = "blocks"
        if isinstance(self.fsdp, str) and self.fsdp.lower() in ("true", "on", "1", "yes", "false", "off", "0", "no"):
            self.fsdp = self.fsdp.lower() in ("true", "on", "1", "yes")
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "min_length", "log_every", "eval_batches"):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive integer, got {value!r}",
            )
        for name in ("save_every", "eval_every", "warmup_steps", "seed", "keep_checkpoints"):
            value = getattr(self, name)
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"{name} must be an integer >= 0, got {value!r}",
            )
        for f in dataclasses.fields(self):  # numbers first: a string would fail the checks below with a bare TypeError
            value = getattr(self, f.name)
            if isinstance(f.default, float):
                need(
                    isinstance(value, (int, float)) and not isinstance(value, bool),
                    f"{f.name} must be a number, got {value!r}",
                )
        need(self.config is not None or self.init_from is not None, "give a model: config or init_from")
        need(self.min_length <= self.max_length + 1, f"min_length ({self.min_length}) exceeds max_length + 1")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be positive, got {self.lr}")
        # AdamW holds the rate as a float32 (3e38 overflowed inside it with a raw RuntimeError).
        need(self.lr < 1e30, f"lr must be below 1e30, got {self.lr}")
        need(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(0 <= self.weight_decay < math.inf, f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two values in [0, 1), got {self.betas}",
        )
        need(math.isfinite(self.eps) and self.eps > 0, f"eps must be positive, got {self.eps}")  # 0: 0/0 updates
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")
        need(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        need(self.optim_dtype in OPTIM_DTYPES, f"optim_dtype must be one of {OPTIM_DTYPES}, got {self.optim_dtype!r}")
        need(self.save_dtype in ("fp32", "bf16"), f"save_dtype must be 'fp32' or 'bf16', got {self.save_dtype!r}")
        need(self.fsdp in (True, False, "auto"), f"fsdp must be true, false or 'auto', got {self.fsdp!r}")
        need(
            self.compile is False or self.compile in COMPILE_MODES,
            f"compile must be true, false or one of {COMPILE_MODES}, got {self.compile!r}",
        )
        whole_model = self.compile in ("model", "model-cudagraphs", "model-step-graph")
        need(
            not (whole_model and self.fsdp is True),
            f"compile={self.compile!r} compiles the whole model; with FSDP2 use compile='blocks'",
        )
        graphs = self.compile in ("model-cudagraphs", "model-step-graph")
        need(
            not (graphs and self.pack and self.attn_backend != "flex"),
            f"compile={self.compile!r} needs static shapes: packed rows need --attn-backend flex (or use --no-pack)",
        )
        need(
            not (self.compile == "model-step-graph" and self.fused is False),
            "compile='model-step-graph' records the update too: it needs a fused AdamW (torch's for --optim-dtype "
            "fp32, the Triton one for bf16); --fused must not be false",
        )
        need(
            not (self.compile == "model-step-graph" and self.dtype == "fp32"),
            "compile='model-step-graph' needs bf16 compute (--dtype auto or bf16): in fp32 the experts run one "
            "by one with data-dependent shapes, which a CUDA graph cannot record",
        )
        need(
            self.data_prefetch in PREFETCH_MODES,
            f"data_prefetch must be one of {PREFETCH_MODES}, got {self.data_prefetch!r}",
        )
        need(self.time_limit >= 0, f"time_limit must be >= 0 seconds, got {self.time_limit}")
        need(
            bool(self.data) and all(isinstance(d, str) and d for d in self.data),
            f"data must list at least one spec ('synthetic' or a path), got {self.data!r}",
        )
        if self.data_weights is not None:
            # inf or nan would pass "> 0" checks yet turn the mixture probabilities into NaN when normalised.
            need(
                all(math.isfinite(w) and w > 0 for w in self.data_weights),
                f"data_weights must be finite positive numbers, got {self.data_weights}",
            )
        # Checked here, not when the device is first used: torch's own error for "tpu" is a long traceback.
        need(
            self.device is None or re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)) is not None,
            f"device must be cpu, cuda, cuda:N or mps (or unset for this process's GPU if any), got {self.device!r}",
        )
        need(not (self.resume and self.output_dir is None), "resume needs an output_dir holding checkpoints")
        need(not (self.save_every and self.output_dir is None), "save_every needs an output_dir")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _plain(value):
    """numpy scalars, arrays and their lists as Python numbers and lists (np.bool_ as bool); paths as strings
    (train_config.json and the checkpoints store the settings as JSON)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value

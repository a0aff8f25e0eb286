"""The training loop: a plain loop over optimizer steps, no framework (nanoGPT, torchtitan).

One optimizer step takes ``grad_accum`` micro-batches of ``batch_size`` rows on each of the
``world_size`` ranks. The data are cut into ``world_size * grad_accum`` disjoint shards and micro-batch
``a`` of rank ``r`` always comes from shard ``r * grad_accum + a``, so 2 ranks × 1 micro-batch see
exactly the rows that 1 rank × 2 micro-batches sees. The loss of every micro-batch is divided by the
global number of valid loss points of the step (all micro-batches, all ranks), which makes the summed
gradient equal to that of one big batch whatever the split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import multiprocessing
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import checkpoint_files, count_non_finite
from ..config import TimeMoEConfig, resolve_config
from ..loading import shares_cached_weights
from ..model.modeling import TimeMoEForPrediction, count_loss_points
from . import state as ckpt
from .config import WHOLE_MODEL_COMPILES, TrainConfig
from .metrics import MetricsWriter, Throughput
from .optim import build_optimizer, build_scheduler
from .parallel import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    distributed_context,
    gradient_sync,
    parallelize,
    resolve_fsdp,
)
from .prefetch import BatchPrefetcher, start_prefetcher
from .signals import StopRequest
from .step_graph import GraphedStep, check_capturable, float_learning_rates, use_tensor_lr

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003  # synthetic eval series come from another seed: never seen in training


# Data -----------------------------------------------------------------------------------------
def open_data(specs: list[str], seed: int) -> list:
    """One SeriesSource per spec (comma-separated specs split further).

    A synthetic spec without a seed of its own (``synthetic``, ``synthetic#max_length=513``) gets ``seed``; one
    with its own (``synthetic:3``, ``synthetic#seed=3``) keeps it.
    """
    from ..data import SyntheticSource, open_sources

    sources = []
    for spec in specs:
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            opened = open_sources(part)
            if isinstance(opened[0], SyntheticSource):
                own = _names_a_seed(part)
                opened = [s if own else s.with_seed(seed) for s in opened]
            sources.extend(opened)
    return sources


def held_out_view(sources: list) -> list:
    """The evaluation sources of a run without ``--eval-data``: the training sources themselves, their synthetic ones
    moved to other seeds (series never trained on). Opening the specs again parsed every file a second time, which
    doubled the start-up time and the memory the data takes."""
    from ..data import SyntheticSource

    return [s.with_seed(s.seed + EVAL_SEED_OFFSET) if isinstance(s, SyntheticSource) else s for s in sources]


def _names_a_seed(part: str) -> bool:
    base, _, fragment = part.partition("#")
    return ":" in base or any(item.partition("=")[0].strip() == "seed" for item in fragment.split("&"))


def make_stream(sources, cfg: TrainConfig, shard: int, num_shards: int, seed: int, weights=None):
    """The packed-batch stream of one data shard."""
    from ..data import PackedBatchStream, WindowSampler

    sampler = WindowSampler(
        sources,
        weights=weights,
        max_length=cfg.max_length,
        min_length=cfg.min_length,
        seed=seed,
        rank=shard,
        world_size=num_shards,
        quality_filter=cfg.quality_filter,
    )
    return PackedBatchStream(sampler, batch_size=cfg.batch_size, max_length=cfg.max_length, pack=cfg.pack)


# Trainer --------------------------------------------------------------------------------------
class Trainer:
    """Owns the model, optimizer, scheduler and data streams of one rank; ``run()`` trains.

    ``streams``: this rank's ``grad_accum`` training streams (anything with ``next_batch()`` and
    ``state_dict()``); ``eval_stream``: a callable returning a fresh evaluation stream (or None).
    """

    def __init__(self, cfg: TrainConfig, ctx: DistContext, model: TimeMoEForPrediction, streams, eval_stream=None):
        if len(streams) != cfg.grad_accum:
            raise ValueError(f"expected {cfg.grad_accum} training streams (one per micro-batch), got {len(streams)}")
        require_univariate(model.config, "the model")
        if shares_cached_weights(model):  # an estimator's model_: other estimators read the same tensors
            raise ValueError("the model's weights are the checkpoint cache's; train loading.private_copy(model)")
        self.cfg, self.ctx, self.model, self.streams, self.eval_stream = cfg, ctx, model, streams, eval_stream
        # Anything with a ``received`` attribute (signals.StopRequest): once set, the run saves and stops as at the
        # time limit. ``train`` sets it; fine-tuning inside an estimator leaves Ctrl-C its usual meaning.
        self.stop_request = None
        on_gpu = ctx.device.type == "cuda"
        bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and on_gpu)
        if bf16 and not on_gpu:
            log.info("dtype bf16 applies to GPUs only; training in fp32 on %s", ctx.device)
            bf16 = False
        if cfg.optim_dtype == "bf16":
            model.to(torch.bfloat16)
        self.fsdp = resolve_fsdp(cfg.fsdp, ctx, model.num_parameters())
        self.train_model = parallelize(
            model,
            ctx,
            activation_checkpointing=cfg.activation_checkpointing,
            compile=cfg.compile,
            fsdp=self.fsdp,
            param_dtype=torch.bfloat16 if bf16 else None,
        )
        # FSDP2 computes in bf16 through its mixed-precision policy; everything else uses autocast.
        self.autocast = bf16 and not self.fsdp and cfg.optim_dtype != "bf16"
        self.params = [p for p in self.train_model.parameters() if p.requires_grad]
        # The whole step as one CUDA graph (``step_graph.py``): one process on a GPU, a fused AdamW with its state
        # and learning rate on the device (torch's for fp32 states, the Triton update for bf16).
        self.step_graph = cfg.compile == "model-step-graph"
        if self.step_graph and (not on_gpu or ctx.world_size > 1):
            raise ValueError(
                "--compile model-step-graph records the whole step on one GPU: it needs a CUDA device and one "
                f"process (this run: {ctx.device}, {ctx.world_size} processes); use "
                + ("--compile model-cudagraphs" if on_gpu else "--compile model (CUDA graphs need a GPU too)")
            )
        self.optimizer = build_optimizer(
            self.train_model,
            cfg.lr,
            cfg.weight_decay,
            cfg.betas,
            cfg.eps,
            cfg.optim_dtype,
            cfg.fused,
            cfg.seed,
            capturable=self.step_graph,
        )
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self._graphed: GraphedStep | None = None  # recorded on the first steps (step_graph only)
        self._launched: tuple | None = None  # (results, tokens) of a step enqueued ahead (``launch_next``)
        if self.step_graph:
            check_capturable(self.optimizer)
            use_tensor_lr(self.optimizer)  # after the scheduler: its base rates stay floats, its fills never sync
        # A fused AdamW (torch's, or the bf16 Triton update when every parameter takes it) skips a non-finite step
        # on the device (``found_inf``, what AMP's GradScaler uses), so the update can be launched before the
        # step's host sync: the GPU goes from backward straight into it instead of idling while the host launches
        # it after the sync (4.6 ms of host time per base step in a profile, benchmarks/results/trainer.md).
        # Other optimizers (the chunked bf16 path, foreach, FSDP2's DTensors) step after the sync.
        self.update_before_sync = bool(self.optimizer.defaults.get("fused")) and not self.fsdp
        self.step = 0
        self.history: list[dict[str, Any]] = []
        # The steps since the last metrics line, which the next line averages; saved with a checkpoint, so that a
        # resumed run's first line covers the same steps as an uninterrupted run's.
        self.unlogged: list[dict[str, Any]] = []
        self.eval_due = False  # a stop skipped the evaluation of self.step: the resumed run runs it first
        self.stopped_by: str | None = None  # why run() stopped before its last step: a time limit or a signal
        self._pending: tuple | None = None  # the next step's prepared batches, made while the GPU works
        self._pending_states: list | None = None  # stream states from before that fetch
        self._prefetcher: BatchPrefetcher | None = None  # started by the first fetch
        self.data_prefetch = resolve_prefetch(cfg.data_prefetch, ctx.device)

    # One optimizer step -------------------------------------------------------------------------
    def _fetch(self) -> tuple[list[dict], list[dict[str, torch.Tensor]]]:
        """The next step's host batches (one per stream) and the streams' states from before them."""
        if self.data_prefetch != "off":
            if self._prefetcher is None:  # after any resume: it draws from the streams' current state
                self._prefetcher = start_prefetcher(self.data_prefetch, self.streams)
            try:
                return self._prefetcher.get()
            except BaseException:
                self.close()
                raise
        states = [s.state_dict() for s in self.streams]
        return states, [stream.next_batch() for stream in self.streams]

    def _next_states(self) -> list[dict]:
        """Stream states before the first batch not yet trained on (what a checkpoint records)."""
        if self._pending_states is not None:
            return self._pending_states
        if self._prefetcher is not None:
            return self._prefetcher.next_states()
        return [s.state_dict() for s in self.streams]

    def close(self) -> None:
        """Stop the background data worker, if any (``run`` does this when it ends)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def _prepare(self, batches: list[dict[str, torch.Tensor]]) -> tuple[list[dict], torch.Tensor, int]:
        """Host batches -> device batches, their loss-point counts per head (on the device) and tokens.

        Done for the next step while the GPU still runs this one, so that after the step's host sync
        the GPU does not wait for copies and counting kernels."""
        tokens = sum(int(b["attention_mask"].sum()) for b in batches) if "attention_mask" in batches[0] else 0
        on_gpu = self.ctx.device.type == "cuda"
        batches = [self._to_device({k: v.pin_memory() if on_gpu else v for k, v in b.items()}) for b in batches]
        horizons = self.model.config.horizon_lengths
        counts = torch.stack(
            [
                torch.stack(
                    count_loss_points(
                        horizons, b["labels"], b.get("loss_mask"), b.get("seq_ids"), b.get("attention_mask")
                    )
                )
                for b in batches
            ]
        ).sum(0)
        return batches, counts, tokens

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}
        if self.cfg.optim_dtype == "bf16":  # bf16 weights: feed bf16 values (labels stay fp32 for the loss)
            batch["inputs"] = batch["inputs"].to(torch.bfloat16)
        return batch

    def _begin_graph_iteration(self) -> None:
        """Under CUDA graphs, tell the graph trees a new forward begins (earlier outputs may be overwritten)."""
        if self.cfg.compile == "model-cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()

    def _autocast(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16)

    def _device_step(self, batches: list[dict[str, torch.Tensor]], counts: torch.Tensor, flags=None) -> torch.Tensor:
        """Forward/backward over the micro-batches, clip and (with a fused AdamW) the update, on the device.

        Returns [AR loss summed over micro-batches, mean aux loss, *flags, gradient norm], summed over ranks.
        No host sync: the whole of it can be recorded as a CUDA graph (``--compile model-step-graph``)."""
        cfg, ctx, config = self.cfg, self.ctx, self.model.config
        normalizers = list(all_reduce_sum(counts, ctx).unbind())  # one global count per head
        ar_sum = torch.zeros((), device=ctx.device)
        aux_sum = torch.zeros((), device=ctx.device)
        w, a = ctx.world_size, cfg.grad_accum
        for k, batch in enumerate(batches):
            self._begin_graph_iteration()
            with gradient_sync(self.train_model, enabled=k == a - 1), self._autocast():
                out = self.train_model(**batch, loss_normalizers=normalizers)
            # DDP/FSDP average gradients over the w ranks. Scaled so, the step's gradient is that of the
            # global sum of the point-normalised AR loss plus the aux loss averaged over all a*w micro-batches.
            loss = out.ar_loss * w
            if out.aux_loss is not None:
                loss = loss + config.router_aux_loss_factor * out.aux_loss / a
                aux_sum += out.aux_loss.detach().float()
            loss.backward()
            ar_sum += out.ar_loss.detach().float()
        grad_norm = self._clip_gradients()
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        stats = torch.stack([ar_sum, aux_sum / (a * w)]).double()
        stats = all_reduce_sum(stats if flags is None else torch.cat([stats, flags]), ctx)
        stats = torch.cat([stats, grad_norm.double().reshape(1)])  # the norm is global already
        if self.update_before_sync:  # skipped by the kernel itself if the loss or the norm is not finite
            # Every entry counts (the token and vote flags are always finite); a whole-tensor check, because
            # indexing with a list copies the index from the host, which a CUDA graph cannot record.
            self.optimizer.found_inf = (~torch.isfinite(stats).all()).float()
            self.optimizer.step()
        if self.step_graph:
            self.optimizer.zero_grad(set_to_none=True)  # recorded: the next replay's backward rewrites them
        return stats

    def _refuse_while_launched(self, what: str) -> None:
        if self._launched is not None:
            raise RuntimeError(
                f"cannot {what} while the next training step is already enqueued (train_step(launch_next=True)); "
                "call train_step() once more first"
            )

    def _current_lr(self) -> float:
        """This step's learning rate, from the host: under the step graph the groups hold device tensors, whose
        reading would wait for everything enqueued (a step launched ahead included)."""
        if self.step_graph:
            return self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        return float(self.scheduler.get_last_lr()[0])

    def _clip_gradients(self) -> torch.Tensor:
        """The global gradient norm, with the gradients scaled to a norm of at most ``grad_clip`` (if > 0).

        When the fused AdamW updates on the device (``update_before_sync``), the scale goes to its kernel as
        ``grad_scale``, by which it divides each gradient as it reads it, instead of a separate pass that reads and
        writes every gradient (``clip_grad_norm_`` multiplies even by 1): 3.6 GB of fp32 gradients per step for the
        large preset. Same rule as ``clip_grad_norm_``: divide by max(1, (norm + 1e-6) / grad_clip)."""
        cfg = self.cfg
        if not self.update_before_sync:
            return torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        norm = _total_norm([p.grad for p in self.params if p.grad is not None])
        if cfg.grad_clip > 0:
            self.optimizer.grad_scale = ((norm.float() + 1e-6) / cfg.grad_clip).clamp(min=1.0)
        return norm

    def train_step(self, prefetch: bool = True, time_up: bool = False, launch_next: bool = False) -> dict[str, Any]:
        """Forward/backward over the micro-batches, clip, then step (or skip a non-finite step).

        ``launch_next`` (``--compile model-step-graph`` once recorded; needs ``prefetch``): enqueue the next step's
        graph before reading this step's results. The host's bookkeeping and the launch of the graph (3.5 ms of host
        time per large step in a profile) then overlap the GPU's work instead of leaving it idle between steps. The
        next call must be the next training step (``run`` asks for it only when no evaluation, checkpoint or stop
        comes between); it returns that step's record."""
        ctx, config = self.ctx, self.model.config
        self.model.train()
        if self._launched is not None:  # enqueued by the previous call
            stats, tokens = self._launched
            self._launched = None
        else:
            batches, counts, tokens = self._pending if self._pending is not None else self._prepare(self._fetch()[1])
            self._pending = self._pending_states = None
            if self.step_graph:  # one process: the token count and the time-up vote stay on the host
                if self._graphed is None:
                    self._graphed = GraphedStep(lambda inputs: self._device_step(*inputs))
                stats = self._graphed((batches, counts))  # the graph's own tensor, read before the next replay
            else:
                flags = torch.tensor([tokens, float(time_up)], device=ctx.device, dtype=torch.float64)
                stats = self._device_step(batches, counts, flags)
        if prefetch:  # host work for the next step overlaps the GPU finishing this one
            self._pending_states, host_batches = self._fetch()
            self._pending = self._prepare(host_batches)
        lr = self._current_lr()
        launching = launch_next and self._pending is not None and self._graphed is not None and self._graphed.recorded
        if launching:
            # This step's results go to pinned host memory before the next replay overwrites them; the scheduler
            # writes the next step's rate on the device before that step runs.
            pinned = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
            pinned.copy_(stats, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            self.scheduler.step()
            batches, counts, next_tokens = self._pending
            self._pending = self._pending_states = None  # the next batch is in flight: a checkpoint skips it
            self._launched = (self._graphed((batches, counts)), next_tokens)
            copied.synchronize()  # this step only, not the one just enqueued
            stats = pinned
        if self.step_graph:
            ar_loss, aux_loss, grad_norm = stats.tolist()  # the one host sync of the step
            time_up_votes = float(time_up)
        else:
            ar_loss, aux_loss, tokens, time_up_votes, grad_norm = stats.tolist()  # the one host sync of the step
        finite = math.isfinite(ar_loss) and math.isfinite(aux_loss) and math.isfinite(grad_norm)
        if not finite:
            log.warning(
                "step %d: non-finite loss or gradient (loss=%s, grad_norm=%s); optimizer step skipped",
                self.step + 1,
                ar_loss,
                grad_norm,
            )
        elif not self.update_before_sync:
            self.optimizer.step()
        if not self.step_graph:
            self.optimizer.zero_grad(set_to_none=True)
        if not launching:
            if finite:
                self.scheduler.step()
            else:
                with warnings.catch_warnings():
                    # A skipped first step calls the schedule without an optimizer step; torch's warning that this
                    # skips the schedule's first rate is wrong here (the schedule follows the step count).
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                    self.scheduler.step()
        self.step += 1
        loss = ar_loss + (config.router_aux_loss_factor * aux_loss if config.apply_aux_loss else 0.0)
        record = dict(
            step=self.step,
            loss=loss,
            ar_loss=ar_loss,
            aux_loss=aux_loss,
            lr=lr,
            grad_norm=grad_norm,
            tokens=int(tokens),
            skipped=not finite,
            time_up=time_up_votes > 0,
        )
        self.history.append(record)
        return record

    def _eval_forward(self, batch: dict[str, torch.Tensor]):
        """The forward of an evaluation batch. A whole-model compile ("model", "model-cudagraphs",
        "model-step-graph") is left out: the no-grad graph it would compile is a second compilation for a few
        batches, and with FlexAttention in bf16 that graph's attention kernel hit an illegal memory access on an
        H100 (torch 2.11; benchmarks/results/raw/session7/call1_diag_flex_eval.log) where the training graph and
        eager code run fine. ``forward`` is the module's own code, not the graph ``Module.compile`` installed."""
        if self.cfg.compile in WHOLE_MODEL_COMPILES:
            return self.model.forward(**batch)
        self._begin_graph_iteration()
        return self.train_model(**batch)

    @torch.no_grad()
    def evaluate(self, should_stop=None) -> float | None:
        """Mean forecast (AR) loss over the ``eval_batches`` held-out batches.

        ``eval_stream()`` gives every rank the same batches; rank ``r`` of ``W`` evaluates batches ``r, r + W, ...``.
        The figure is then the same on any number of processes: each rank drew from its own data shard before, so
        a 1-GPU and an 8-GPU run of one recipe reported eval losses over different windows.

        ``should_stop``: a callable asked before each round of batches (one per process); once it is true on any
        process, every process abandons the evaluation and None is returned. A stop signal that came during a
        long evaluation waited for all of it (26 s for 1,500 batches of ``tiny`` on a CPU), past the grace period
        after which torchrun or Slurm kill, so the checkpoint the stop was for was never written."""
        if self.eval_stream is None:
            raise ValueError("no evaluation data: set eval_every=0 or pass eval data")
        self._refuse_while_launched("evaluate")
        self.model.eval()
        stream = self.eval_stream()  # fresh each time: the same windows at every evaluation
        world, rank, count = self.ctx.world_size, self.ctx.rank, self.cfg.eval_batches
        total = torch.zeros((), device=self.ctx.device)
        first = None
        for k in range(count):
            if should_stop is not None and k % world == 0 and self._on_any_process(should_stop()):
                log.warning("evaluation abandoned after %d of %d batches: the run is stopping", k, count)
                self.model.train()
                return None
            batch = stream.next_batch()
            first = batch if first is None else first
            if k % world == rank:
                total += self._eval_loss(batch)
        # Every rank runs as many forwards (FSDP gathers the weights inside them, DDP may sync buffers): one without
        # a batch of its own in the last round evaluates the first batch again and leaves it out.
        for _ in range(-(-count // world) - len(range(rank, count, world))):
            self._eval_loss(first)
        self.model.train()
        return all_reduce_sum(total, self.ctx).item() / count

    def _on_any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (every process must call this at the same point)."""
        if not self.ctx.distributed:
            return bool(flag)
        return all_reduce_sum(torch.tensor(float(flag), device=self.ctx.device), self.ctx).item() > 0

    def _eval_loss(self, host_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._autocast():
            return self._eval_forward(self._to_device(host_batch)).ar_loss.float()

    # State ---------------------------------------------------------------------------------------
    def _full_states(self) -> tuple[dict, dict]:
        """Unsharded model and optimizer state dicts (on rank 0; collectives on every rank)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=opts)
        with float_learning_rates(self.optimizer):  # checkpoints hold plain float learning rates
            optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        return model_state, optim_state

    def _refuse_non_finite(self, model_state: dict, what: str) -> None:
        """A run that diverged (weights NaN/inf) must not save: a checkpoint of it replaced the good ones under
        ``keep_checkpoints`` and the run ended "trained" with exit code 0 (``--weight-decay inf``). Rank 0 holds
        the full state; every rank raises."""
        bad = first_non_finite(model_state.items()) if self.ctx.is_main else None
        bad = all_gather_objects(bad, self.ctx)[0]
        # Finite but huge weights (a learning rate far too large) give non-finite gradients: every step from
        # there is skipped, and saving would rotate the good checkpoints out for weights that cannot train. The
        # skipped flags come from the all-reduced gradient norm, the same on every rank.
        if bad is not None or ends_on_skipped_steps(self.history):
            latest = ckpt.latest_checkpoint(self.cfg.output_dir) if self.cfg.output_dir else None
            why = (
                f"weights are NaN/inf at step {self.step} (first: {bad})"
                if bad is not None
                else f"steps {self.step - 1} and {self.step} had non-finite gradients and were skipped"
            )
            raise ValueError(
                f"training diverged: {why}, so the {what} is not saved; lower the learning rate or weight decay "
                "and start again" + (f", or --resume from {latest.name}" if latest is not None else "")
            )

    def save(self) -> Path | None:
        """Checkpoint the current step (every rank must call this; rank 0 writes)."""
        self._refuse_while_launched("save")
        model_state, optim_state = self._full_states()
        self._refuse_non_finite(model_state, "checkpoint")
        streams = self._next_states()
        data_states = [s for rank_states in all_gather_objects(streams, self.ctx) for s in rank_states]
        rng = all_gather_objects(ckpt.capture_rng(), self.ctx)
        path = None
        if self.ctx.is_main:
            trainer_state = {
                "scheduler": _plain_scheduler_state(self.scheduler),
                "data": data_states,
                "rng": rng,
                "num_shards": self.ctx.world_size * self.cfg.grad_accum,
                "train_config": json.dumps(self.cfg.to_dict()),
                "unlogged": [{k: _plain(r[k]) for k in SUMMARISED} for r in self.unlogged],
                "eval_due": self.eval_due,
            }
            path = ckpt.save_checkpoint(
                self.cfg.output_dir,
                self.step,
                self.model.config,
                model_state,
                optim_state,
                trainer_state,
                self.cfg.keep_checkpoints,
            )
        barrier(self.ctx)
        return path

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (same world_size × grad_accum)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        # Under torchrun only rank 0 reads the (possibly many-GB) weights and broadcasts them.
        broadcast = self.ctx.distributed
        saved = ckpt.load_checkpoint(path, weights=self.ctx.is_main or not broadcast)
        trainer_state = saved["trainer"]
        num_shards = self.ctx.world_size * self.cfg.grad_accum
        if trainer_state["num_shards"] != num_shards:
            raise ValueError(
                f"{path} was written by a run with world_size × grad_accum = {trainer_state['num_shards']} data "
                f"shards; this run has {num_shards}. Resume with the same number of processes × --grad-accum."
            )
        check_resumable(path, saved["config"], trainer_state, self.model.config, self.cfg)
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast)
        dtype = next(self.model.parameters()).dtype
        set_model_state_dict(self.model, {k: v.to(dtype) for k, v in saved["model"].items()}, options=opts)
        with float_learning_rates(self.optimizer):
            # This run's optimizer settings, before the checkpoint's param_groups replace them.
            fresh = [{k: g[k] for k in RESUMED_GROUP_SETTINGS if k in g} for g in self.optimizer.param_groups]
            set_optimizer_state_dict(self.model, self.optimizer, saved["optimizer"], options=opts)
            # The checkpoint gives the moments and the step count; the peak rate, decay, betas, eps and schedule
            # come from this run's config (what train_config.json records), not the checkpoint's old settings.
            for group, settings in zip(self.optimizer.param_groups, fresh, strict=True):
                group.update(settings)
                group["lr"] = group["initial_lr"]  # the peak rate, scaled to the resumed step's by the schedule
            cfg = self.cfg
            step = int(trainer_state["scheduler"]["last_epoch"])
            self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio, step)
        self._graphed = None  # the optimizer's state tensors were replaced: record the step again
        self._launched = None
        first = self.ctx.rank * self.cfg.grad_accum
        self.close()  # a data worker drawing from the old positions must not run on
        for stream, state in zip(self.streams, trainer_state["data"][first : first + self.cfg.grad_accum]):
            stream.load_state_dict(state)
        rng = trainer_state["rng"]
        ckpt.restore_rng(rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0])
        self.step = int(trainer_state["step"])
        self.unlogged = list(trainer_state.get("unlogged", []))  # absent before session 32: the line covers fewer
        self.eval_due = bool(trainer_state.get("eval_due", False))  # absent before session 33
        self._pending = self._pending_states = None
        log.info("resumed from %s at step %d", path, self.step)

    def save_model(self, directory: str | Path) -> None:
        """The final loadable model directory (config.json + model.safetensors) at ``directory``."""
        model_state, _ = self._full_states() if self.ctx.distributed else (self.model.state_dict(), None)
        self._refuse_non_finite(model_state, "final model")
        if self.ctx.is_main:
            dtype = torch.bfloat16 if self.cfg.save_dtype == "bf16" else torch.float32
            ckpt.write_model(Path(directory), self.model.config, model_state, dtype=dtype)
        barrier(self.ctx)

    # Loop ----------------------------------------------------------------------------------------
    def _log_line(self, metrics, meter, evaluate: bool, stop_asked, record: dict | None = None) -> None:
        """One metrics line over the steps since the last one, with ``eval_loss`` when ``evaluate``. A stop asked
        during the evaluation marks ``record`` as the last step and leaves the line to the resumed run (with an
        output folder to resume from; without one the line is written without ``eval_loss``)."""
        ctx = self.ctx
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        out = _summarise(self.unlogged, meter.rate(), self.step)
        if record is None:  # the line a stop left to this resumed run: its steps ran before, at a rate not kept
            del out["tokens_per_s"]
        if evaluate:
            eval_loss = self.evaluate(should_stop=stop_asked)
            if eval_loss is None:  # a stop came during the evaluation: save and stop now
                if record is not None:
                    record["time_up"] = True
                if self.cfg.output_dir is not None and self.step < self.cfg.max_steps:  # a resume runs it
                    self.eval_due = True
                    return
            else:
                out["eval_loss"] = eval_loss
                if record is not None:
                    record["eval_loss"] = eval_loss
        if ctx.device.type == "cuda":
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
        metrics.log(out)
        self.unlogged = []
        self.eval_due = False

    def _stop_reason(self, limit_reached) -> str:
        signalled = getattr(self.stop_request, "received", None)
        if signalled is not None:
            return signalled
        return f"time limit of {self.cfg.time_limit:g} s" if limit_reached() else "another process's stop"

    def run(self, until: int | None = None) -> list[dict[str, Any]]:
        """Train from ``self.step`` to ``until`` (default ``max_steps``); return the per-step records."""
        cfg, ctx = self.cfg, self.ctx
        until = cfg.max_steps if until is None else min(until, cfg.max_steps)
        metrics = MetricsWriter(cfg.output_dir, ctx.is_main, cfg.progress, cfg.max_steps, self.step)
        meter, start = Throughput(), time.monotonic()

        def limit_reached() -> bool:
            return bool(cfg.time_limit) and time.monotonic() - start > cfg.time_limit

        def stop_asked() -> bool:
            return limit_reached() or getattr(self.stop_request, "received", None) is not None

        try:
            if self.eval_due and self.eval_stream is not None:  # the stop that saved the checkpoint skipped it
                self._log_line(metrics, meter, True, stop_asked)
                if self.eval_due:  # stopped again during it: the checkpoint it resumed from still holds all
                    self.stopped_by = self._stop_reason(limit_reached)
                    log.warning("%s at step %d during the evaluation: stopping", self.stopped_by, self.step)
                    return self.history
            while self.step < until:
                next_step = self.step + 1
                boundary = next_step >= until or (cfg.save_every and next_step % cfg.save_every == 0)
                time_up = stop_asked()
                evaluating = bool(cfg.eval_every) and next_step % cfg.eval_every == 0
                launch_next = self.step_graph and not (boundary or time_up or evaluating)  # nothing in between
                record = self.train_step(prefetch=not boundary, time_up=time_up, launch_next=launch_next)
                meter.add(record["tokens"])
                self.unlogged.append(record)
                metrics.advance()
                evaluated = cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == until)
                due = self.step % cfg.log_every == 0 or self.step == until or evaluated
                # A stop saves a checkpoint, which keeps the steps since the last line: the resumed run writes the
                # lines an uninterrupted one would. An evaluation due at the stop is not run now (the time the sender
                # of a signal waits before killing goes to the checkpoint): the resumed run runs it and writes its
                # line first. Without --output-dir nothing is kept, so a stop logs the steps since the last line.
                kept = record["time_up"] and cfg.output_dir is not None and self.step < cfg.max_steps
                if kept and evaluated and self.eval_stream is not None:
                    self.eval_due = True
                elif due or (record["time_up"] and not kept):
                    evaluate = evaluated and self.eval_stream is not None and not record["time_up"]
                    self._log_line(metrics, meter, evaluate, stop_asked, record)
                saving = cfg.output_dir is not None and (
                    (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.max_steps
                )
                if record["time_up"]:
                    # Every process stops at this step: the one that hit the limit or got the signal voted for all.
                    # Asked now, not before the step: a signal or the limit that reached this process during the
                    # step was reported as "another process's stop".
                    self.stopped_by = self._stop_reason(limit_reached)
                    log.warning(
                        "%s at step %d: %s",
                        self.stopped_by,
                        self.step,
                        "saving and stopping" if cfg.output_dir is not None else "stopping (no --output-dir: unsaved)",
                    )
                    saving = cfg.output_dir is not None
                if saving:
                    self.save()
                if record["time_up"]:
                    break
        finally:
            metrics.close()
            self.close()
        return self.history


def rank_streams(sources, cfg: TrainConfig, rank: int, world_size: int) -> list:
    """Rank ``rank``'s ``grad_accum`` training streams: micro-batch ``a`` draws from shard ``rank * grad_accum + a``
    of ``world_size * grad_accum`` (see the module docstring)."""
    num_shards = world_size * cfg.grad_accum
    shards = range(rank * cfg.grad_accum, (rank + 1) * cfg.grad_accum)
    return [make_stream(sources, cfg, s, num_shards, cfg.seed, cfg.data_weights) for s in shards]


# Optimizer group settings a resumed run takes from its own config rather than from the checkpoint.
RESUMED_GROUP_SETTINGS = ("lr", "initial_lr", "weight_decay", "betas", "eps")
# Settings a checkpoint fixes: its optimizer state has the layout of one optim_dtype, and its data and random
# streams go on from where the first run's seed put them.
FIXED_ON_RESUME = ("optim_dtype", "seed")


def architecture_differences(saved_config, model_config) -> list[str]:
    """The model fields (not the extra keys) in which two configs differ, each as "field saved vs ours"."""
    fields = {f.name for f in dataclasses.fields(saved_config)} - {"extra", "use_cache"}
    arch = {k: v for k, v in saved_config.to_dict().items() if k in fields}
    ours = {k: v for k, v in model_config.to_dict().items() if k in fields}
    return [f"{k} {arch[k]} vs {ours.get(k)}" for k in arch if arch[k] != ours.get(k)]


def check_resumable(path, saved_config, trainer_state: dict, model_config, cfg: TrainConfig) -> None:
    """Refuse (ValueError) a resume this run's settings cannot honour; log at INFO the settings that changed.

    Changed learning-rate, schedule and optimizer settings are honoured (the schedule is rebuilt at the
    checkpoint's step); a different model, optim_dtype or seed, or a --max-steps below the checkpoint's step,
    cannot be, and training on would record one thing in train_config.json and do another."""
    step = int(trainer_state["step"])
    # The model's own fields only: to_dict writes the extra keys at the top level too, and among them our
    # description, which names the base model as typed, so "base", "./base" and its absolute path were three
    # different models and a re-queued fine-tune could not resume.
    differ = architecture_differences(saved_config, model_config)
    if differ:
        raise ValueError(
            f"{path} holds a different model than this run builds ({', '.join(differ)}); resume with the --config "
            f"(or --model) of the run that wrote it, or start a new run from its weights with --init-from {path} "
            f"(timemoe finetune: --model {path})"
        )
    old = json.loads(trainer_state.get("train_config") or "{}")  # older checkpoints may lack it
    new = json.loads(json.dumps(cfg.to_dict()))  # through JSON, as the old one was: tuples become lists
    for name in FIXED_ON_RESUME:
        if name in old and old[name] != new[name]:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{path} was written with {flag} {old[name]}, this run has {flag} {new[name]}: a resumed run cannot "
                f"change it. Resume with {flag} {old[name]}, or start a new run from its weights with "
                f"--init-from {path} (timemoe finetune: --model {path})"
            )
    if step > cfg.max_steps:
        raise ValueError(
            f"{path} is at step {step}, past --max-steps {cfg.max_steps}; pass a --max-steps above {step} to train on"
        )
    changed = [f"{k} {old[k]} -> {new[k]}" for k in new if k in old and k != "resume" and old[k] != new[k]]
    if changed:
        log.info("resuming at step %d with changed settings: %s", step, "; ".join(changed))
    schedule = ("lr", "min_lr_ratio", "warmup_steps", "max_steps")
    if any(k in old and old[k] != new[k] for k in schedule):
        log.info("the learning-rate schedule follows the new settings from step %d on", step)


def _plain_scheduler_state(scheduler) -> dict:
    """The scheduler's state with its last rates as floats (they are device tensors under step_graph)."""
    state = scheduler.state_dict()
    if "_last_lr" in state:
        state["_last_lr"] = [float(v) for v in state["_last_lr"]]
    return state


# What a metrics line reads of each step's record (``_summarise``).
SUMMARISED = ("loss", "ar_loss", "aux_loss", "lr", "grad_norm", "skipped")


def _plain(value) -> float | bool:
    """A record's value as a Python number (a loss may still be a device tensor)."""
    return value if isinstance(value, bool) else float(value)


def _summarise(window: list[dict], tokens_per_s: float, step: int) -> dict[str, Any]:
    """One metrics line: losses averaged over the steps since the last line, the rest as of now."""
    last = window[-1]
    done = [r for r in window if not r["skipped"]] or window
    mean = {k: sum(r[k] for r in done) / len(done) for k in ("loss", "ar_loss", "aux_loss")}
    out = dict(step=step, **mean, lr=last["lr"], grad_norm=last["grad_norm"], tokens_per_s=tokens_per_s)
    skipped = sum(r["skipped"] for r in window)
    if skipped:
        out["skipped_steps"] = skipped
    return out


# Entry point ----------------------------------------------------------------------------------
def resolve_prefetch(mode: str, device: torch.device) -> str:
    """``auto``: a forked worker process on a GPU (a thread where fork is missing), since there the step would
    otherwise wait for the data: base pretraining on an H100 took 64.6 ms per step without prefetch, 54.6 with
    the thread and 46.9 with the process (benchmarks/results/trainer.md). None on the CPU, where drawing and
    training compete for the same cores."""
    if mode != "auto":
        return mode
    if device.type != "cuda":
        return "off"
    return "process" if "fork" in multiprocessing.get_all_start_methods() else "thread"


def require_univariate(config, where: str) -> None:
    """Training windows are univariate (one value per time step); a model reading several values per step would
    fail deep inside its first matrix product, so say so before anything is built or read."""
    if config.input_size != 1:
        raise ValueError(
            f"{where} has input_size {config.input_size}, but training feeds univariate series (one value per "
            "time step). Train with input_size 1: each column of a table (each row of an array) is read as a "
            "series of its own, so a multivariate data set trains channel by channel"
        )


def _check_eval_data(eval_stream, cfg: TrainConfig) -> None:
    """Draw one evaluation batch before training: unusable evaluation data failed at the first evaluation,
    which comes before that step's checkpoint, losing every step trained since the last one."""
    try:
        eval_stream().next_batch()
    except ValueError as err:
        source = f"--eval-data {cfg.eval_data}" if cfg.eval_data is not None else "the evaluation windows of --data"
        raise ValueError(f"{source}: {err}") from None


def _check_fused_dispatch(cfg: TrainConfig, model: TimeMoEForPrediction, device: torch.device) -> None:
    """``moe_dispatch="fused"`` where its kernels cannot run failed inside the first forward, with a traceback."""
    from ..model import fused_moe
    from ..model.layers import SILU_NAMES

    if cfg.moe_dispatch != "fused":
        return
    missing = [
        need
        for need, ok in (
            ("a CUDA device", device.type == "cuda"),
            ("triton", fused_moe.TRITON_AVAILABLE),
            ("bf16 compute (--dtype auto or bf16)", cfg.dtype != "fp32"),
            ("SiLU experts", model.config.hidden_act in SILU_NAMES),
            ("routed experts", not model.config.use_dense),
        )
        if not ok
    ]
    if missing:
        raise ValueError(
            f"--moe-dispatch fused needs {', '.join(missing)}; use auto (fused kernels where they can run) or grouped"
        )


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of ``grads``: ``torch.nn.utils.get_total_norm`` where torch has it (2.6 on), else the same
    norm of the per-tensor norms (the package declares torch >= 2.4)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    if not grads:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))


def describe_as_trained_from(config, init_from) -> None:
    """Our checkpoints describe themselves in ``extra["timemoe_forecaster"]`` (name, status, training, card), which
    a model trained further would carry on unchanged: a fine-tuned model called itself the embedded default,
    "pretrained" by its recipe. It now names what it was trained from; the rest no longer applies. A base without
    that entry (a ``timemoe pretrain`` run, an official checkpoint) is named by its path or hub id."""
    meta = config.extra.get("timemoe_forecaster")
    base = (meta.get("name") if isinstance(meta, dict) else None) or str(init_from)
    described = {"status": f"trained further from {base}", "trained_from": str(init_from)}
    config.extra = {**config.extra, "timemoe_forecaster": described}  # a new dict: the loaded one may be shared


def rank_seed(seed: int, rank: int) -> int:
    """Torch's seed for the training of rank ``rank``: its own stream, not seed + rank (run seed 1's rank 0
    would be run seed 0's rank 1)."""
    return int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1, np.uint64)[0] >> 1)


def build_model(cfg: TrainConfig, device: torch.device, resume_from: Path | None = None) -> TimeMoEForPrediction:
    """A fresh model (seeded init, built on the target device) or the ``init_from`` checkpoint in fp32; resuming
    a run trained from ``init_from`` (``resume_from``: its checkpoint), that checkpoint's architecture."""
    if cfg.init_from is not None and resume_from is not None:
        return _model_to_resume(cfg, device, Path(resume_from))
    if cfg.init_from is not None:
        model = TimeMoEForPrediction.from_pretrained(
            cfg.init_from,
            dtype=torch.float32,
            device=device,
            attn_backend=cfg.attn_backend,
            moe_dispatch=cfg.moe_dispatch,
        )
        # Weights holding NaN/inf are refused by the load itself (every step would be skipped, and the error
        # would blame the learning rate).
        require_univariate(model.config, f"the model {cfg.init_from}")
        describe_as_trained_from(model.config, cfg.init_from)
        return model
    config = resolve_config(cfg.config)
    require_univariate(config, f"the model config {cfg.config!r}")
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        return TimeMoEForPrediction(config, attn_backend=cfg.attn_backend, moe_dispatch=cfg.moe_dispatch)


def _model_to_resume(cfg: TrainConfig, device: torch.device, checkpoint: Path) -> TimeMoEForPrediction:
    """The model of a run trained from ``init_from``, built from its checkpoint's config, with fresh weights that
    the checkpoint replaces. The checkpoint holds every weight: a resume needed the base as well, and failed once
    it was gone (a purged scratch folder, a hub id offline), after reading gigabytes only to overwrite them. A base
    still on disk must be the model the run was trained from."""
    config = TimeMoEConfig.from_json_file(checkpoint / "config.json")
    config.code_source = checkpoint  # its saves copied the base's auto_map code files: later saves copy them on
    base = Path(cfg.init_from) / "config.json"
    if base.is_file():
        differ = architecture_differences(config, TimeMoEConfig.from_json_file(base))
        if differ:
            raise ValueError(
                f"{checkpoint} was trained from another model than {cfg.init_from} ({', '.join(differ)}); resume "
                "with the --init-from (timemoe finetune: --model) of the run that wrote it"
            )
    require_univariate(config, f"the model of {checkpoint}")
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        return TimeMoEForPrediction(config, attn_backend=cfg.attn_backend, moe_dispatch=cfg.moe_dispatch)


def _final_model_written(output_dir, ctx: DistContext) -> bool:
    """Rank 0's answer, on every rank: is the final model on disk and newer than the latest checkpoint?"""
    written = ckpt.has_final_model(output_dir, ckpt.latest_checkpoint(output_dir)) if ctx.is_main else None
    return bool(all_gather_objects(written, ctx)[0])


def refuse_to_mix_runs(cfg: TrainConfig) -> None:
    """A fresh run must not write into a directory that holds another run's checkpoints.

    The two would interleave: pruning keeps the highest step numbers, so the earlier run's checkpoints would
    survive the new run's and a later ``--resume`` would continue the wrong one, and the final model would be
    replaced. Nothing is deleted here; the error says how to go on.
    """
    if cfg.output_dir is None:
        return
    base = Path(cfg.init_from) if cfg.init_from is not None else None
    if base is not None and base.is_dir() and Path(cfg.output_dir).resolve() == base.resolve():
        # The final save replaced the base model's files: a downloaded checkpoint fine-tuned into itself was gone.
        raise FileExistsError(
            f"--output-dir {cfg.output_dir} is the folder of the model trained from ({cfg.init_from}): its weights "
            "would be replaced; choose another --output-dir"
        )
    latest = ckpt.latest_checkpoint(cfg.output_dir)
    if cfg.resume and latest is not None:
        return
    if latest is not None:
        raise FileExistsError(
            f"{cfg.output_dir} already holds checkpoints of an earlier run (latest: {latest.name}); pass --resume "
            "(resume=True) to continue it, or choose another --output-dir"
        )
    # A saved model without checkpoints (save_pretrained's folder, a finished run whose checkpoints were removed):
    # the final save replaced its weights, and its metrics were truncated.
    files = checkpoint_files(Path(cfg.output_dir))  # config.json, then the weights a load would read
    if len(files) > 1 and all(f.exists() for f in files):
        if cfg.resume:
            # --resume with nothing to resume started from scratch here, replacing the saved model and its
            # metrics.jsonl: a finished run whose checkpoints were deleted, "extended" with --max-steps --resume.
            raise FileExistsError(
                f"--resume: {cfg.output_dir} holds a saved model but no checkpoint to resume (they were deleted?); "
                "a fresh run would replace that model. To train it further, pass it as --init-from (timemoe "
                "finetune: --model) with another --output-dir"
            )
        raise FileExistsError(
            f"{cfg.output_dir} already holds a saved model (config.json and its weights) that this run would "
            "replace; choose another --output-dir (to train from that model, pass it as --init-from / --model)"
        )


def refuse_unused_eval_settings(cfg: TrainConfig) -> None:
    """``--eval-data`` or ``--eval-batches`` without ``--eval-every`` were accepted and never used (a path that does
    not exist included): the run reported no held-out loss, without a word. TrainConfig itself accepts them (a
    Trainer built by hand may call ``evaluate()``); a run of ``train`` never evaluates without ``eval_every``."""
    if cfg.eval_every:
        return
    unused = [
        flag
        for flag, given in (
            ("--eval-data", cfg.eval_data is not None),
            ("--eval-batches", cfg.eval_batches != TrainConfig.eval_batches),
        )
        if given
    ]
    if unused:
        raise ValueError(
            f"{' and '.join(unused)} given without --eval-every (eval_every=0 never evaluates): pass --eval-every N "
            "to evaluate every N steps and at the last one, or leave them out"
        )


def first_non_finite(named_tensors) -> str | None:
    """The name of the first tensor of (name, tensor) pairs holding NaN/inf, or None. Run before every save on
    the CPU copy of the whole state: the loader's sum-first test, not ``isfinite`` over every weight."""
    return next((name for name, t in named_tensors if count_non_finite(t)), None)


def ends_on_skipped_steps(history: list[dict]) -> bool:
    """Whether the last two steps of ``history`` were skipped for non-finite gradients: the run sits on weights it
    cannot train from (one skip at the end may be a passing spike, and its weights are the step before's)."""
    return len(history) >= 2 and bool(history[-1]["skipped"]) and bool(history[-2]["skipped"])


def diverged_by_skips(history: list[dict]) -> bool:
    """More than half the steps skipped, or the last two: the run did not train, whatever its losses look like."""
    skipped = sum(bool(r["skipped"]) for r in history)
    return 2 * skipped > len(history) or ends_on_skipped_steps(history)


@contextlib.contextmanager
def output_dir_lock(cfg: TrainConfig):
    """Hold an exclusive lock on ``<output_dir>/.lock`` for the run (rank 0; POSIX only).

    Two runs in one output directory (a re-queued cluster job next to the one still running) each deleted the
    other's checkpoint in progress and its metrics file; the second one now stops at once, naming the holder.
    """
    if cfg.output_dir is None or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.output_dir) / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            unlocked = None
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process"
            raise FileExistsError(
                f"another run is writing into {cfg.output_dir} ({holder} holds its lock); wait for it to end, or "
                "choose another --output-dir"
            ) from None
        except OSError as err:  # a file system without locks (some NFS mounts): train unprotected, not at all
            unlocked = err
        if unlocked is not None:  # outside the except: a later training error must not read as its consequence
            log.warning("cannot lock %s (%s); nothing stops a second run from writing there", f.name, unlocked)
            yield
            return
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Pretrain or fine-tune as ``cfg`` says, on one process or under torchrun.

    Returns {"steps", "skipped_steps", "finished", "stopped_by", "final_loss", "losses", "output_dir", "checkpoint"}
    (losses of this process's run; ``finished``: max_steps reached and the final model written, else stopped by the
    time limit or by Ctrl-C / SIGTERM, which ``stopped_by`` names; a stopped run saved a checkpoint first).
    """
    refuse_to_mix_runs(cfg)
    refuse_unused_eval_settings(cfg)
    if cfg.warmup_steps > cfg.max_steps:
        log.warning(
            "warmup_steps %d exceeds max_steps %d: the learning rate never reaches lr (it peaks at %.3g)",
            cfg.warmup_steps,
            cfg.max_steps,
            cfg.lr * cfg.max_steps / cfg.warmup_steps,
        )
    with output_dir_lock(cfg), distributed_context(cfg.device) as ctx:
        resumed_from = ckpt.latest_checkpoint(cfg.output_dir, intact=True) if cfg.resume else None
        model = build_model(cfg, ctx.device, resumed_from)
        # Every rank seeded its init alike (the same weights); left so, every rank drew the same dropout masks.
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank))
        _check_fused_dispatch(cfg, model, ctx.device)
        if cfg.max_length > model.config.max_position_embeddings:
            raise ValueError(
                f"max_length {cfg.max_length} exceeds the model's max_position_embeddings "
                f"({model.config.max_position_embeddings}); lower --max-length"
            )
        # Forecasts from contexts longer than the training windows are worse: the saved model defaults to these.
        model.config.record_default_context_length(cfg.max_length)
        sources = open_data(cfg.data, cfg.seed)
        if cfg.data_weights is not None and len(cfg.data_weights) != len(sources):
            raise ValueError(f"--data-weights has {len(cfg.data_weights)} value(s) for {len(sources)} data source(s)")
        if cfg.data_weights is not None and ctx.is_main:
            overridden = [
                f"{s.name} {s.weight:g} -> {w:g}" for s, w in zip(sources, cfg.data_weights) if s.weight is not None
            ]
            if overridden:  # the spec's own '#weight=' lost silently before
                log.warning("--data-weights replaces the weights given in the data specs: %s", "; ".join(overridden))
        streams = rank_streams(sources, cfg, ctx.rank, ctx.world_size)
        eval_sources = None
        if cfg.eval_every:
            if cfg.eval_data is None:
                eval_sources = held_out_view(sources)
            else:
                eval_sources = open_data(cfg.eval_data, cfg.seed + EVAL_SEED_OFFSET)
        eval_weights = cfg.data_weights if cfg.eval_data is None else None

        def eval_stream():  # one stream, the same on every rank: Trainer.evaluate splits its batches
            return make_stream(eval_sources, cfg, 0, 1, cfg.seed + EVAL_SEED_OFFSET, eval_weights)

        if cfg.eval_every:
            _check_eval_data(eval_stream, cfg)

        trainer = Trainer(cfg, ctx, model, streams, eval_stream if cfg.eval_every else None)
        if resumed_from is not None:
            trainer.load(resumed_from)
        elif cfg.resume:
            log.info("no checkpoint under %s: starting from scratch", cfg.output_dir)
        if cfg.output_dir is not None and ctx.is_main:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.output_dir) / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        with StopRequest() as stop:  # Ctrl-C / SIGTERM: save and stop after the step in progress
            trainer.stop_request = stop
            history = trainer.run()
        if cfg.output_dir is not None and trainer.step == cfg.max_steps:
            # A resumed run that was already complete trained nothing: its final model is on disk unless the first
            # run died between its last checkpoint and this save, so gathering the full state again is wasted.
            if history or not _final_model_written(cfg.output_dir, ctx):
                trainer.save_model(cfg.output_dir)
        losses = [r["loss"] for r in history]
        skipped = sum(bool(r["skipped"]) for r in history)
        if diverged_by_skips(history):
            log.warning(
                "%d of the %d steps of this run were skipped for non-finite gradients: the run has probably "
                "diverged (lower the learning rate)",
                skipped,
                len(history),
            )
        result = {
            "steps": trainer.step,
            "skipped_steps": skipped,
            "finished": trainer.step == cfg.max_steps,  # False when stopped by the time limit or a signal
            "stopped_by": trainer.stopped_by,  # None, "time limit of … s", "SIGINT", "SIGTERM", "another process…"
            "final_loss": losses[-1] if losses else float("nan"),
            "losses": losses,
            "output_dir": cfg.output_dir,
            "checkpoint": str(ckpt.latest_checkpoint(cfg.output_dir)) if cfg.output_dir else None,
        }
        # Free the model (FSDP's state holds the process group and its pending work) while the group still exists:
        # otherwise gloo's worker threads died with it at interpreter exit, and in 1 of 25 loaded test runs a rank
        # aborted ("terminate called without an active exception") after a run that had finished and saved.
        del trainer, model
        gc.collect()
    return result

"""Training on a CUDA GPU: bf16 autocast, the bf16 optimizer, activation checkpointing with torch.compile."""

from __future__ import annotations

import pytest
import torch

from timemoe_forecaster.train.parallel import DistContext
from timemoe_forecaster.train.trainer import TrainConfig, Trainer, build_model, make_stream, open_data, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def gpu_config(**changes) -> TrainConfig:
    values = dict(
        config="small",
        data=["synthetic#max_length=1024"],
        output_dir=None,
        max_steps=4,
        batch_size=4,
        max_length=256,
        lr=1e-3,
        progress=False,
        log_every=1,
        device="cuda",
    )
    values.update(changes)
    return TrainConfig(**values)


def one_step_loss(cfg: TrainConfig) -> tuple[float, Trainer]:
    ctx = DistContext(device=torch.device("cuda"))
    model = build_model(cfg, ctx.device)
    stream = make_stream(open_data(cfg.data, cfg.seed), cfg, 0, 1, cfg.seed)
    trainer = Trainer(cfg, ctx, model, [stream])
    return trainer.train_step(prefetch=False)["loss"], trainer


def test_bf16_autocast_matches_fp32_loss_and_keeps_fp32_weights():
    loss_bf16, trainer = one_step_loss(gpu_config(dtype="auto"))
    loss_fp32, _ = one_step_loss(gpu_config(dtype="fp32"))
    assert trainer.autocast and next(trainer.model.parameters()).dtype == torch.float32
    assert loss_bf16 == pytest.approx(loss_fp32, rel=2e-2)


def test_bf16_optimizer_trains_with_bf16_states():
    result = train(gpu_config(optim_dtype="bf16", max_steps=20, lr=3e-3))
    losses = result["losses"]
    assert all(v == v for v in losses) and sum(losses[-5:]) < sum(losses[:5])


def test_compile_and_activation_checkpointing_match_eager():
    eager, _ = one_step_loss(gpu_config(dtype="fp32"))
    compiled, trainer = one_step_loss(gpu_config(dtype="fp32", compile=True, activation_checkpointing=True))
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert all("_checkpoint_wrapped_module" not in k for k in trainer.model.state_dict())

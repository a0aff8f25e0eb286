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


@pytest.mark.parametrize("grad_clip", [0.05, 0.0])
def test_clipping_inside_the_fused_update_equals_clip_grad_norm(grad_clip):
    # The fused AdamW divides the gradients by the clipping factor as it reads them (no separate pass over them);
    # the foreach AdamW steps after clip_grad_norm_. After one step from the same start both moments hold the
    # clipped gradients (the update itself would hide a common scale: Adam divides it out).
    results = []
    for fused in (True, False):
        _, trainer = one_step_loss(gpu_config(dtype="fp32", fused=fused, grad_clip=grad_clip))
        assert trainer.update_before_sync == fused
        states = [trainer.optimizer.state[p] for p in trainer.model.parameters()]
        results.append((trainer.history[-1]["grad_norm"], [(s["exp_avg"], s["exp_avg_sq"]) for s in states]))
    (norm_fused, fused_moments), (norm_plain, plain_moments) = results
    assert norm_fused == pytest.approx(norm_plain, rel=1e-4)
    if grad_clip:
        assert norm_plain > 2 * grad_clip  # the clip was active
    for pair_fused, pair_plain in zip(fused_moments, plain_moments, strict=True):
        for a, b in zip(pair_fused, pair_plain):  # tiny values: compare whole tensors
            assert ((a - b).norm() / b.norm().clamp_min(1e-30)).item() < 1e-4

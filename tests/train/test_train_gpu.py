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
    # the foreach AdamW steps after clip_grad_norm_. Two steps from the same start must agree, clipped or not.
    results = []
    for fused in (True, False):
        cfg = gpu_config(dtype="fp32", fused=fused, grad_clip=grad_clip, lr=1e-2)
        _, trainer = one_step_loss(cfg)
        record = trainer.train_step(prefetch=False)
        assert trainer.update_before_sync == fused
        params = list(trainer.model.parameters())
        # The first moment holds the clipped gradients themselves (Adam's update alone hides a common scale).
        moments = [trainer.optimizer.state[p]["exp_avg"].clone() for p in params]
        results.append((record["grad_norm"], [p.detach().clone() for p in params], moments))
    (norm_fused, fused_params, fused_m), (norm_plain, plain_params, plain_m) = results
    assert norm_fused == pytest.approx(norm_plain, rel=1e-4)
    if grad_clip:
        assert norm_plain > 2 * grad_clip  # the clip was active
    for a, b in zip(fused_params, plain_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(fused_m, plain_m, strict=True):  # tiny values: compare whole tensors
        assert ((a - b).norm() / b.norm().clamp_min(1e-30)).item() < 1e-3

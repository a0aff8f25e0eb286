"""FlexAttention on a CUDA GPU: packed rows against the dense-mask SDPA path, forward and backward."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import make_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def packed_rows(batch=2, length=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, generator=g)
    seq_ids = torch.zeros(batch, length, dtype=torch.long)
    seq_ids[0, 100:] = 1
    seq_ids[0, 180:] = 2
    seq_ids[1, 230:] = -1  # padding at the end of the second row
    return x.cuda(), seq_ids.cuda(), (seq_ids >= 0).long().cuda()


@pytest.mark.parametrize("num_kv_heads", [2, 1])
def test_flex_equals_sdpa_on_packed_rows_forward_and_backward(num_kv_heads):
    x, seq_ids, attention_mask = packed_rows()
    labels = torch.roll(x, -1, dims=1)
    grads, hidden = [], []
    for backend in ("sdpa", "flex"):
        # Heads of 16: the narrowest the flex kernel takes (narrower ones fall back to SDPA).
        model = make_model(
            attn_backend=backend, hidden_size=32, num_attention_heads=2, num_key_value_heads=num_kv_heads
        )
        model = model.cuda().train()
        out = model(x, attention_mask=attention_mask, seq_ids=seq_ids, labels=labels, loss_mask=attention_mask)
        out.loss.backward()
        hidden.append(out.hidden_states[attention_mask.bool()])
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(hidden[1], hidden[0], rtol=1e-4, atol=1e-4)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_flex_falls_back_to_sdpa_for_narrow_heads():
    x, seq_ids, attention_mask = packed_rows()
    hidden = [
        make_model(attn_backend=b).cuda()(x, attention_mask=attention_mask, seq_ids=seq_ids).hidden_states
        for b in ("sdpa", "flex")
    ]  # the tiny preset's heads are 4 wide
    torch.testing.assert_close(hidden[1], hidden[0])


def small_flex_trainer(compile, **changes):
    """The ``small`` preset on packed rows with the flex backend, fp32, and a fixed evaluation stream."""
    from timemoe_forecaster.train.parallel import DistContext
    from timemoe_forecaster.train.trainer import TrainConfig, Trainer, build_model, make_stream, open_data

    cfg = TrainConfig(
        config="small", data=["synthetic#max_length=1024"], output_dir=None, max_steps=4, batch_size=4,
        max_length=256, lr=1e-3, progress=False, device="cuda", attn_backend="flex", compile=compile,
        **{"dtype": "fp32", **changes},
    )  # fmt: skip
    ctx = DistContext(device=torch.device("cuda"))
    stream = make_stream(open_data(cfg.data, cfg.seed), cfg, 0, 1, cfg.seed)

    def eval_stream():
        return make_stream(open_data(cfg.data, 99), cfg, 0, 1, 99)

    return Trainer(cfg, ctx, build_model(cfg, ctx.device), [stream], eval_stream=eval_stream)


def test_flex_model_compiled_whole_as_cuda_graphs_trains_like_eager():
    losses = {}
    for compile in (False, "model", "model-cudagraphs"):
        trainer = small_flex_trainer(compile)
        losses[compile] = [trainer.train_step(prefetch=False)["loss"] for _ in range(3)]
    for mode in ("model", "model-cudagraphs"):
        assert losses[mode] == pytest.approx(losses[False], rel=1e-3), mode


def test_flex_step_graph_trains_like_the_compiled_model_in_bf16():
    # Five steps: the step graph runs three eagerly, records the fourth and replays the fifth. bf16, because
    # the step graph needs the grouped expert GEMM (fp32 experts loop with data-dependent shapes).
    losses = {}
    for compile in ("model", "model-step-graph"):
        trainer = small_flex_trainer(compile, dtype="bf16")
        losses[compile] = [trainer.train_step(prefetch=False)["loss"] for _ in range(5)]
    assert losses["model-step-graph"] == pytest.approx(losses["model"], rel=1e-3)


@pytest.mark.parametrize(
    "baseline, compile, dtype", [(False, "model-cudagraphs", "fp32"), ("model", "model-step-graph", "bf16")]
)
def test_evaluate_between_steps_under_cuda_graphs_matches(baseline, compile, dtype):
    # evaluate() runs the model outside the training graphs (model-cudagraphs records a second, no-grad graph);
    # training must carry on unchanged after it, before and after the step graph is recorded (step 4).
    records = {}
    for mode in (baseline, compile):
        trainer = small_flex_trainer(mode, eval_batches=2, data_prefetch="off", dtype=dtype)
        losses, evals = [], []
        for steps in (2, 3, 2):
            losses += [trainer.train_step(prefetch=False)["loss"] for _ in range(steps)]
            evals.append(trainer.evaluate())
        records[mode] = losses + evals
    assert records[compile] == pytest.approx(records[baseline], rel=1e-3)


@pytest.mark.parametrize("head_dim", [32, 64])
def test_flex_with_tuned_tiles_equals_sdpa_in_bf16(head_dim):
    # The tiles of FLEX_SM90_KERNEL_OPTIONS (applied on H100/H200) must compute the same attention.
    from timemoe_forecaster.model.attention import flex_attention_backend, flex_kernel_options, sdpa_attention
    from timemoe_forecaster.model.modeling import build_attention_mask

    _, seq_ids, _ = packed_rows(length=512)
    seq_ids[1, 230:] = 1  # a second document instead of padding
    mask = build_attention_mask(None, seq_ids, 512, for_flex=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, 512, head_dim, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    results = []
    for backend in (sdpa_attention, flex_attention_backend):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = backend(*leaves, mask, 0.0, True)
        out.float().square().sum().backward()
        results.append([out] + [t.grad for t in leaves])
    for got, want in zip(results[1], results[0]):  # bf16: compare relative errors of whole tensors
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 2e-2
    if torch.cuda.get_device_capability() == (9, 0):
        assert flex_kernel_options(q) is not None

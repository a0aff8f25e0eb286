"""The whole training step as one CUDA graph: it must train exactly like the eager loop."""

from __future__ import annotations

import copy

import pytest
import torch

from timemoe_forecaster.config import TimeMoEConfig
from timemoe_forecaster.model.modeling import TimeMoEForPrediction
from timemoe_forecaster.train.optim import build_optimizer
from timemoe_forecaster.train.step_graph import GraphedTrainStep


def needs_gpu(test):
    test = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test)
    return pytest.mark.gpu(test)


def small_model(device: str) -> TimeMoEForPrediction:
    torch.manual_seed(0)
    config = TimeMoEConfig.from_preset("small", num_hidden_layers=2)
    return TimeMoEForPrediction(config).to(device=device, dtype=torch.bfloat16)


def batches(n: int, device: str, shape=(2, 128)) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x, y = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        out.append({"inputs": x.to(device, torch.bfloat16), "labels": y.to(device, torch.bfloat16)})
    return out


def loss_of(model):
    return lambda batch: model(batch["inputs"], labels=batch["labels"]).loss


def test_refuses_an_optimizer_that_cannot_be_recorded():
    model = small_model("cpu")
    with pytest.raises(ValueError, match="capturable=True"):
        GraphedTrainStep(loss_of(model), build_optimizer(model, lr=1e-3, fused=False))


def test_refuses_parameters_off_the_gpu():
    model = small_model("cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedTrainStep(loss_of(model), optimizer)


def test_the_bf16_optimizer_cannot_be_capturable():
    with pytest.raises(ValueError, match="optim_dtype='fp32'"):
        build_optimizer(small_model("cpu"), lr=1e-3, optim_dtype="bf16", capturable=True)


@needs_gpu
@pytest.mark.parametrize("warmup", [1, 3])
def test_graphed_steps_train_like_eager_steps(warmup):
    eager_model = small_model("cuda")
    graphed_model = copy.deepcopy(eager_model)
    eager_opt = build_optimizer(eager_model, lr=1e-3, capturable=True)
    graphed_opt = build_optimizer(graphed_model, lr=1e-3, capturable=True)
    step = GraphedTrainStep(loss_of(graphed_model), graphed_opt, warmup=warmup)
    eager_losses, graphed_losses = [], []
    for batch in batches(7, "cuda"):
        loss = loss_of(eager_model)(batch)
        loss.backward()
        eager_opt.step()
        eager_opt.zero_grad(set_to_none=True)
        eager_losses.append(loss.item())
        graphed_losses.append(step(batch).item())  # a different batch every call: the copy-in must work
    assert step._graph is not None  # the later steps did replay a recorded graph
    # Same kernels in the same order; only atomics in attention's backward may differ in the last bit.
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-3)
    assert len(set(graphed_losses)) == len(graphed_losses)  # each step saw its own batch
    for p_eager, p_graphed in zip(eager_model.parameters(), graphed_model.parameters(), strict=True):
        torch.testing.assert_close(p_graphed, p_eager, rtol=2e-2, atol=1e-4)
    start = small_model("cuda")
    # Every weight matrix was updated by the replays (a norm's 1.0 in bf16 does not move at this lr).
    moved = [not torch.equal(p, q) for p, q in zip(start.parameters(), graphed_model.parameters()) if p.dim() > 1]
    assert moved and all(moved)


@needs_gpu
def test_a_batch_of_another_shape_is_refused_after_recording():
    model = small_model("cuda")
    step = GraphedTrainStep(loss_of(model), build_optimizer(model, lr=1e-3, capturable=True), warmup=1)
    for batch in batches(2, "cuda"):
        step(batch)
    with pytest.raises(ValueError, match="one fixed shape"):
        step(batches(1, "cuda", shape=(3, 128))[0])

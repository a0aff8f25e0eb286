"""The whole training step as one CUDA graph: it must train exactly like the eager loop."""

from __future__ import annotations

import copy

import pytest
import torch

from timemoe_forecaster.config import TimeMoEConfig
from timemoe_forecaster.model.modeling import TimeMoEForPrediction
from timemoe_forecaster.train.config import TrainConfig
from timemoe_forecaster.train.optim import build_optimizer, build_scheduler
from timemoe_forecaster.train.parallel import DistContext
from timemoe_forecaster.train.step_graph import (
    GraphedStep,
    check_capturable,
    float_learning_rates,
    use_tensor_lr,
)
from timemoe_forecaster.train.trainer import Trainer, build_model, make_stream, open_data


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


def train_step(model, optimizer):
    def step(batch):
        loss = model(batch["inputs"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


# Checks that run anywhere -------------------------------------------------------------------------
def test_refuses_an_optimizer_that_cannot_be_recorded():
    with pytest.raises(ValueError, match="capturable=True"):
        check_capturable(build_optimizer(small_model("cpu"), lr=1e-3, fused=False))


def test_refuses_parameters_off_the_gpu():
    optimizer = torch.optim.AdamW(small_model("cpu").parameters(), lr=1e-3, capturable=True)
    with pytest.raises(ValueError, match="CUDA device"):
        check_capturable(optimizer)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(fused=False), "needs a fused AdamW"),
        (dict(fused=False, optim_dtype="bf16"), "needs a fused AdamW"),
        (dict(pack=True, attn_backend="sdpa"), "static shapes"),
        (dict(fsdp=True), "FSDP2"),
        (dict(dtype="fp32"), "bf16 compute"),
    ],
)
def test_train_config_refuses_what_a_step_graph_cannot_record(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(compile="model-step-graph", **{"pack": False, **changes})


def test_the_trainer_refuses_a_step_graph_off_the_gpu():
    cfg = TrainConfig(config="tiny", compile="model-step-graph", pack=False, max_length=32, progress=False)
    ctx = DistContext(device=torch.device("cpu"))
    model = build_model(cfg, ctx.device)
    stream = make_stream(open_data(cfg.data, cfg.seed), cfg, 0, 1, cfg.seed)
    with pytest.raises(ValueError, match="needs a CUDA device and one process") as refused:
        Trainer(cfg, ctx, model, [stream])
    assert "use --compile model (" in str(refused.value)  # not model-cudagraphs, which needs a GPU as well


def test_tensor_learning_rates_follow_the_schedule_and_save_as_floats():
    model = small_model("cpu").float()
    optimizer = build_optimizer(model, lr=1e-2)
    scheduler = build_scheduler(optimizer, warmup_steps=4, max_steps=10, min_lr_ratio=0.1)
    use_tensor_lr(optimizer)
    tensors = [group["lr"] for group in optimizer.param_groups]
    expected = []
    for _ in range(3):
        optimizer.step()  # no gradients: nothing moves, but the scheduler sees the usual order
        scheduler.step()
        expected.append(float(scheduler.get_last_lr()[0]))
        # The scheduler fills the same tensor in place: a recorded update reads it at every replay.
        assert all(group["lr"] is t for group, t in zip(optimizer.param_groups, tensors))
        assert float(tensors[0]) == pytest.approx(expected[-1])
    assert len(set(expected)) == 3  # the warm-up really changed the rate
    with float_learning_rates(optimizer):
        assert all(type(group["lr"]) is float for group in optimizer.param_groups)
        state = copy.deepcopy(optimizer.state_dict())
        optimizer.param_groups[0]["lr"] = 0.5  # what loading another state would do
    assert optimizer.param_groups[0]["lr"] is tensors[0] and float(tensors[0]) == 0.5
    assert state["param_groups"][0]["lr"] == pytest.approx(expected[-1])


def test_a_graphed_step_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="CUDA GPU"):
        GraphedStep(lambda inputs: inputs)


# On a GPU -------------------------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("warmup", [1, 3])
def test_graphed_steps_train_like_eager_steps(warmup):
    eager_model = small_model("cuda")
    graphed_model = copy.deepcopy(eager_model)
    eager_opt = build_optimizer(eager_model, lr=1e-3, capturable=True)
    graphed_opt = build_optimizer(graphed_model, lr=1e-3, capturable=True)
    check_capturable(graphed_opt)
    eager_step, graphed = (
        train_step(eager_model, eager_opt),
        GraphedStep(train_step(graphed_model, graphed_opt), warmup),
    )
    eager_losses, graphed_losses = [], []
    for batch in batches(7, "cuda"):
        eager_losses.append(eager_step(batch).item())
        graphed_losses.append(graphed(batch).item())  # a different batch every call: the copy-in must work
    assert graphed.graph is not None  # the later steps did replay a recorded graph
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
def test_inputs_of_another_shape_are_refused_after_recording():
    model = small_model("cuda")
    graphed = GraphedStep(train_step(model, build_optimizer(model, lr=1e-3, capturable=True)), warmup=1)
    for batch in batches(2, "cuda"):
        graphed(batch)
    with pytest.raises(ValueError, match="one fixed shape"):
        graphed(batches(1, "cuda", shape=(3, 128))[0])


def gpu_trainer(compile_mode: str, **changes) -> Trainer:
    values = dict(config="small", data=["synthetic#max_length=512"], output_dir=None, max_steps=8, batch_size=4,
                  max_length=256, pack=False, lr=1e-2, warmup_steps=5, progress=False, device="cuda",
                  compile=compile_mode, data_prefetch="off")  # fmt: skip
    cfg = TrainConfig(**{**values, **changes})
    ctx = DistContext(device=torch.device("cuda"))
    model = build_model(cfg, ctx.device)
    sources, shards = open_data(cfg.data, cfg.seed), cfg.grad_accum  # one stream per micro-batch
    return Trainer(cfg, ctx, model, [make_stream(sources, cfg, k, shards, cfg.seed) for k in range(shards)])


@needs_gpu
def test_the_trainer_step_graph_trains_like_the_compiled_model_and_resumes(tmp_path):
    plain, graphed = gpu_trainer("model"), gpu_trainer("model-step-graph", output_dir=str(tmp_path))
    start = [p.detach().clone() for p in plain.model.parameters()]
    for _ in range(6):  # 3 eager warm-up steps, 1 recorded, 2 replayed; the rate rises every step
        a, b = plain.train_step(), graphed.train_step()
        assert b["lr"] == pytest.approx(a["lr"]) and b["tokens"] == a["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-2)
    assert graphed._graphed is not None and graphed._graphed.graph is not None
    # A stale recorded learning rate would leave the weights a whole update-fraction apart.
    for p0, pa, pb in zip(start, plain.model.parameters(), graphed.model.parameters(), strict=True):
        update = (pa - p0).abs().max()
        assert (pb - pa).abs().max() <= 0.05 * update + 1e-7
    path = graphed.save()
    continued = [graphed.train_step()["loss"] for _ in range(2)]
    resumed = gpu_trainer("model-step-graph", output_dir=str(tmp_path / "other"))
    resumed.load(path)
    again = [resumed.train_step()["loss"] for _ in range(2)]
    assert again == pytest.approx(continued, rel=1e-3)


@needs_gpu
def test_the_step_graph_records_the_lean_bf16_update_and_resumes(tmp_path):
    # --optim-dtype bf16: the fused Triton update (device-side rate, count, clipping and skip) inside the graph.
    plain = gpu_trainer("model", optim_dtype="bf16")
    graphed = gpu_trainer("model-step-graph", optim_dtype="bf16", output_dir=str(tmp_path))
    assert graphed.update_before_sync and graphed.optimizer.defaults["capturable"]
    assert next(graphed.model.parameters()).dtype == torch.bfloat16
    for _ in range(6):  # 3 eager warm-up steps, 1 recorded, 2 replayed; the rate rises every step
        a, b = plain.train_step(), graphed.train_step()
        assert b["lr"] == pytest.approx(a["lr"]) and b["tokens"] == a["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2)
    assert graphed._graphed is not None and graphed._graphed.graph is not None
    steps = {float(graphed.optimizer.state[p]["step"]) for p in graphed.model.parameters()}
    assert steps == {6.0}  # counted on the device by every replay
    path = graphed.save()
    continued = [graphed.train_step()["loss"] for _ in range(2)]
    resumed = gpu_trainer("model-step-graph", optim_dtype="bf16", output_dir=str(tmp_path / "other"))
    resumed.load(path)
    again = [resumed.train_step()["loss"] for _ in range(2)]
    assert again == pytest.approx(continued, rel=1e-3)


@needs_gpu
def test_the_step_graph_accumulates_micro_batches_like_the_compiled_model():
    # Two micro-batches per step: the graph holds both forwards and backwards, and replays them on new data.
    plain = gpu_trainer("model", grad_accum=2, batch_size=2)
    graphed = gpu_trainer("model-step-graph", grad_accum=2, batch_size=2)
    for _ in range(6):  # 3 eager warm-up steps, 1 recorded, 2 replayed
        a, b = plain.train_step(), graphed.train_step()
        assert b["tokens"] == a["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-2)
    assert graphed._graphed is not None and graphed._graphed.graph is not None


@needs_gpu
def test_launching_the_next_step_ahead_trains_the_same(tmp_path):
    # launch_next enqueues step k+1 before step k's results are read: same steps, same records, same weights.
    plain, ahead = gpu_trainer("model-step-graph"), gpu_trainer("model-step-graph")
    for k in range(8):  # 3 eager, 1 recorded, then replays; the last call runs the step launched by the one before
        a = plain.train_step()
        b = ahead.train_step(launch_next=k < 7)
        assert (ahead._launched is not None) == (3 <= k < 7)  # from the call that records the graph
        assert b["step"] == a["step"] and b["tokens"] == a["tokens"] and b["lr"] == pytest.approx(a["lr"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-2)
        if ahead._launched is not None:
            with pytest.raises(RuntimeError, match="already enqueued"):
                ahead.save()
    for pa, pb in zip(plain.model.parameters(), ahead.model.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-3, atol=1e-5)


@needs_gpu
def test_the_training_loop_launches_ahead_between_evaluations_and_checkpoints(tmp_path):
    # run() launches ahead except before an evaluation, a checkpoint or the end: its records, evaluations and
    # checkpoint must match the plain compiled model's.
    histories = {}
    for mode in ("model", "model-step-graph"):
        cfg_changes = dict(max_steps=10, eval_every=5, eval_batches=1, save_every=5, output_dir=str(tmp_path / mode))
        trainer = gpu_trainer(mode, **cfg_changes)
        trainer.eval_stream = lambda cfg=trainer.cfg: make_stream(open_data(cfg.data, 99), cfg, 0, 1, 99)
        histories[mode] = trainer.run()
    plain, graphed = histories["model"], histories["model-step-graph"]
    assert [r["step"] for r in graphed] == list(range(1, 11))
    for a, b in zip(plain, graphed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b.get("eval_loss") == pytest.approx(a.get("eval_loss"), rel=1e-3)
    # The checkpoint at step 5 was written after a step launched ahead (step 5 itself): resuming from it must
    # continue with the same batches and weights.
    checkpoint = tmp_path / "model-step-graph" / "checkpoints" / "step_00000005"
    resumed = gpu_trainer("model-step-graph", max_steps=10, output_dir=str(tmp_path / "resumed"))
    resumed.load(checkpoint)
    again = resumed.run()
    assert [r["step"] for r in again] == list(range(6, 11))
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in graphed[5:]], rel=1e-3)

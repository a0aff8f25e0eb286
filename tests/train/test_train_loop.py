"""The training loop on CPU with the tiny preset: learning, exact resume, NaN guard, metrics, errors."""

from __future__ import annotations

import json
import logging
import warnings
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster import TimeMoEForPrediction
from timemoe_forecaster.train import state as ckpt
from timemoe_forecaster.train.metrics import read_metrics
from timemoe_forecaster.train.optim import WarmupCosine
from timemoe_forecaster.train.parallel import DistContext, parallelize
from timemoe_forecaster.train.trainer import TrainConfig, Trainer, build_model, make_stream, open_data, train

FAST_DATA = ["synthetic#max_length=512"]  # short synthetic series: cheap to generate


def small_config(tmp_path=None, **changes) -> TrainConfig:
    values = dict(
        data=FAST_DATA,
        output_dir=str(tmp_path) if tmp_path else None,
        max_steps=6,
        batch_size=2,
        max_length=64,
        lr=1e-2,
        warmup_steps=2,
        progress=False,
        log_every=1,
    )
    values.update(changes)
    return TrainConfig(**values)


def make_trainer(cfg: TrainConfig) -> Trainer:
    model = build_model(cfg, torch.device("cpu"))
    sources = open_data(cfg.data, cfg.seed)
    streams = [make_stream(sources, cfg, k, cfg.grad_accum, cfg.seed) for k in range(cfg.grad_accum)]
    return Trainer(cfg, DistContext(), model, streams)


def test_loss_falls_on_synthetic_data():
    cfg = small_config(max_steps=100, batch_size=8, max_length=128, lr=5e-2, warmup_steps=10, log_every=50)
    losses = train(cfg)["losses"]
    assert len(losses) == 100 and all(map(lambda v: v == v, losses))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first - 0.03, (first, last)


@pytest.mark.parametrize("data_prefetch", ["off", "thread", "process"])
def test_resume_after_kill_is_bit_identical(tmp_path, data_prefetch):
    # The straight run draws in the training thread; the killed and resumed one (optionally) on a data thread.
    straight = small_config(tmp_path / "straight", save_every=3, eval_every=2, eval_batches=1)
    train(straight)

    killed = small_config(tmp_path / "killed", save_every=3, eval_every=2, eval_batches=1, data_prefetch=data_prefetch)
    trainer = make_trainer(killed)
    trainer.run(until=4)  # "killed" after step 4; the last checkpoint is step 3
    del trainer
    assert ckpt.latest_checkpoint(killed.output_dir).name == "step_00000003"
    resumed = small_config(
        tmp_path / "killed", save_every=3, eval_every=2, eval_batches=1, resume=True, data_prefetch=data_prefetch
    )
    result = train(resumed)
    assert result["steps"] == 6 and len(result["losses"]) == 3  # steps 4, 5, 6

    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(straight.output_dir))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(killed.output_dir))
    assert a["trainer"]["step"] == b["trainer"]["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"]), key
    final_a = TimeMoEForPrediction.from_pretrained(straight.output_dir).state_dict()
    final_b = TimeMoEForPrediction.from_pretrained(killed.output_dir).state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    # metrics of the resumed run: each step once, the redone step 4 not duplicated
    steps = [r["step"] for r in read_metrics(killed.output_dir)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert read_metrics(killed.output_dir)[-1]["loss"] == read_metrics(straight.output_dir)[-1]["loss"]


@pytest.mark.parametrize("data_prefetch", ["thread", "process"])
def test_prefetch_trains_on_exactly_the_same_batches(data_prefetch):
    # Stopping and restarting the prefetcher between runs must neither skip nor repeat a batch.
    plain = make_trainer(small_config(max_steps=5))
    prefetched = make_trainer(small_config(max_steps=5, data_prefetch=data_prefetch))
    losses_plain = [r["loss"] for r in plain.run()]
    prefetched.run(until=2)
    losses_prefetched = [r["loss"] for r in prefetched.run()]  # run() returns the whole history
    assert prefetched._prefetcher is None  # run() stops the prefetcher when it ends
    assert losses_prefetched == losses_plain


def test_prefetch_default_is_a_process_on_gpus_and_none_on_cpus():
    from timemoe_forecaster.train.trainer import resolve_prefetch

    assert make_trainer(small_config(max_steps=1)).data_prefetch == "off"  # auto, on the CPU
    assert make_trainer(small_config(max_steps=1, data_prefetch="process")).data_prefetch == "process"
    assert resolve_prefetch("auto", torch.device("cuda")) == "process"  # Linux: fork exists
    assert resolve_prefetch("off", torch.device("cuda")) == "off"
    with pytest.raises(ValueError, match="data_prefetch must be one of"):
        small_config(data_prefetch="gpu")


def test_checkpoint_layout_and_pruning(tmp_path):
    left = tmp_path / "checkpoints" / ".tmp-step_00000002-abc"  # a save killed half-way by an earlier run
    left.mkdir(parents=True)
    (left / "model.safetensors").write_bytes(b"partial")
    train(small_config(tmp_path, max_steps=4, save_every=1, keep_checkpoints=2))
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_00000003", "step_00000004"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    # every checkpoint and the output directory itself load as models
    TimeMoEForPrediction.from_pretrained(tmp_path / "checkpoints" / "step_00000003")
    model = TimeMoEForPrediction.from_pretrained(tmp_path)
    assert model.config.hidden_size == 8
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["max_steps"] == 4 and saved["data"] == FAST_DATA


def test_metrics_records(tmp_path):
    train(small_config(tmp_path, max_steps=4, log_every=2, eval_every=4, eval_batches=1))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [2, 4]
    for key in ("loss", "ar_loss", "aux_loss", "lr", "grad_norm", "tokens_per_s"):
        assert isinstance(records[0][key], float), key
    assert "eval_loss" in records[1] and "eval_loss" not in records[0]
    assert records[0]["tokens_per_s"] > 0


def test_without_a_progress_bar_each_record_is_a_log_line(caplog):
    # With --no-progress the figures went only to metrics.jsonl, and without an output directory nowhere: an
    # evaluation's loss was computed and never shown.
    with caplog.at_level("INFO", logger="timemoe_forecaster.train.metrics"):
        train(small_config(None, max_steps=4, log_every=2, eval_every=4, eval_batches=1))
    lines = [r.getMessage() for r in caplog.records if r.name == "timemoe_forecaster.train.metrics"]
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"]
    assert "eval_loss" in lines[1] and "eval_loss" not in lines[0] and "tokens_per_s" in lines[0]


def test_data_weights_that_replace_a_specs_own_weight_say_so(caplog):
    data = ["synthetic#max_length=300&seed=1&weight=3", "synthetic#max_length=300&seed=2"]
    with caplog.at_level("WARNING"):
        train(small_config(None, data=data, data_weights=[1.0, 2.0], max_steps=1))
    assert "--data-weights replaces the weights given in the data specs: " in caplog.text
    assert " 3 -> 1" in caplog.text and "-> 2" not in caplog.text  # the second spec had no weight of its own


class NaNAt:
    """Wraps a stream; the batch of call ``k`` gets a NaN input at a real position."""

    def __init__(self, stream, k):
        self.stream, self.k, self.calls = stream, k, 0

    def next_batch(self):
        batch = self.stream.next_batch()
        self.calls += 1
        if self.calls == self.k:
            batch["inputs"][0, 0] = float("nan")
        return batch

    def state_dict(self):
        return self.stream.state_dict()


@pytest.mark.parametrize("fused", [False, True])  # fused: the update is launched before the sync, skipped on device
def test_non_finite_loss_skips_the_step_and_warns(caplog, fused):
    trainer = make_trainer(small_config(max_steps=4, fused=fused))
    assert trainer.update_before_sync is fused
    trainer.streams = [NaNAt(trainer.streams[0], 2)]
    trainer.train_step(prefetch=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt_before = {k: v["exp_avg"].clone() for k, v in enumerate(trainer.optimizer.state.values())}
    with caplog.at_level(logging.WARNING, logger="timemoe_forecaster.train.trainer"):
        record = trainer.train_step(prefetch=False)
    assert record["skipped"] and trainer.step == 2
    assert "non-finite" in caplog.text and "skipped" in caplog.text
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(opt_before[k], v["exp_avg"]) for k, v in enumerate(trainer.optimizer.state.values()))
    assert all(v["step"].item() == 1 for v in trainer.optimizer.state.values())  # the skipped step is not counted
    record = trainer.train_step(prefetch=False)  # the next step trains normally again
    assert not record["skipped"] and record["loss"] == record["loss"]
    assert not all(torch.equal(before[k], trainer.model.state_dict()[k]) for k in before)


@pytest.mark.parametrize("fused", [False, True])
def test_a_skipped_first_step_raises_no_scheduler_order_warning(fused):
    # torch warned "Detected call of `lr_scheduler.step()` before `optimizer.step()`" when the first step was
    # skipped, although the schedule is meant to follow the step count, skipped or not.
    trainer = make_trainer(small_config(max_steps=4, fused=fused))
    trainer.streams = [NaNAt(trainer.streams[0], 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = trainer.train_step(prefetch=False)
        second = trainer.train_step(prefetch=False)
    assert first["skipped"] and not second["skipped"]
    assert trainer.scheduler.last_epoch == 2


def test_update_before_the_sync_trains_exactly_like_after_it():
    # The same fused AdamW launched before the step's host sync (skipping on the device) or after it.
    states = []
    for before_sync in (True, False):
        trainer = make_trainer(small_config(max_steps=3, fused=True))
        trainer.update_before_sync = before_sync
        for _ in range(3):
            trainer.train_step(prefetch=False)
        states.append(trainer.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_gradient_accumulation_matches_one_big_batch():
    # One micro-batch of 4 rows == two micro-batches of the same rows split 2 + 2 (one process): the AR
    # loss is normalised by the step's global point count. (The aux loss is a per-micro-batch average.)
    cfg1 = small_config(batch_size=4, max_steps=2)
    cfg2 = small_config(batch_size=2, grad_accum=2, max_steps=2)
    batch = make_stream(open_data(cfg1.data, 0), cfg1, 0, 1, 0).next_batch()
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    grads, losses = [], []
    for cfg, batches in ((cfg1, [batch]), (cfg2, halves)):
        model = build_model(cfg, torch.device("cpu"))
        model.config.apply_aux_loss = False
        trainer = Trainer(cfg, DistContext(), model, [FixedStream(b) for b in batches])
        captured = {}
        trainer.optimizer.step = lambda c=captured, m=model: c.update(
            {n: p.grad.clone() for n, p in m.named_parameters()}
        )
        losses.append(trainer.train_step(prefetch=False)["loss"])
        grads.append(captured)
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-7, msg=key)


class FixedStream:
    def __init__(self, batch):
        self.batch = batch

    def next_batch(self):
        return {k: v.clone() for k, v in self.batch.items()}

    def state_dict(self):
        return {}


@pytest.mark.parametrize("fused", [False, True])  # clip_grad_norm_, or the fused AdamW's grad_scale
def test_clipping_scales_the_first_moments_by_clip_over_norm(fused):
    # One step from the same start on the same batch: Adam's first moment is (1 - beta1) * gradient, so a clipped
    # step's moments are the unclipped step's times grad_clip / norm (the update itself would hide the scale).
    moments, norms = [], []
    for clip in (0.0, 0.01):
        trainer = make_trainer(small_config(max_steps=2, fused=fused, grad_clip=clip))
        norms.append(trainer.train_step(prefetch=False)["grad_norm"])
        moments.append([trainer.optimizer.state[p]["exp_avg"].clone() for p in trainer.model.parameters()])
    assert norms[0] == pytest.approx(norms[1], rel=1e-5) and norms[0] > 2 * 0.01  # the clip is active
    factor = 0.01 / (norms[0] + 1e-6)
    for clipped, plain in zip(moments[1], moments[0], strict=True):
        torch.testing.assert_close(clipped, plain * factor, rtol=1e-4, atol=1e-10)


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = small_config()
    batch = make_stream(open_data(cfg.data, 0), cfg, 0, 1, 0).next_batch()
    grads = []
    for ac in (False, True):
        model = build_model(cfg, torch.device("cpu"))
        runs = []
        model.model.layers[0].self_attn.register_forward_hook(lambda *_, runs=runs: runs.append(1))
        wrapped = parallelize(model, DistContext(), activation_checkpointing=ac)
        wrapped(**batch).loss.backward()
        assert len(runs) == (2 if ac else 1)  # checkpointed: the block runs again in the backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert set(model.state_dict()) == set(build_model(cfg, torch.device("cpu")).state_dict())
    for (name, a), b in zip(grads[0].items(), grads[1].values()):
        torch.testing.assert_close(a, b, msg=name)


def test_whole_model_compile_gives_the_same_loss_and_gradients():
    # aot_eager traces the same forward/backward graphs inductor would compile, without a C++ toolchain.
    cfg = small_config()
    batch = make_stream(open_data(cfg.data, 0), cfg, 0, 1, 0).next_batch()
    results = []
    for mode in (False, "model"):
        model = build_model(cfg, torch.device("cpu"))
        wrapped = parallelize(model, DistContext(), compile=mode, compile_backend="aot_eager")
        assert (model._compiled_call_impl is not None) == (mode == "model")
        loss = wrapped(**batch).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        assert set(model.state_dict()) == set(build_model(cfg, torch.device("cpu")).state_dict())
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_runs_outside_a_whole_model_graph(monkeypatch):
    # A whole-model compile would compile a second, no-grad graph for evaluation (the one that crashed under
    # flex in bf16 on a GPU); evaluate() runs the model's own forward instead, with the same result.
    import timemoe_forecaster.train.trainer as trainer_module

    graph_calls = []

    def counting_backend(gm, example_inputs):
        def run(*args):
            graph_calls.append(1)
            return gm(*args)

        return run

    real_parallelize = trainer_module.parallelize
    monkeypatch.setattr(
        trainer_module, "parallelize", lambda *a, **k: real_parallelize(*a, **k, compile_backend=counting_backend)
    )
    results = {}
    for mode in (False, "model"):
        cfg = small_config(compile=mode, eval_batches=2)
        sources = open_data(cfg.data, cfg.seed)
        model = build_model(cfg, torch.device("cpu"))
        trainer = Trainer(cfg, DistContext(), model, [make_stream(sources, cfg, 0, 1, cfg.seed)],
                          eval_stream=lambda cfg=cfg, src=sources: make_stream(src, cfg, 0, 1, 99))  # fmt: skip
        loss = trainer.train_step(prefetch=False)["loss"]
        calls = len(graph_calls)
        results[mode] = (loss, trainer.evaluate())
        assert len(graph_calls) == calls  # no graph ran during evaluation
        assert trainer.model.training
    assert len(graph_calls) > 0  # the training step did go through the compiled graph
    assert results["model"] == pytest.approx(results[False], rel=1e-4)


def test_compile_setting_is_normalised_and_checked():
    assert small_config(compile=True).compile == "blocks"
    assert small_config(compile="off").compile is False
    assert small_config(compile="model").compile == "model"
    assert small_config(compile="model-cudagraphs", attn_backend="flex").compile == "model-cudagraphs"
    assert small_config(compile="model-cudagraphs", pack=False).compile == "model-cudagraphs"
    with pytest.raises(ValueError, match="static shapes"):
        small_config(compile="model-cudagraphs")  # packed rows with the sdpa backend
    with pytest.raises(ValueError, match="FSDP2"):
        small_config(compile="model", fsdp=True)
    with pytest.raises(ValueError, match="compile must be"):
        small_config(compile="everything")


def test_bf16_optimizer_setting_trains_on_cpu(tmp_path):
    trainer = make_trainer(small_config(optim_dtype="bf16", max_steps=3))
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}  # bf16 weights ...
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert not trainer.train_step(prefetch=False)["skipped"]
    states = list(trainer.optimizer.state.values())
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.bfloat16 for s in states)  # ... states
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())  # and it trained
    result = train(small_config(tmp_path, optim_dtype="bf16", max_steps=3))
    assert all(v == v for v in result["losses"])
    model = TimeMoEForPrediction.from_pretrained(tmp_path, dtype="auto")  # as stored
    assert next(model.parameters()).dtype == torch.float32  # final save is fp32 unless save_dtype=bf16


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    result = train(small_config(tmp_path, max_steps=50, time_limit=1e-9, log_every=10))
    assert result["steps"] == 1  # the limit is checked as each step starts: already passed at step 1
    assert result["finished"] is False
    assert read_metrics(tmp_path) == []  # step 1 is off the --log-every grid: the checkpoint keeps it for the next line
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000001"
    assert not (tmp_path / "model.safetensors").exists()  # not finished: no final model yet


def test_a_resumed_runs_first_metrics_line_averages_the_same_steps(tmp_path):
    # A line averages the steps since the last one. Resumed from step 3 with a line every 4 steps, the step-4 line
    # averaged step 4 alone (the uninterrupted run's averages steps 1-4): the weights matched, metrics.jsonl did not.
    straight = small_config(tmp_path / "straight", save_every=3, log_every=4)
    train(straight)
    killed = small_config(tmp_path / "killed", save_every=3, log_every=4)
    make_trainer(killed).run(until=5)  # "killed" after step 5; the last checkpoint is step 3
    train(small_config(tmp_path / "killed", save_every=3, log_every=4, resume=True))
    a, b = read_metrics(straight.output_dir), read_metrics(killed.output_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 6]
    for key in ("loss", "ar_loss", "aux_loss", "grad_norm", "lr"):
        assert [r[key] for r in a] == [r[key] for r in b], key


def stop_signal_after(step: int):
    """Trainer.train_step with a stop signal arriving during step ``step - 1``, so that step ``step`` is the last."""
    real = Trainer.train_step

    def train_step(self, **kwargs):
        record = real(self, **kwargs)
        if self.step == step - 1:
            self.stop_request.received = "SIGTERM"
        return record

    return mock.patch.object(Trainer, "train_step", train_step)


@pytest.mark.parametrize("stop_at", [3, 4])  # off the log grid; at an evaluation
def test_a_stopped_and_resumed_run_writes_the_lines_of_an_uninterrupted_one(tmp_path, stop_at):
    # A stop logged the steps since the last line (an extra line at the stop, and the next line averaged fewer
    # steps), and a stop at an evaluation step lost that evaluation for good.
    settings = dict(max_steps=8, log_every=4, eval_every=4, eval_batches=1, save_every=100)
    straight = small_config(tmp_path / "straight", **settings)
    train(straight)
    stopped = small_config(tmp_path / "stopped", **settings)
    with stop_signal_after(stop_at):
        assert train(stopped)["steps"] == stop_at
    assert read_metrics(stopped.output_dir) == []
    train(small_config(tmp_path / "stopped", resume=True, **settings))
    a, b = read_metrics(straight.output_dir), read_metrics(stopped.output_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 8]
    for key in ("loss", "ar_loss", "aux_loss", "grad_norm", "lr", "eval_loss"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    # the line left to the resumed run has no rate: its steps ran before the stop
    assert ("tokens_per_s" in b[0]) is (stop_at == 3) and "tokens_per_s" in b[1]


def test_a_resumed_run_from_an_official_checkpoint_keeps_its_code_files(tmp_path):
    # The resume rebuilt the config from the checkpoint without where auto_map's code files were: the resumed run's
    # final model had none, and the official loader (trust_remote_code) could not load it.
    base = tmp_path / "base"
    make_model().save_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_time_moe.TimeMoeForPrediction"}
    (base / "config.json").write_text(json.dumps(config))
    (base / "modeling_time_moe.py").write_text("raise SystemExit('never imported')\n")
    settings = dict(init_from=str(base), max_steps=4, save_every=100)
    with stop_signal_after(2):
        train(small_config(tmp_path / "run", **settings))
    train(small_config(tmp_path / "run", resume=True, **settings))
    assert (tmp_path / "run" / "modeling_time_moe.py").read_text() == "raise SystemExit('never imported')\n"


def test_resume_survives_a_metrics_line_cut_short(tmp_path, caplog):
    # A run killed while writing metrics.jsonl left half a record; every --resume then failed on it with
    # "Expecting ',' delimiter" although the checkpoint was intact.
    assert train(small_config(tmp_path, max_steps=2))["finished"] is True
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.5')
    with caplog.at_level(logging.WARNING, logger="timemoe_forecaster.train.metrics"):
        result = train(small_config(tmp_path, max_steps=4, resume=True))
    assert result["steps"] == 4 and "line 3 is not a whole JSON record" in caplog.text
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "damage, file",
    [
        ("half", ckpt.OPTIMIZER_FILE),
        ("empty", ckpt.TRAINER_FILE),
        ("half", "model.safetensors"),
        ("empty", "config.json"),
        ("deleted", ckpt.TRAINER_FILE),  # was passed over without a word
    ],
)
def test_resume_skips_a_damaged_newest_checkpoint_with_a_warning(tmp_path, caplog, damage, file):
    # A crash, full disk or power loss while the newest checkpoint was written left a file cut short: --resume
    # ended in a bare OSError/EOFError traceback although the checkpoint before it was intact.
    reference = train(small_config(tmp_path / "ref", max_steps=6, save_every=2))["losses"]
    train(small_config(tmp_path / "run", max_steps=4, save_every=2))
    newest = tmp_path / "run" / "checkpoints" / "step_00000004"
    data = (newest / file).read_bytes()
    if damage == "deleted":
        (newest / file).unlink()
    else:
        (newest / file).write_bytes(data[: len(data) // 2] if damage == "half" else b"")
    with caplog.at_level(logging.WARNING, logger="timemoe_forecaster.train.state"):
        result = train(small_config(tmp_path / "run", max_steps=6, save_every=2, resume=True))
    assert "step_00000004 is damaged" in caplog.text and "resuming from" in caplog.text
    np.testing.assert_allclose(result["losses"], reference[2:], rtol=1e-6)  # from step 2, as if never stopped
    # Nothing intact left: a one-line error, not a traceback from torch.load.
    for kept in (tmp_path / "run" / "checkpoints").glob("step_*"):
        (kept / ckpt.TRAINER_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="every checkpoint under .* is damaged"):
        train(small_config(tmp_path / "run", max_steps=8, resume=True))


def test_a_checkpoint_damaged_inside_is_named_when_read(tmp_path):
    train(small_config(tmp_path, max_steps=2))
    path = ckpt.latest_checkpoint(tmp_path)
    data = bytearray((path / ckpt.OPTIMIZER_FILE).read_bytes())
    data[100:400] = b"\0" * 300  # the zip directory at the end still reads
    (path / ckpt.OPTIMIZER_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"optimizer.pt cannot be read .*delete .*step_00000002"):
        ckpt.load_checkpoint(path)


def test_a_diverged_run_saves_nothing_over_its_good_checkpoints_and_says_so(tmp_path, caplog):
    # Weights that turned NaN/inf were checkpointed (replacing the good checkpoints under keep_checkpoints) and
    # the run ended "trained" with exit code 0.
    train(small_config(tmp_path, max_steps=2, save_every=2))
    good = (tmp_path / "checkpoints" / "step_00000002" / "model.safetensors").read_bytes()
    original = Trainer.train_step

    def poisoning_step(self, *args, **kwargs):
        record = original(self, *args, **kwargs)
        if self.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return record

    with mock.patch.object(Trainer, "train_step", poisoning_step):
        with pytest.raises(ValueError, match=r"diverged: weights are NaN/inf at step 4 .*--resume from step_00000002"):
            train(small_config(tmp_path, max_steps=6, save_every=2, resume=True))
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000002"
    assert (tmp_path / "checkpoints" / "step_00000002" / "model.safetensors").read_bytes() == good
    # A learning rate far too large: finite but huge weights whose gradients are non-finite. The last two steps
    # before a save were skipped: that save is refused too (it rotated the good checkpoints out).
    with pytest.raises(ValueError, match=r"steps 5 and 6 had non-finite gradients and were skipped"):
        train(small_config(tmp_path, max_steps=6, save_every=2, resume=True, lr=1e10))
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000004"  # steps 3 and 4 still updated the weights
    # Finite weights but most steps skipped for non-finite gradients: a warning and a count.
    result = train(small_config(lr=1e4, max_steps=6, warmup_steps=1))
    assert result["skipped_steps"] > 3
    with caplog.at_level(logging.WARNING, logger="timemoe_forecaster.train.trainer"):
        train(small_config(lr=1e4, max_steps=6, warmup_steps=1))
    assert "skipped for non-finite gradients" in caplog.text


def test_a_checkpoint_that_cannot_be_written_is_an_os_error_naming_it_and_the_free_space(tmp_path):
    train(small_config(tmp_path, max_steps=2, save_every=2))
    with mock.patch.object(torch, "save", side_effect=RuntimeError("basic_ios::clear: iostream error")):
        with pytest.raises(OSError, match=r"writing checkpoint .*step_00000004 failed .*GiB free .*intact"):
            train(small_config(tmp_path, max_steps=4, save_every=2, resume=True))
    assert ckpt.latest_checkpoint(tmp_path, intact=True).name == "step_00000002"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_a_second_run_into_the_same_output_dir_stops_while_the_first_holds_it(tmp_path):
    # Two runs in one folder (a re-queued job next to the running one) deleted each other's checkpoints in progress
    # and metrics; the second now stops at once, naming the holder.
    import os

    from timemoe_forecaster.train.trainer import output_dir_lock

    cfg = small_config(tmp_path, max_steps=2)
    with output_dir_lock(cfg):
        with pytest.raises(FileExistsError, match=rf"another run is writing into .* \(pid {os.getpid()} on "):
            train(small_config(tmp_path, max_steps=2, resume=True))
    assert train(small_config(tmp_path, max_steps=2, resume=True))["finished"]  # released when the first ends
    # A file system without locks (ENOLCK on some NFS mounts) trains unprotected, with a warning, not at all.
    import errno
    import fcntl

    with mock.patch.object(fcntl, "flock", side_effect=OSError(errno.ENOLCK, "No locks available")):
        assert train(small_config(tmp_path / "nfs", max_steps=2))["finished"]


def test_a_warmup_longer_than_the_run_is_warned_of(caplog):
    with caplog.at_level(logging.WARNING, logger="timemoe_forecaster.train.trainer"):
        train(small_config(max_steps=2, warmup_steps=10))  # lr 1e-2
    assert "warmup_steps 10 exceeds max_steps 2: the learning rate never reaches lr (it peaks at 0.002)" in caplog.text


def test_a_whole_state_file_that_safe_loading_refuses_is_not_called_damaged(tmp_path):
    train(small_config(tmp_path, max_steps=2))
    path = ckpt.latest_checkpoint(tmp_path)
    torch.save({"step": 2, "when": np.datetime64("2020-01-01")}, path / ckpt.TRAINER_FILE)  # a numpy scalar
    with pytest.raises(ValueError, match="safe loading .* refuses .*not written by this library") as info:
        ckpt.load_checkpoint(path)
    assert "delete" not in str(info.value)


def test_starting_from_nan_weights_is_named_at_once(tmp_path):
    # Every step was skipped and the run then blamed the learning rate.
    model = TimeMoEForPrediction(ckpt.TimeMoEConfig.from_preset("tiny"))
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    with pytest.raises(ValueError, match=r"nan holds 1 NaN or infinite value\(s\) of .*weights are damaged"):
        train(small_config(init_from=str(tmp_path / "nan"), max_steps=2))


def test_resuming_a_finished_run_keeps_its_final_model_and_rewrites_a_missing_one(tmp_path):
    train(small_config(tmp_path, max_steps=2))
    final = tmp_path / "model.safetensors"
    stamp = final.stat().st_mtime_ns
    assert train(small_config(tmp_path, max_steps=2, resume=True))["losses"] == []
    assert final.stat().st_mtime_ns == stamp  # nothing trained: the model on disk is the run's final model
    final.unlink()  # as if the first run died between its last checkpoint and the final save
    assert train(small_config(tmp_path, max_steps=2, resume=True))["finished"] is True
    assert final.exists() and TimeMoEForPrediction.from_pretrained(tmp_path) is not None
    # A run extended to step 4 that died before its final save leaves step 2's model next to step 4's
    # checkpoint: resuming must write step 4's model, not keep the stale one.
    step2 = final.read_bytes()
    with mock.patch.object(Trainer, "save_model", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            train(small_config(tmp_path, max_steps=4, resume=True))
    assert final.read_bytes() == step2
    assert train(small_config(tmp_path, max_steps=4, resume=True))["losses"] == []
    assert final.read_bytes() != step2


def test_resume_follows_the_new_schedule_and_optimizer_settings(tmp_path, caplog):
    # The checkpoint's scheduler used to come back whole: a run resumed with a larger --max-steps and another --lr
    # stayed at the old run's final rate while train_config.json recorded the new settings.
    train(small_config(tmp_path, max_steps=3, lr=1e-2, warmup_steps=0))
    resumed = small_config(tmp_path, max_steps=6, lr=5e-2, warmup_steps=2, weight_decay=0.2, resume=True)
    with caplog.at_level(logging.INFO, logger="timemoe_forecaster.train.trainer"):
        result = train(resumed)
    assert result["steps"] == 6 and len(result["losses"]) == 3
    schedule = WarmupCosine(2, 6, resumed.min_lr_ratio)  # the new schedule, from the checkpoint's step 3 on
    rates = {r["step"]: r["lr"] for r in read_metrics(tmp_path)}
    assert [rates[s] for s in (4, 5, 6)] == pytest.approx([5e-2 * schedule(s - 1) for s in (4, 5, 6)])
    assert rates[6] == pytest.approx(5e-2 * resumed.min_lr_ratio)  # ends where the new schedule ends
    recorded = json.loads((tmp_path / "train_config.json").read_text())
    assert (recorded["lr"], recorded["max_steps"], recorded["weight_decay"]) == (5e-2, 6, 0.2)
    groups = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.2]  # the new decay, on matrices only
    assert "max_steps 3 -> 6" in caplog.text and "lr 0.01 -> 0.05" in caplog.text


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(seed=1), "--seed 0"),
        (dict(optim_dtype="bf16"), "--optim-dtype fp32"),
        (dict(config="small"), "different model"),
        (dict(max_steps=1), "past --max-steps 1"),
    ],
)
def test_resume_refuses_what_the_checkpoint_fixes(tmp_path, changes, match):
    # These failed deep inside torch (a KeyError, a size mismatch) or were silently not what the run recorded.
    train(small_config(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match=match) as info:
        train(small_config(tmp_path, resume=True, **changes))
    assert "--init-from" in str(info.value) or "--max-steps above 2" in str(info.value)


def test_a_run_from_a_base_model_resumes_whatever_spelling_its_path_has(tmp_path, monkeypatch):
    # The base's path, as typed, is in the model's description, and the resume check compared it as if it were
    # architecture: "base", "./base" and its absolute path were three different models.
    base = tmp_path / "base"
    train(small_config(base, max_steps=2))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    train(small_config(run, init_from="base", max_steps=2, save_every=1))
    for steps, spelling in enumerate(("./base", str(base), "base/"), start=3):
        result = train(small_config(run, init_from=spelling, resume=True, max_steps=steps))
        assert result["finished"] is True and len(result["losses"]) == 1  # one more step each time
    with pytest.raises(ValueError, match=r"different model .*--init-from .*\(timemoe finetune: --model "):
        train(small_config(run, config="small", resume=True, max_steps=9))


def test_a_run_from_a_base_model_resumes_after_the_base_is_gone(tmp_path):
    # The resume loaded the base again, only to overwrite every weight with the checkpoint's: once the base was
    # gone (a purged scratch folder, a hub id offline), the run could not be continued at all.
    base = tmp_path / "base"
    train(small_config(base, max_steps=2))
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(small_config(straight, init_from=str(base), max_steps=4))
    assert not train(small_config(run, init_from=str(base), max_steps=4, time_limit=1e-9))["finished"]
    base.rename(tmp_path / "moved")
    assert train(small_config(run, init_from=str(base), resume=True, max_steps=4))["finished"]
    resumed, uninterrupted = (TimeMoEForPrediction.from_pretrained(d).state_dict() for d in (run, straight))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert "base" in json.loads((run / "config.json").read_text())["timemoe_forecaster"]["trained_from"]
    # A base still there must be the model the run was trained from.
    train(small_config(base, config="small", max_steps=1))
    with pytest.raises(ValueError, match="trained from another model"):
        train(small_config(run, init_from=str(base), resume=True, max_steps=5))


def test_a_run_into_the_folder_of_its_base_model_is_refused(tmp_path, monkeypatch):
    # finetune --model m --output-dir m replaced the base's weights with the fine-tuned ones, without a word.
    base = tmp_path / "m"
    make_model(seed=1).save_pretrained(base)
    before = (base / "model.safetensors").read_bytes()
    monkeypatch.chdir(tmp_path)
    for spelling in (str(base), "./m/"):
        with pytest.raises(FileExistsError, match="is the folder of the model trained from"):
            train(small_config(spelling, init_from="m", max_steps=1))
    assert (base / "model.safetensors").read_bytes() == before and not (base / "checkpoints").exists()


def test_resume_with_other_shard_count_is_refused(tmp_path):
    train(small_config(tmp_path, max_steps=2, save_every=1))
    with pytest.raises(ValueError, match="grad-accum"):
        train(small_config(tmp_path, max_steps=4, grad_accum=2, resume=True))


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(max_steps=0), "max_steps"),
        (dict(batch_size=-1), "batch_size"),
        (dict(lr=0.0), "lr"),
        (dict(min_lr_ratio=2.0), "min_lr_ratio"),
        (dict(dtype="fp16"), "dtype"),
        (dict(optim_dtype="int8"), "optim_dtype"),
        (dict(fsdp="maybe"), "fsdp"),
        (dict(data=[]), "data"),
        (dict(resume=True, output_dir=None), "resume"),
        (dict(betas=(0.9, 1.5)), "betas"),
        (dict(data_weights=[float("inf")]), "finite positive"),  # was "Probabilities contain NaN" when drawing
        (dict(data_weights=[float("nan")]), "finite positive"),
        (dict(device="tpu"), "device must be cpu, cuda, cuda:N or mps"),  # was torch's long RuntimeError
        (dict(device="cuda:x"), "device must be cpu, cuda, cuda:N or mps"),
        (dict(lr="x"), "lr must be a number, got 'x'"),  # was "TypeError: must be real number, not str"
        (dict(weight_decay=None), "weight_decay must be a number"),
        (dict(betas=("a", 0.9)), "betas must be two numbers"),
        (dict(seed=True), "seed must be an integer"),  # a bool slipped through as 1
        (dict(warmup_steps=False), "warmup_steps must be an integer"),
        (dict(eps=0.0), "eps must be positive"),  # 0/0 updates made the unused experts NaN, the run "succeeded"
        (dict(eps=-1.0), "eps must be positive"),
        (dict(weight_decay=float("inf")), "weight_decay must be finite"),  # every weight NaN, the run "succeeded"
        (dict(lr=3e38), "lr must be below 1e30"),  # overflowed inside AdamW's float32 with a raw RuntimeError
    ],
)
def test_bad_config_values(changes, match):
    with pytest.raises(ValueError, match=match):
        small_config(**changes)


def test_numpy_scalars_are_accepted_as_plain_numbers(tmp_path):
    # A grid search hands np.int64 seeds and np.float32 rates: TrainConfig refused them ("seed must be an integer
    # >= 0, got np.int64(3)"), although the estimators accept such a seed for zero-shot forecasts.
    cfg = small_config(
        tmp_path,
        seed=np.int64(3),
        batch_size=np.int64(2),
        lr=np.float32(1e-2),
        max_steps=np.int32(2),
        data=[FAST_DATA[0], FAST_DATA[0]],
        data_weights=np.array([1.0, 2.0], dtype=np.float32),
        pack=np.bool_(True),
    )
    assert (type(cfg.seed), type(cfg.lr), type(cfg.pack)) == (int, float, bool) and cfg.lr == pytest.approx(1e-2)
    assert cfg.data_weights == [1.0, 2.0]
    assert train(cfg)["steps"] == 2
    assert json.loads((tmp_path / "train_config.json").read_text())["seed"] == 3


def test_a_multivariate_model_config_is_refused_before_training(tmp_path):
    # input_size 2 used to fail inside the first matrix product: "mat1 and mat2 shapes cannot be multiplied".
    from timemoe_forecaster import TimeMoEConfig

    config = TimeMoEConfig.from_preset("tiny").replace(input_size=2)
    config.to_json_file(tmp_path / "config.json")
    with pytest.raises(ValueError, match="input_size 2.*univariate"):
        train(small_config(config=str(tmp_path / "config.json"), max_steps=1))
    with pytest.raises(ValueError, match="univariate"):  # also for code that builds a Trainer itself
        Trainer(small_config(max_steps=1), DistContext(), TimeMoEForPrediction(config), [None])


def test_quality_filter_can_be_turned_off(tmp_path):
    # Intermittent demand (two values in three are zero) is all "low quality"; the error named an option that the
    # CLI and TrainConfig lacked.
    values = np.zeros((3, 600), np.float32)
    values[:, ::3] = np.random.default_rng(0).random((3, 200))
    np.save(tmp_path / "intermittent.npy", values)
    data = [str(tmp_path / "intermittent.npy")]
    with pytest.raises(ValueError, match="--no-quality-filter"):
        train(small_config(data=data, max_steps=1))
    assert train(small_config(data=data, max_steps=2, quality_filter=False))["steps"] == 2


def test_bad_run_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        train(small_config(max_length=8192))
    with pytest.raises(ValueError, match="data-weights"):
        train(small_config(data_weights=[1.0, 2.0]))
    with pytest.raises(ValueError, match="preset"):
        train(small_config(config="no-such-preset"))


def test_paths_are_accepted_as_settings(tmp_path):
    # A pathlib.Path output_dir passed validation, then failed writing train_config.json (not JSON serializable).
    from pathlib import Path

    cfg = small_config(output_dir=tmp_path / "run", max_steps=1, data=[Path(tmp_path / "x.npy")])
    assert cfg.output_dir == str(tmp_path / "run") and cfg.data == [str(tmp_path / "x.npy")]
    np.save(tmp_path / "x.npy", np.sin(np.arange(600, dtype=np.float32) / 7))
    assert train(cfg)["steps"] == 1
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["output_dir"] == str(tmp_path / "run")


def test_unusable_evaluation_data_is_refused_before_training(tmp_path):
    # It failed at the first evaluation, which comes before that step's checkpoint: every step since the last
    # checkpoint was lost (all of them, with the same --save-every and --eval-every).
    np.save(tmp_path / "short.npy", np.arange(5, dtype=np.float32))
    cfg = small_config(
        tmp_path / "run", max_steps=4, eval_every=2, save_every=2, eval_data=[str(tmp_path / "short.npy")]
    )
    with mock.patch.object(Trainer, "train_step", side_effect=AssertionError("trained")):
        with pytest.raises(ValueError, match=r"--eval-data \[.*short.npy'\]: "):
            train(cfg)


def test_evaluation_on_the_training_data_reads_its_files_once(tmp_path):
    # Without --eval-data the evaluation opened the training specs again: every file was parsed twice.
    from timemoe_forecaster.data import readers

    y = np.sin(np.arange(3000) / 9.0) + np.random.default_rng(0).normal(0, 0.1, 3000)
    pd.DataFrame({"a": y, "b": y[::-1].copy()}).to_csv(tmp_path / "d.csv", index=False)
    cfg = small_config(tmp_path / "run", data=[str(tmp_path / "d.csv")], max_steps=2, log_every=2, eval_every=2)
    with mock.patch.object(readers, "read_frame", wraps=readers.read_frame) as read:
        train(cfg)
    assert read.call_count == 1
    assert np.isfinite(read_metrics(tmp_path / "run")[-1]["eval_loss"])


def test_synthetic_specs_with_options_follow_the_seed_and_evaluate_on_other_series():
    # Any option on a synthetic spec dropped the run's seed (always seed 0), so --seed changed nothing and the
    # evaluation drew the training series.
    from timemoe_forecaster.train.trainer import held_out_view

    for spec, seed, own in (("synthetic", 7, None), ("synthetic#num_series=50", 7, None), ("synthetic:3", 7, 3)):
        train_source = open_data([spec], seed)[0]
        eval_source = held_out_view([train_source])[0]
        assert train_source.seed == (seed if own is None else own)
        assert eval_source.seed != train_source.seed
        assert not np.array_equal(train_source[0], eval_source[0])
    assert open_data(["synthetic#seed=4&max_length=64"], 7)[0].seed == 4
    kinds = open_data(["synthetic#kinds=arma;seasonal&kind_weights=1;3"], 0)[0]
    assert kinds.kinds == ("arma", "seasonal") and {kinds.kind(i) for i in range(40)} == {"arma", "seasonal"}


def test_fused_dispatch_where_it_cannot_run_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--moe-dispatch fused needs a CUDA device"):
        train(small_config(moe_dispatch="fused", max_steps=1))


def test_a_trainer_state_without_what_a_resume_reads_is_named(tmp_path):
    # A state file that loads but lacks keys failed with a bare KeyError ('num_shards') from inside the resume.
    train(small_config(tmp_path, max_steps=2))
    path = ckpt.latest_checkpoint(tmp_path)
    torch.save({"step": 2}, path / ckpt.TRAINER_FILE)
    with pytest.raises(ValueError, match=r"trainer_state.pt is not a trainer state .*num_shards.*delete .*step_0+2"):
        train(small_config(tmp_path, max_steps=4, resume=True))

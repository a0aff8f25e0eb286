"""train_on_series: the fine-tuning entry point of the estimators and the benchmarks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster.train import train_on_series


def sine(n=400, period=24, level=50.0, amplitude=10.0):
    t = np.arange(n)
    return level + amplitude * np.sin(2 * np.pi * t / period)


def test_loss_falls_on_a_sine_and_model_ends_in_eval_mode():
    model = make_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    result = train_on_series(model, [sine()], steps=30, lr=1e-2, batch_size=8, max_length=128, seed=1)
    assert result["steps"] == 30 and len(result["losses"]) == 30
    assert result["final_loss"] == result["losses"][-1]
    assert np.mean(result["losses"][-5:]) < 0.8 * np.mean(result["losses"][:5])
    assert not model.training
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained in place
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's torch RNG is left alone


def test_same_seed_same_result_and_nan_runs_are_split():
    y = sine(300)
    y[100:110] = np.nan  # one NaN run: two segments
    runs = []
    for _ in range(2):
        model = make_model()
        runs.append(train_on_series(model, [y, sine(50, 7)], steps=3, batch_size=4, max_length=64, seed=3)["losses"])
    assert runs[0] == runs[1]
    assert all(np.isfinite(runs[0]))


def test_epochs_count_windows():
    # 2 series of 200 points, max_length 64: ceil(200 / 65) = 4 windows each -> 8 windows, batch 4 -> 2 steps/epoch
    result = train_on_series(make_model(), [sine(200), sine(200)], epochs=3, batch_size=4, max_length=64)
    assert result["steps"] == 6


def test_default_is_100_steps_and_short_series_work():
    result = train_on_series(make_model(), [np.array([1.0, 2.0, 3.0, 2.0, 1.0])], batch_size=2, max_length=16)
    assert result["steps"] == 100


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(steps=3, epochs=1), ValueError, "either steps or epochs"),
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(max_length=100_000), ValueError, "max_position_embeddings"),
        # Checked before use: '5' and None failed on a comparison inside, 2.5 only when steps were many.
        (dict(steps=2, warmup_steps=2.5), ValueError, "warmup_steps must be an integer >= 0, got 2.5"),
        (dict(warmup_steps="5"), ValueError, "warmup_steps must be an integer"),
        (dict(progress="no"), TypeError, "progress must be True or False"),  # showed a bar
        (dict(seed=2**70), ValueError, "seed must be a non-negative integer"),  # overflowed inside numpy
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        train_on_series(make_model(), [sine()], **kwargs)


def test_bad_series():
    with pytest.raises(ValueError, match="two finite values close enough"):
        train_on_series(make_model(), [np.array([np.nan, 1.0, np.nan])], steps=1)
    with pytest.raises(TypeError, match="list of 1-D"):
        train_on_series(make_model(), "not a series", steps=1)
    with pytest.raises(ValueError, match="1-D"):
        train_on_series(make_model(), [np.ones((3, 4))], steps=1)
    with pytest.raises(TypeError, match="TimeMoEForPrediction"):
        train_on_series(object(), [sine()], steps=1)


def test_series_given_as_pandas_or_a_list_of_numbers_and_values_that_are_no_numbers(caplog):
    import pandas as pd

    y = sine(200)
    expected = train_on_series(make_model(), [y], steps=2, batch_size=4, max_length=32)["losses"]
    # One series as a pandas Series (load_airline() in the docs) was refused, and a list of numbers was read as
    # that many one-point series ("series 0 must be 1-D, got shape ()").
    for given in (pd.Series(y), list(y), y):
        assert train_on_series(make_model(), given, steps=2, batch_size=4, max_length=32)["losses"] == expected
    with pytest.raises(TypeError, match=r"shape \(200, 1\).*list\(array\.T\)"):
        train_on_series(make_model(), y[:, None], steps=1)
    # Complex values lost their imaginary part, dates became nanoseconds, inf was taken for a missing value.
    with pytest.raises(TypeError, match="series 0 has values of dtype complex128"):
        train_on_series(make_model(), [y + 1j], steps=1)
    with pytest.raises(TypeError, match="series 1 has values of dtype datetime64"):
        train_on_series(make_model(), [y, pd.date_range("2020", periods=50).to_numpy()], steps=1)
    bad = y.copy()
    bad[7] = np.inf
    with pytest.raises(ValueError, match=r"series 0 holds 1 infinite value\(s\) \(first at position 7\)"):
        train_on_series(make_model(), [bad], steps=1)
    # A series with nothing to train on is left out with a warning, not silently.
    sparse = np.full(120, np.nan)
    sparse[[0, 50, 119]] = 1.0
    with caplog.at_level("WARNING", logger="timemoe_forecaster.train.finetune"):
        train_on_series(make_model(), [y, sparse], steps=1, batch_size=4, max_length=32)
    assert "1 of 2 series have no two observations within 33 points" in caplog.text and "(series 1)" in caplog.text


def test_fine_tuning_draws_its_windows_in_the_training_loop(monkeypatch):
    # No worker process or thread for in-memory series, even where "auto" would start one (a GPU).
    from timemoe_forecaster.train import finetune

    seen = []

    class RecordingTrainer(finetune.Trainer):
        def __init__(self, cfg, *args, **kwargs):
            seen.append(cfg.data_prefetch)
            super().__init__(cfg, *args, **kwargs)

    monkeypatch.setattr(finetune, "Trainer", RecordingTrainer)
    train_on_series(make_model(), [sine()], steps=2, batch_size=4, max_length=64)
    assert seen == ["off"]


def test_pieces_fill_short_gaps_split_at_long_ones_and_are_standardised():
    from timemoe_forecaster.train.finetune import MAX_FILLED_GAP, _segments

    every_other = np.full(40, np.nan)
    every_other[::2] = np.arange(20.0)  # observed every other day: no two consecutive finite values
    (piece,) = _segments([every_other])
    assert piece.size == 39 and np.isfinite(piece).all()
    long_gap = np.r_[np.arange(10.0), np.full(MAX_FILLED_GAP + 1, np.nan), np.arange(5.0)]
    assert [p.size for p in _segments([long_gap])] == [10, 5]
    short_gap = np.r_[np.arange(10.0), np.full(MAX_FILLED_GAP, np.nan), np.arange(5.0)]
    assert [p.size for p in _segments([short_gap])] == [10 + MAX_FILLED_GAP + 5]
    for p in _segments([sine(100) * 1e-7, sine(100) + 1e8]):
        assert p.dtype == np.float32 and abs(p.mean()) < 1e-5 and abs(p.std() - 1) < 1e-4


def test_fine_tuning_is_equivariant_to_level_and_scale():
    # float32 steps by 8 at a level of 1e8, and windows with a spread under 1e-5 met an absolute std floor:
    # both trained on other shapes than the same series at unit scale.
    y = sine(200)
    losses = [
        train_on_series(make_model(), [y * a + b], steps=2, batch_size=4, max_length=32, seed=1)["losses"]
        for a, b in [(1.0, 0.0), (1.0, 1e8), (1e-7, 0.0), (1e200, 0.0), (1e-200, 0.0)]
    ]
    for other in losses[1:]:  # at 1e+-200 the std over/underflowed and every piece became zeros
        np.testing.assert_allclose(other, losses[0], rtol=1e-4)


def test_a_max_length_under_16_trains():
    result = train_on_series(make_model(), [sine(100)], steps=1, batch_size=2, max_length=8)
    assert result["steps"] == 1


def test_the_default_max_length_fits_a_small_model():
    from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction

    small = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny", max_position_embeddings=64))
    assert train_on_series(small, [sine(300)], steps=1, batch_size=2)["steps"] == 1  # 512 would exceed 64


def test_the_model_records_the_longest_window_it_was_trained_on_as_its_default_context(tmp_path):
    model = make_model()
    assert model.config.default_context_length is None  # a fresh model: its whole window
    train_on_series(model, [sine(300), sine(50)], steps=1, batch_size=2, max_length=64)
    assert model.config.default_context_length == 64
    train_on_series(model, [sine(200)], steps=1, batch_size=2, max_length=256)  # series shorter than max_length
    assert model.config.default_context_length == 199  # 200 points: 199 of context before the last
    model.save_pretrained(tmp_path)
    from timemoe_forecaster import TimeMoEForPrediction

    assert TimeMoEForPrediction.from_pretrained(tmp_path).config.default_context_length == 199
    # Much shorter series set no default below 128 points (nor below max_length): fine-tuned on 2-point series,
    # every later forecast read 1 point and came out flat.
    train_on_series(model, [sine(2), sine(3)], steps=1, batch_size=2, max_length=512)
    assert model.config.default_context_length == 128
    train_on_series(model, [sine(12)], steps=1, batch_size=2, max_length=64)
    assert model.config.default_context_length == 64
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        train_on_series(model, [sine(300)], steps=1, batch_size=2, max_length=1)


def test_a_named_checkpoint_fine_tuned_no_longer_calls_itself_by_its_name():
    # Fine-tuned through an estimator and saved, the embedded default still called itself the default, "pretrained".
    model = make_model()
    model.config.extra = {"timemoe_forecaster": {"name": "ours v2", "status": "pretrained", "training": "recipe"}}
    train_on_series(model, [sine(300)], steps=1, batch_size=2, max_length=64)
    meta = model.config.extra["timemoe_forecaster"]
    assert meta == {"status": "trained further from ours v2", "trained_from": "ours v2", "default_context_length": 64}


def test_short_members_of_a_panel_are_trained_on():
    # With one series of 17 points or more, min_length became 17 and every shorter series got zero weight:
    # 30 short members changed nothing.
    rng = np.random.default_rng(0)
    long = [rng.normal(size=200).cumsum()]
    short = [rng.normal(size=12).cumsum() for _ in range(30)]
    settings = dict(steps=3, batch_size=8, max_length=64, seed=0)
    alone = train_on_series(make_model(), long, **settings)["losses"]
    together = train_on_series(make_model(), long + short, **settings)["losses"]
    assert together != alone


def test_a_refused_setting_leaves_the_model_where_it_was():
    model = make_model()
    with pytest.raises(ValueError, match="lr"):
        train_on_series(model, [sine(100)], steps=1, lr=-1.0)
    # The model was moved to meta (weights gone) before the lr check; the meta device itself is refused now.
    with pytest.raises(ValueError, match="device='meta' holds no values"):
        train_on_series(model, [sine(100)], steps=1, lr=-1.0, device="meta")
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        train_on_series(model, [sine(100)], steps=1, device="gpu")  # was torch's RuntimeError
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train_on_series(model, [sine(100)], steps=1, device="cuda")


def test_a_frozen_model_is_a_clear_error():
    model = make_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter of the model requires grad"):
        train_on_series(model, [sine(100)], steps=1)  # was torch's "optimizer got an empty parameter list"


def test_training_a_model_that_shares_the_checkpoint_cache_is_refused(tmp_path):
    # An estimator's model_ aliases the cached checkpoint tensors. The old error advised requires_grad_(True),
    # after which fine-tuning it changed the forecasts of every estimator (and every later load) of that checkpoint.
    import copy

    from timemoe_forecaster.loading import load_model, private_copy, shares_cached_weights
    from timemoe_forecaster.train.config import TrainConfig
    from timemoe_forecaster.train.parallel import DistContext
    from timemoe_forecaster.train.trainer import Trainer

    make_model().save_pretrained(tmp_path)
    first, second = load_model(tmp_path, device="cpu"), load_model(tmp_path, device="cpu")
    x = torch.randn(1, 32)
    before = second.forecast(x, 4)
    first.requires_grad_(True)
    with pytest.raises(ValueError, match="checkpoint cache's.*private_copy"):
        train_on_series(first, [sine(100)], steps=2, lr=0.1)
    with pytest.raises(ValueError, match="checkpoint cache's"):
        Trainer(TrainConfig(max_steps=1), DistContext(device=torch.device("cpu")), first, [None])
    torch.testing.assert_close(second.forecast(x, 4), before, rtol=0, atol=0)
    # Copies own their tensors and train.
    for copied in (private_copy(first), copy.deepcopy(first).requires_grad_(True)):
        assert not shares_cached_weights(copied)
        train_on_series(copied, [sine(100)], steps=2, lr=0.1)
    torch.testing.assert_close(load_model(tmp_path, device="cpu").forecast(x, 4), before, rtol=0, atol=0)


def test_a_copy_is_not_taken_for_shared_once_the_cache_has_freed_its_memory(tmp_path):
    # The first guard stored the cache's addresses on the model; a deepcopy kept them, and once the cache entry was
    # freed its new tensors could land at those addresses and be refused as shared.
    import copy
    import gc

    from timemoe_forecaster import loading

    make_model().save_pretrained(tmp_path)
    model = loading.load_model(tmp_path, device="cpu")
    copied = copy.deepcopy(model).requires_grad_(True)
    addresses = {p.data_ptr() for p in model.parameters()}
    del model
    loading._cached_weights.cache_clear()
    gc.collect()
    for _ in range(20):  # new tensors until one reuses a freed address (the allocator hands them back)
        copied.double().float()
        if addresses & {p.data_ptr() for p in copied.parameters()}:
            break
    assert not loading.shares_cached_weights(copied)
    train_on_series(copied, [sine(100)], steps=1)


def test_a_fine_tune_that_diverges_is_an_error_not_a_model_that_forecasts_nan():
    # lr=1e10: the first update is finite but leaves weights that overflow the next forward; every later step
    # was skipped as non-finite and fit returned normally, so the first predict blamed the dtype (float16?).
    with pytest.raises(ValueError, match=r"fine-tuning diverged: the loss is non-finite from step 2 of 3.*lr=1e\+10"):
        train_on_series(make_model(), [sine(100)], steps=3, batch_size=4, max_length=32, lr=1e10)
    # One step: the loss of the only step was finite, and nothing looked at the weights it wrote (they score the
    # training window as NaN).
    from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction

    torch.manual_seed(0)
    model = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match=r"score the training data as NaN/inf after the last step of 1 .*lr=1e\+10"):
        train_on_series(model, [np.sin(np.arange(100) / 5)], steps=1, batch_size=4, max_length=32, lr=1e10)
    result = train_on_series(make_model(), [sine(100)], steps=3, batch_size=4, max_length=32, lr=1e-3)
    assert np.isfinite(result["losses"]).all()


def test_a_fine_tune_whose_steps_were_skipped_is_an_error_though_its_losses_look_finite(caplog):
    # lr=1e3: from step 7 on, every loss is finite but the gradients are NaN, so the trainer skipped each step; the
    # run ended on those weights (a model that forecast every series' mean) and fit returned normally.
    series = [100 + 10 * np.sin(np.arange(80) / 4) + np.arange(80)]
    settings = dict(steps=10, batch_size=4, max_length=32)
    with pytest.raises(ValueError, match=r"diverged: 4 of 10 steps had non-finite gradients .*\(steps 7, 8, 9, 10\)"):
        train_on_series(make_model(), series, lr=1e3, **settings)
    result = train_on_series(make_model(), series, lr=1e-3, **settings)
    assert result["skipped_steps"] == 0 and result["steps"] == 10


def test_one_skipped_step_at_the_end_is_a_warning_two_are_an_error(caplog):
    from timemoe_forecaster.train.finetune import _check_steps_taken

    def history(*skipped):
        return [{"step": k + 1, "skipped": k + 1 in skipped} for k in range(10)]

    with caplog.at_level("WARNING", logger="timemoe_forecaster.train.finetune"):
        _check_steps_taken(history(10), lr=1e-4)  # a passing spike: the weights are those of step 9
    assert "skipped 1 of 10 steps" in caplog.text
    with pytest.raises(ValueError, match=r"2 of 10 steps .*\(steps 9, 10\)"):
        _check_steps_taken(history(9, 10), lr=1e-4)
    with pytest.raises(ValueError, match="6 of 10 steps"):
        _check_steps_taken(history(1, 2, 3, 5, 7, 8), lr=1e-4)


def test_a_bfloat16_model_fine_tunes_and_comes_back_in_bfloat16():
    # Trained in float32 master weights and cast back; the divergence check then scores a window in the model's
    # own dtype (a float32 window failed against bf16 weights).
    model = make_model().to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_on_series(model, [sine(100)], steps=2, batch_size=4, max_length=32, lr=1e-3)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert len(changed) > len(before) // 2  # the trained weights came back, rounded to bf16
    assert np.isfinite(result["losses"]).all()
    assert next(model.parameters()).dtype == torch.bfloat16

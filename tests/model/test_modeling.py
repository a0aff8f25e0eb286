import numpy as np
import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster.forecast import chunk_rows, head_schedule
from timemoe_forecaster.model.modeling import count_loss_points, horizon_targets, multi_horizon_loss


def naive_forecast(model, context, horizon):
    """Full recomputation at every step, no cache: the definition the cached decoder must match."""
    seq = context.clone()
    out = []
    for head_idx, kept in head_schedule(model.config.horizon_lengths, horizon):
        hidden = model(seq).hidden_states[:, -1]
        new = model.lm_heads[head_idx](hidden)[:, :kept]
        out.append(new)
        seq = torch.cat([seq, new], dim=1)
    return torch.cat(out, dim=1)


def test_head_schedule_is_greedy_largest_head_first():
    heads = [1, 8, 32, 64]
    assert head_schedule(heads, 100) == [(3, 64), (2, 32), (0, 1), (0, 1), (0, 1), (0, 1)]
    assert head_schedule(heads, 8) == [(1, 8)]
    assert head_schedule([4, 16], 3) == [(0, 3)]  # smaller than every head: smallest head, cut


@pytest.mark.parametrize("horizon", [1, 7, 8, 40, 100])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_kv_cached_forecast_equals_full_recomputation(horizon, backend):
    model = make_model(attn_backend=backend)
    context = torch.randn(2, 30)
    assert torch.allclose(model.forecast(context, horizon), naive_forecast(model, context, horizon), atol=1e-4)


def test_left_padded_batch_equals_each_row_alone():
    model = make_model()
    a, b = torch.randn(25), torch.randn(12)
    batch = torch.zeros(2, 25)
    batch[0], batch[1, 13:] = a, b
    batch[1, :13] = float("nan")  # whatever sits in the padding is ignored
    mask = torch.ones(2, 25, dtype=torch.long)
    mask[1, :13] = 0
    together = model.forecast(batch, 70, attention_mask=mask)
    assert torch.allclose(together[0], model.forecast(a[None], 70)[0], atol=1e-5)
    assert torch.allclose(together[1], model.forecast(b[None], 70)[0], atol=1e-5)


def test_a_batch_padded_past_the_position_limit_forecasts_when_every_row_fits():
    # The padded width (30) was checked against the limit (16), although no row holds more than 16 points.
    model = make_model(max_position_embeddings=16)
    a, b = torch.randn(16), torch.randn(5)
    batch = torch.zeros(2, 30)
    batch[0, -16:], batch[1, -5:] = a, b
    mask = torch.zeros(2, 30, dtype=torch.long)
    mask[0, -16:], mask[1, -5:] = 1, 1
    together = model.forecast(batch, 9, attention_mask=mask)
    assert torch.allclose(together[0], model.forecast(a[None], 9)[0], atol=1e-5)
    assert torch.allclose(together[1], model.forecast(b[None], 9)[0], atol=1e-5)
    mask[1, -17:] = 1  # now one row holds 17 points
    with pytest.raises(ValueError, match="context length 17 exceeds the model's limit of 16 points"):
        model.forecast(batch, 9, attention_mask=mask)
    with pytest.raises(ValueError, match="context length 30 exceeds the model's limit of 16 points"):
        model.forecast(batch, 9)  # without a mask every column is a point
    mask[1, -17:] = 0
    mask[1, -5:] = 1
    batch[1, -2] = float("nan")  # a NaN at a real position is named as before
    with pytest.raises(ValueError, match="context holds NaN or inf at unmasked positions"):
        model.forecast(batch, 9, attention_mask=mask)


def contexts_and_mask(rows: int, length: int, padded: dict[int, int] | None):
    """Random contexts [rows, length] and, given {row: points}, a mask that left-pads those rows (else None)."""
    mask = None
    if padded:
        mask = torch.ones(rows, length, dtype=torch.long)
        for row, points in padded.items():
            mask[row, :points] = 0
    return torch.randn(rows, length), mask


@pytest.mark.parametrize("with_padding", [False, True])
def test_forecasts_never_read_unwritten_cache_positions(monkeypatch, with_padding):
    # The cache is allocated uninitialised; poisoned with NaN, no forecast may change (chunked prefill,
    # several passes, left padding and decode steps all included).
    from timemoe_forecaster import forecast as forecast_module

    model = make_model()
    context, mask = contexts_and_mask(5, 20, {1: 7} if with_padding else None)
    expected = model.forecast(context, 75, attention_mask=mask, max_batch_tokens=40)
    real_init = forecast_module.KVCache.__init__

    def poisoned_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        for layer in self.layers:
            layer.k.fill_(float("nan"))
            layer.v.fill_(float("nan"))

    monkeypatch.setattr(forecast_module.KVCache, "__init__", poisoned_init)
    got = model.forecast(context, 75, attention_mask=mask, max_batch_tokens=40)
    assert torch.isfinite(got).all()
    assert torch.equal(got, expected)


def test_chunk_rows_covers_the_batch_in_even_chunks_within_the_budget():
    assert chunk_rows(10, 7, None) == [(0, 10)]
    assert chunk_rows(10, 7, 10**6) == [(0, 10)]
    chunks = chunk_rows(1024, 608, 2**18)  # 3 chunks of at most 342 rows
    assert [stop - start for start, stop in chunks] == [342, 342, 340]
    assert all(stop * 608 - start * 608 <= 2**18 for start, stop in chunks)
    assert chunk_rows(3, 100, 1) == [(0, 1), (1, 2), (2, 3)]  # one row per chunk at least


@pytest.mark.parametrize("with_padding", [False, True])
def test_chunked_forecast_equals_the_whole_batch_at_once(with_padding):
    model = make_model()
    context, mask = contexts_and_mask(7, 20, {2: 9, 5: 3} if with_padding else None)
    whole = model.forecast(context, 40, attention_mask=mask, max_batch_tokens=None)
    # 120: prefill in chunks of 4 and 3 rows, one pass. 20: prefill row by row; 40 = 32 + 8 feeds back
    # 32 points, so 52 cached positions per row and passes of at most 160 / 52 -> 3 rows.
    for max_batch_tokens in (120, 20):
        chunked = model.forecast(context, 40, attention_mask=mask, max_batch_tokens=max_batch_tokens)
        assert torch.allclose(whole, chunked, atol=1e-5)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        model.forecast(context, 40, max_batch_tokens=0)
    # A numpy integer is an integer (as for the horizon); a numpy mask is a clear error, not an AttributeError.
    np_int = model.forecast(context, 40, attention_mask=mask, max_batch_tokens=np.int64(120))
    assert torch.equal(np_int, model.forecast(context, 40, attention_mask=mask, max_batch_tokens=120))
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor, got ndarray"):
        model.forecast(context, 40, attention_mask=np.ones(tuple(context.shape)))


def test_a_cpu_forecast_chunks_by_the_cpu_budget(monkeypatch):
    # The GPU-sized 2^16 points per prefill chunk cost a CPU memory and time: 64 series of 3,072 points took
    # 2.75 GiB and 29 s, at 2^12 0.65 GiB and 24 s.
    from timemoe_forecaster import forecast as forecast_module
    from timemoe_forecaster.model.modeling import CPU_MAX_BATCH_TOKENS

    seen = []
    real = forecast_module.chunk_rows
    monkeypatch.setattr(forecast_module, "chunk_rows", lambda b, t, m: seen.append(m) or real(b, t, m))
    model = make_model()
    context, mask = contexts_and_mask(3, 20, {1: 5})
    auto = model.forecast(context, 8, attention_mask=mask)
    cpu = CPU_MAX_BATCH_TOKENS
    assert cpu in seen and set(seen) <= {cpu, forecast_module.CACHE_CHUNKS * cpu}  # prefill chunks, cache passes
    assert torch.equal(auto, model.forecast(context, 8, attention_mask=mask, max_batch_tokens=CPU_MAX_BATCH_TOKENS))
    with pytest.raises(ValueError, match="a positive integer, None or 'auto'"):
        model.forecast(context, 8, max_batch_tokens="all")


def test_a_pass_caches_at_most_its_byte_budget_of_keys_and_values(monkeypatch):
    from timemoe_forecaster import TimeMoEForPrediction
    from timemoe_forecaster import forecast as forecast_module
    from timemoe_forecaster.config import TimeMoEConfig

    def per_pass(size, dtype, tokens=2**16):
        with torch.device("meta"):
            model = TimeMoEForPrediction(TimeMoEConfig.from_preset(size))
        return forecast_module.cache_positions_per_pass(model, dtype, tokens)

    assert per_pass("base", torch.bfloat16) == 8 * 2**16  # 18 KiB per position: the positions bound holds
    assert per_pass("ultra", torch.bfloat16) == 2**34 // (36 * 2 * 1024 * 2)  # 144 KiB per position: 16 GiB
    assert per_pass("ultra", torch.float32) == 2**34 // (36 * 2 * 1024 * 4)
    assert per_pass("base", torch.float32, None) is None
    # A model whose cache outgrows the budget splits the rows into more passes; the forecasts stay the same.
    model = make_model()
    context = torch.randn(7, 20)
    whole = model.forecast(context, 40, max_batch_tokens=None)
    passes = []
    real = forecast_module._forecast_rows
    monkeypatch.setattr(forecast_module, "_forecast_rows", lambda m, x, *a: passes.append(len(x)) or real(m, x, *a))
    monkeypatch.setattr(forecast_module, "CACHE_BYTES_PER_TOKEN", 1)  # one row per pass
    split = model.forecast(context, 40, max_batch_tokens=120)
    assert passes == [1] * 7
    assert torch.allclose(whole, split, atol=1e-5)


def test_forecast_runs_in_eval_mode_and_restores_every_modules_mode():
    model = make_model(attention_dropout=0.5)
    context = torch.randn(2, 16)
    expected = model.forecast(context, 9)  # eval: dropout off
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    assert torch.equal(model.forecast(context, 9), expected)
    assert model.training and model.model.layers[1].training and not model.model.layers[0].training


def test_forecast_leaves_the_callers_tensors_alone():
    model = make_model()
    context = torch.randn(3, 16)
    mask = torch.ones(3, 16, dtype=torch.long)
    before, mask_before = context.clone(), mask.clone()
    model.forecast(context, 9, attention_mask=mask)
    assert torch.equal(context, before) and torch.equal(mask, mask_before)
    assert context.shape == (3, 16)


def test_forecast_is_deterministic_and_shaped():
    model = make_model()
    context = torch.randn(4, 10, dtype=torch.float64)
    out = model.forecast(context, 13)
    assert out.shape == (4, 13) and out.dtype == torch.float32
    assert torch.equal(out, model.forecast(context, 13))
    assert torch.equal(out, model.forecast(context, np.int64(13)))  # numpy integers are horizons too


def test_a_float64_model_forecasts_like_the_float32_one():
    # The grouped expert kernel takes no float64; a model.double() now falls back to the loop.
    model = make_model()
    context = torch.randn(3, 20)
    expected = model.forecast(context, 5)
    torch.testing.assert_close(model.double().forecast(context, 5), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(context=torch.randn(2, 5), horizon=0), "horizon"),
        (dict(context=torch.randn(2, 5), horizon=2.5), "horizon"),
        (dict(context=torch.randn(5), horizon=3), "shape"),
        (dict(context=torch.tensor([[1.0, float("nan"), 2.0]]), horizon=3), "NaN"),
        (dict(context=torch.randint(0, 5, (2, 5)), horizon=3), "floating"),
        (dict(context=torch.randn(1, 5000), horizon=3), "limit"),
        # Right padding and holes made the forecast continue a padded position, with no error.
        (dict(context=torch.randn(1, 4), horizon=3, attention_mask=torch.tensor([[1, 1, 1, 0]])), "left only"),
        (dict(context=torch.randn(1, 4), horizon=3, attention_mask=torch.tensor([[0, 1, 0, 1]])), "left only"),
    ],
)
def test_bad_forecast_input_gives_clear_errors(kwargs, message):
    model = make_model()
    with pytest.raises((ValueError, TypeError), match=message):
        model.forecast(**kwargs)


def test_values_that_overflow_the_model_dtype_are_named_not_called_nan():
    # A finite context was refused as "NaN or inf": the inf came from casting it to float16.
    model = make_model().half()
    context = torch.randn(2, 20) * 1e5
    with pytest.raises(ValueError, match=r"overflow the model's dtype torch.float16 .*scale them first"):
        model.forecast(context, 3)
    mask = torch.ones(2, 20)
    mask[:, :4] = 0
    context[:, 4:] = torch.randn(2, 16)  # the big values sit under the mask: nothing to say
    context[0, 0] = float("nan")
    assert model.forecast(context, 3, attention_mask=mask).shape == (2, 3)
    context[1, 9] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf at unmasked"):
        model.forecast(context, 3, attention_mask=mask)


def test_multichannel_model_forecasts_every_channel():
    model = make_model(input_size=3)
    context = torch.randn(2, 12, 3)
    out = model.forecast(context, 10)
    assert out.shape == (2, 10, 3)
    seq, expected = context.clone(), []
    for head_idx, kept in head_schedule(model.config.horizon_lengths, 10):  # full recomputation, no cache
        new = model.lm_heads[head_idx](model(seq).hidden_states[:, -1]).view(2, -1, 3)[:, :kept]  # as the loss reads
        expected.append(new)
        seq = torch.cat([seq, new], dim=1)
    torch.testing.assert_close(out, torch.cat(expected, dim=1), rtol=1e-4, atol=1e-4)


def test_horizon_targets_shift_labels_and_pad_with_zero():
    labels = torch.arange(1.0, 6.0).view(1, 5, 1)
    targets = horizon_targets(labels, 3)[0, :, :, 0]
    assert targets.tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 0], [5, 0, 0]]


def test_loss_mask_excludes_points_and_normalizers_rescale():
    model = make_model()
    x, labels = torch.randn(2, 20), torch.randn(2, 20)
    mask = torch.ones(2, 20)
    full = model(x, labels=labels, loss_mask=mask).ar_loss
    changed = labels.clone()
    changed[1, 15:] = 1e3
    mask[1, 15:] = 0
    masked_a = model(x, labels=labels, loss_mask=mask).ar_loss
    masked_b = model(x, labels=changed, loss_mask=mask).ar_loss
    assert torch.isclose(masked_a, masked_b) and not torch.isclose(full, masked_a)
    counts = count_loss_points(model.config.horizon_lengths, labels, mask)
    doubled = model(x, labels=labels, loss_mask=mask, loss_normalizers=[2 * c for c in counts]).ar_loss
    assert torch.isclose(doubled, masked_a / 2)


def test_left_padding_leaves_the_loss_and_its_point_count_unchanged():
    # A padded position's 8/32/64-step heads were scored on the first real points: left padding changed the loss.
    model = make_model()
    x, labels = torch.randn(2, 20), torch.randn(2, 20)
    plain = model(x, labels=labels, loss_mask=torch.ones(2, 20)).ar_loss

    def pad(t):
        return torch.cat([torch.full((2, 10), float("nan")), t], dim=1)  # padding may hold NaN, labels too

    real = torch.cat([torch.zeros(2, 10), torch.ones(2, 20)], dim=1)
    padded = model(pad(x), attention_mask=real, labels=pad(labels), loss_mask=real).ar_loss
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-7)
    counts = count_loss_points(model.config.horizon_lengths, pad(labels), real, attention_mask=real)
    unpadded = count_loss_points(model.config.horizon_lengths, labels, torch.ones(2, 20))
    assert [int(c) for c in counts] == [int(c) for c in unpadded]


def test_right_padding_scores_a_row_as_left_padding_and_no_padding_do():
    # Right-padded labels (NaN here) were targets of the last real positions' longer heads: the loss was NaN. A
    # padded label is now a zero past the row's end, as without padding; a batch of padding only has no loss.
    model = make_model()
    x, labels = torch.randn(1, 16), torch.randn(1, 16)
    nan4, ones, zeros = torch.full((1, 4), float("nan")), torch.ones(1, 16), torch.zeros(1, 4)
    plain = model(x, labels=labels)
    right = model(
        torch.cat([x, nan4], 1), attention_mask=torch.cat([ones, zeros], 1), labels=torch.cat([labels, nan4], 1)
    )
    left = model(
        torch.cat([nan4, x], 1), attention_mask=torch.cat([zeros, ones], 1), labels=torch.cat([nan4, labels], 1)
    )
    torch.testing.assert_close(right.ar_loss, plain.ar_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(left.ar_loss, plain.ar_loss, rtol=1e-5, atol=1e-7)
    empty = model(x, attention_mask=torch.zeros(1, 16), labels=labels)
    assert empty.loss.item() == 0.0  # the balance loss divided by zero tokens: NaN


def test_packed_loss_does_not_depend_on_how_documents_are_numbered():
    # Past the row's end the document-id targets were padded with 0, so with no loss mask document 0's heads
    # counted the zeros there as its own points and document 3's did not.
    model = make_model()
    x, labels = torch.randn(1, 16), torch.randn(1, 16)
    losses = []
    for first, second in ((0, 1), (1, 2), (3, 0)):
        seq_ids = torch.tensor([[first] * 8 + [second] * 8])
        losses.append(model(x, seq_ids=seq_ids, labels=labels).ar_loss)
        counts = count_loss_points(model.config.horizon_lengths, labels, None, seq_ids=seq_ids)
        # Each of the 8 positions t of a document has min(h, 8 - t) targets of its own for an h-step head.
        own = [2 * sum(min(h, 8 - t) for t in range(8)) for h in model.config.horizon_lengths]
        assert [int(c) for c in counts] == own
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(losses[2], losses[0])


def test_a_two_dimensional_loss_mask_weighs_every_channel_as_a_three_dimensional_one():
    from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction

    torch.manual_seed(0)
    model = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny", input_size=3))
    x, labels = torch.randn(2, 12, 3), torch.randn(2, 12, 3)
    mask = torch.ones(2, 12)
    mask[1, 8:] = 0
    flat = model(x, labels=labels, loss_mask=mask).ar_loss  # was 3x the 3-D mask's loss
    torch.testing.assert_close(flat, model(x, labels=labels, loss_mask=mask[..., None].expand(2, 12, 3)).ar_loss)


def test_nan_labels_under_a_zero_loss_mask_do_not_reach_the_loss():
    model = make_model()
    x, labels = torch.randn(1, 20), torch.randn(1, 20)
    mask = torch.ones(1, 20)
    mask[0, :5] = 0
    expected = model(x, labels=labels, loss_mask=mask).ar_loss
    labels[0, :5] = float("nan")
    got = model(x, labels=labels, loss_mask=mask)
    assert torch.isfinite(got.loss) and torch.equal(got.ar_loss, expected)
    got.loss.backward()  # the Huber gradient at a NaN target was NaN, and 0 x NaN stayed NaN
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    labels[0, 7] = float("nan")  # a NaN that counts still shows
    assert torch.isnan(model(x, labels=labels, loss_mask=mask).ar_loss)


def test_multi_horizon_loss_is_mean_of_per_head_huber():
    labels = torch.randn(1, 6)
    preds = [torch.randn(1, 6, 1), torch.randn(1, 6, 2)]
    mask = torch.ones(1, 6)
    loss = multi_horizon_loss(preds, labels, mask)
    targets = horizon_targets(labels.unsqueeze(-1), 2)[..., 0]
    weight2 = horizon_targets(mask.unsqueeze(-1), 2)[..., 0]
    huber = torch.nn.functional.huber_loss
    head1 = huber(preds[0][..., 0], labels, delta=2.0)
    head2 = (huber(preds[1], targets, delta=2.0, reduction="none") * weight2).sum() / weight2.sum()
    assert torch.isclose(loss, (head1 + head2) / 2)


def test_aux_loss_is_added_with_its_factor_and_dense_has_none():
    model = make_model()
    x, labels = torch.randn(2, 12), torch.randn(2, 12)
    out = model(x, labels=labels)
    assert torch.isclose(out.loss, out.ar_loss + model.config.router_aux_loss_factor * out.aux_loss)
    dense = make_model(use_dense=True)
    out = dense(x, labels=labels)
    assert out.aux_loss is None and torch.equal(out.loss, out.ar_loss)


def test_training_step_reduces_loss_and_gradients_reach_every_parameter():
    model = make_model().train()
    x = torch.sin(torch.linspace(0, 12, 41)).repeat(4, 1)
    inputs, labels = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = model(inputs, labels=labels).loss
        if first is None:
            loss.backward()
            no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert no_grad == []
        else:
            loss.backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_bf16_model_runs_and_is_close_to_fp32():
    model = make_model()
    context = torch.randn(2, 24)
    ref = model.forecast(context, 16)
    out = model.to(torch.bfloat16).forecast(context, 16)
    assert out.dtype == torch.float32
    assert (out - ref).norm() / ref.norm() < 0.1


def test_kv_cache_is_freed_without_the_garbage_collector():
    # A reference cycle (layer -> cache -> layer) kept each forecast's keys alive until gc ran, and
    # repeated GPU forecasts ran out of memory. Reference counting alone must free them.
    import gc
    import weakref

    from timemoe_forecaster.forecast import KVCache

    gc.disable()
    try:
        cache = KVCache(2, 3, 1, 10, 4, torch.float32, "cpu")
        cache.layer(1).update(torch.ones(3, 1, 4, 4), torch.ones(3, 1, 4, 4))
        cache.advance(4)
        assert cache.length == 4
        keys = weakref.ref(cache.layer(0).k)
        del cache
        assert keys() is None
    finally:
        gc.enable()


def test_compiled_blocks_forecast_like_eager_and_keep_their_keys():
    from timemoe_forecaster.compile import compile_blocks, uncompile_blocks

    # bf16: the grouped MoE path, one graph per shape (fp32 under compile takes the per-expert loop).
    model = make_model().to(torch.bfloat16)
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    expected = model.forecast(x, 20)
    keys = list(model.state_dict())
    compile_blocks(model, backend="aot_eager")
    assert all(block._compiled_call_impl is not None for block in model.model.layers)
    try:
        assert torch.allclose(model.forecast(x, 20), expected, atol=1e-2)
        other = make_model().to(torch.bfloat16).forecast(x[:2], 9)
        assert torch.allclose(model.forecast(x[:2], 9), other, atol=1e-2)
        assert list(model.state_dict()) == keys
    finally:
        uncompile_blocks(model)
    assert all(block._compiled_call_impl is None for block in model.model.layers)
    with pytest.raises(TypeError, match="TimeMoEForPrediction"):
        compile_blocks(torch.nn.Linear(2, 2))


def test_forward_names_wrong_shapes_and_dtypes():
    # These failed deep inside torch: a float64 batch from numpy as "expected m1 and m2 to have the same dtype",
    # labels one point short as an invalid reshape of the predictions, a short mask as a broadcast error.
    model = make_model().train()
    x = torch.randn(4, 20)
    cases = [
        (
            dict(inputs=x.double(), labels=x.double()),
            TypeError,
            r"inputs are torch.float64 .*weights are torch.float32",
        ),
        (dict(inputs=x, labels=torch.randn(4, 19)), ValueError, r"labels must have the shape of inputs \(4, 20\)"),
        (dict(inputs=x, attention_mask=torch.ones(4, 19)), ValueError, r"attention_mask must have shape \(4, 20\)"),
        (dict(inputs=torch.randn(20)), ValueError, r"inputs must have shape \[batch, length\], got \(20,\)"),
        (dict(inputs=torch.randn(4, 20, 3)), ValueError, r"inputs must have shape \[batch, length\]"),
        (dict(inputs=torch.arange(20).view(1, 20)), TypeError, "floating-point"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            model(**kwargs)
    # Still fine: labels [B, S] or [B, S, 1] for one channel, and float32 or bf16 inputs under autocast.
    assert model(x, labels=torch.randn(4, 20, 1)).loss.isfinite()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x, labels=x).loss.isfinite() and model(x.bfloat16(), labels=x).loss.isfinite()
        with pytest.raises(TypeError, match="inputs are torch.float64"):  # autocast does not cast float64
            model(x.double())

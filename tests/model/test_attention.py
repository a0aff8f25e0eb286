import pytest
import torch
import torch.nn.functional as F

from tests.helpers import make_model
from timemoe_forecaster.model.modeling import build_attention_mask, positions_from_seq_ids


def rows(batch=3, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, generator=g)


@pytest.mark.parametrize("num_kv_heads", [2, 1])
def test_sdpa_equals_eager_on_plain_rows(num_kv_heads):
    eager = make_model(attn_backend="eager", num_key_value_heads=num_kv_heads)
    sdpa = make_model(attn_backend="sdpa", num_key_value_heads=num_kv_heads)
    x = rows()
    assert torch.allclose(eager(x).hidden_states, sdpa(x).hidden_states, atol=1e-5)


def test_backends_agree_with_padding_and_padding_does_not_leak():
    eager, sdpa = make_model(attn_backend="eager"), make_model(attn_backend="sdpa")
    x = rows()
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :7] = 0
    x_nan = x.clone()
    x_nan[0, :7] = float("nan")  # padding may hold anything
    h_eager = eager(x_nan, attention_mask=mask).hidden_states
    h_sdpa = sdpa(x_nan, attention_mask=mask).hidden_states
    assert torch.isfinite(h_sdpa).all()
    assert torch.allclose(h_eager[mask.bool()], h_sdpa[mask.bool()], atol=1e-5)
    alone = sdpa(x[0:1, 7:]).hidden_states[0]
    assert torch.allclose(h_sdpa[0, 7:], alone, atol=1e-5)


def test_packed_rows_equal_separate_rows_on_both_backends():
    a, b = rows(1, 9, seed=1)[0], rows(1, 6, seed=2)[0]
    packed = torch.cat([a, b, torch.zeros(5)])[None]
    seq_ids = torch.tensor([[0] * 9 + [1] * 6 + [-1] * 5])
    attention_mask = (seq_ids >= 0).long()
    for backend in ("eager", "sdpa", "varlen"):
        model = make_model(attn_backend=backend)
        h = model(packed, attention_mask=attention_mask, seq_ids=seq_ids).hidden_states[0]
        assert torch.allclose(h[:9], model(a[None]).hidden_states[0], atol=1e-5), backend
        assert torch.allclose(h[9:15], model(b[None]).hidden_states[0], atol=1e-5), backend


def test_flex_block_mask_matches_the_dense_mask():
    # The flex kernel itself needs a GPU (tests/model/test_attention_gpu.py); its mask rule is checked here
    # with FlexAttention's unfused CPU path, against SDPA with the dense mask of the same rows.
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from timemoe_forecaster.model.attention import flex_block_mask

    seq_ids = torch.tensor([[0] * 5 + [1] * 9 + [2] * 2, [0] * 11 + [-1] * 5])
    valid = seq_ids >= 0
    block = flex_block_mask(seq_ids, valid, 16, compile=False)
    dense = build_attention_mask(valid, seq_ids, 16).dense
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 16, 8, generator=g) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": expected on the CPU
        flex = flex_attention(q, k, v, block_mask=block)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    torch.testing.assert_close(flex, sdpa, rtol=1e-5, atol=1e-5)


def test_flex_backend_on_cpu_falls_back_to_sdpa_with_the_same_result():
    a = rows(2, 20)
    seq_ids = torch.tensor([[0] * 12 + [1] * 8, [0] * 20])
    flex, sdpa = make_model(attn_backend="flex"), make_model(attn_backend="sdpa")
    h_flex = flex(a, seq_ids=seq_ids).hidden_states
    torch.testing.assert_close(h_flex, sdpa(a, seq_ids=seq_ids).hidden_states)


def test_positions_restart_per_document():
    seq_ids = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1]])
    assert positions_from_seq_ids(seq_ids).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


def test_mask_for_cached_queries_is_causal_over_all_keys():
    key_valid = torch.tensor([[False, True, True, True, True]])
    mask = build_attention_mask(None, None, 2, key_valid=key_valid).dense[0, 0]
    assert mask.tolist() == [[False, True, True, True, False], [False, True, True, True, True]]


def test_packed_mask_for_varlen_is_built_only_when_a_fallback_reads_it():
    seq_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])
    lazy = build_attention_mask(None, seq_ids, 8, for_varlen=True)
    assert lazy.cu_seqlens.tolist() == [0, 3, 5, 8] and lazy.max_seqlen == 3
    assert not lazy.is_plain_causal
    assert lazy._dense is not None and callable(lazy._dense)  # nothing allocated yet
    eager = build_attention_mask(None, seq_ids, 8)
    assert torch.equal(lazy.dense, eager.dense)  # built on first read, identical to the eager build
    assert not callable(lazy._dense)
    assert eager.dense[0, 0, 4].tolist() == [False, False, False, True, True, False, False, False]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("padded", [False, True])
def test_last_only_forward_equals_the_last_position_of_the_full_forward(backend, padded):
    model = make_model(attn_backend=backend).eval()
    x = rows(3, 20)[..., None]
    valid = torch.ones(3, 20, dtype=torch.bool)
    if padded:
        valid[1, :6] = False
    mask = build_attention_mask(valid if padded else None, None, 20)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full, _ = model.model(x, positions, mask)
        last, _ = model.model(x, positions, mask, last_only=True)
    assert last.shape == (3, 1, full.shape[-1])
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-5)


def test_flex_kernel_options_only_for_measured_gpus_dtypes_and_widths(monkeypatch):
    from types import SimpleNamespace

    from timemoe_forecaster.model import attention

    def fake_q(width, dtype=torch.bfloat16, index=0):
        return SimpleNamespace(device=torch.device("cuda", index), dtype=dtype, shape=(2, 4, 128, width))

    capability = {0: (9, 0), 1: (8, 0)}  # an H100 and an A100
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability[index])
    monkeypatch.setattr(attention, "_TORCH_VERSION", (2, 11))
    monkeypatch.setattr(attention, "_FLEX_TILES", {})
    monkeypatch.setattr(attention, "_FLEX_CHECKED", set())
    assert attention.flex_kernel_options(fake_q(64)) == attention.FLEX_SM90_KERNEL_OPTIONS[64]
    assert attention.flex_kernel_options(fake_q(32, torch.float16)) == attention.FLEX_SM90_KERNEL_OPTIONS[32]
    assert attention.flex_kernel_options(fake_q(128)) is None  # width not measured: inductor's default
    assert attention.flex_kernel_options(fake_q(64, torch.float32)) is None
    assert attention.flex_kernel_options(fake_q(64, index=1)) is None  # the A100: not measured
    # Compiled code only reads the table: a device never prepared gets the defaults.
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    capability[2] = (9, 0)
    assert attention.flex_kernel_options(fake_q(64, index=2)) is None
    attention.prepare_flex_tiles("cuda:2")
    assert attention.flex_kernel_options(fake_q(64, index=2)) == attention.FLEX_SM90_KERNEL_OPTIONS[64]
    monkeypatch.setattr(attention, "_TORCH_VERSION", (2, 10))
    attention.prepare_flex_tiles("cuda:3")  # no per-pass option names before torch 2.11: nothing looked up
    assert 3 not in attention._FLEX_CHECKED


def test_compiled_code_reads_the_flex_tile_table(monkeypatch):
    # What an outer torch.compile traces: a dict lookup keyed by the tensor's device index and width.
    from timemoe_forecaster.model import attention

    monkeypatch.setattr(attention, "_FLEX_TILES", {(None, 8): {"fwd_num_warps": 8}})

    def f(q):
        options = attention.flex_kernel_options(q)
        return q * options["fwd_num_warps"] if options else q

    q = torch.ones(2, 8, dtype=torch.bfloat16)
    torch._dynamo.reset()
    assert torch.compile(f, backend="eager", fullgraph=True)(q).float().sum().item() == 128.0


def test_rotary_angles_are_one_opaque_op_under_compile_and_equal_eager_ones():
    # Under torch.compile the angles must stay an opaque op, or inductor recomputes them inside every layer's
    # rotary kernel. Compiled and eager give the same numbers.
    from timemoe_forecaster.model.layers import RotaryEmbedding

    rotary = RotaryEmbedding(16, 10000.0)
    positions = torch.arange(12).repeat(2, 1)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm

    compiled = torch.compile(lambda p: rotary(p, torch.float32), backend=record, fullgraph=True)
    cos_c, sin_c = compiled(positions)
    targets = [node.target for gm in graphs for node in gm.graph.nodes]
    assert torch.ops.timemoe.rotary_cos_sin.default in targets
    cos_e, sin_e = rotary(positions, torch.float32)
    assert torch.equal(cos_c, cos_e) and torch.equal(sin_c, sin_e)
    assert cos_e.shape == (2, 12, 16) and torch.allclose(cos_e[0, 3, 0], torch.cos(torch.tensor(3.0)))


@pytest.mark.parametrize("num_kv_heads", [2, 1])
def test_joined_qkv_equals_the_three_official_projections_in_every_path(num_kv_heads):
    from timemoe_forecaster.checkpoint import to_official

    model = make_model(num_key_value_heads=num_kv_heads).eval()
    with torch.no_grad():  # the biases start at zero: give them values so that their split counts
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.bias.normal_(0.0, 0.3)
    official = to_official(model.state_dict())
    attn, x = model.model.layers[0].self_attn, torch.randn(3, 10, model.config.hidden_size)
    prefix = "model.layers.0.self_attn"
    q, k, v = (F.linear(x, official[f"{prefix}.{p}_proj.weight"], official[f"{prefix}.{p}_proj.bias"]) for p in "qkv")
    kv = num_kv_heads * model.config.head_dim
    assert k.shape[-1] == v.shape[-1] == kv <= q.shape[-1]  # GQA (1 kv head) and MHA
    with torch.no_grad():
        joined = attn.qkv_proj(x).split(attn.qkv_sizes, dim=-1)
        last_q, last_k, last_v = attn._last_q_kv(x)
    for got, want in zip(joined, (q, k, v), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(last_q, q[:, -1:], atol=1e-6)
    assert torch.allclose(last_k, k, atol=1e-6) and torch.allclose(last_v, v, atol=1e-6)
    # The whole model: the last-position path (forecasting) agrees with the full forward.
    rows_ = rows(3, 20)[..., None]
    positions = torch.arange(20).expand(3, 20)
    with torch.no_grad():
        full, _ = model.model(rows_, positions, build_attention_mask(None, None, 20))
        last, _ = model.model(rows_, positions, build_attention_mask(None, None, 20), last_only=True)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-5)
    # Forecasting runs q/k/v as one GEMM (the joined module), training as three on slices of its weight.
    calls = []
    hook = attn.qkv_proj.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(rows_[..., 0])
    assert calls == [1]
    model(rows_[..., 0]).hidden_states.sum().backward()
    hook.remove()
    assert calls == [1] and attn.qkv_proj.weight.grad is not None and attn.qkv_proj.bias.grad.abs().sum() > 0

import pytest
import torch

from tests.helpers import make_model
from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction
from timemoe_forecaster.compile import compile_blocks
from timemoe_forecaster.cuda_graphs import CUDAGraphForecaster


def test_cuda_graph_forecaster_refuses_a_cpu_model():
    with pytest.raises(ValueError, match="CUDA"):
        CUDAGraphForecaster(make_model())


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    # Same kernels in the same order; cuBLAS may still pick another algorithm under capture.
    return ((got - want).norm() / want.norm()).item() < 1e-2


def _bf16_model(compiled: bool) -> TimeMoEForPrediction:
    torch.manual_seed(0)
    config = TimeMoEConfig.from_preset("base", num_hidden_layers=2)
    model = TimeMoEForPrediction(config).to("cuda", torch.bfloat16).eval()
    return compile_blocks(model) if compiled else model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_replayed_forecasts_equal_model_forecast_for_new_inputs(compiled):
    model = _bf16_model(compiled)
    fast = CUDAGraphForecaster(model, max_batch_tokens=2048)  # prefill in chunks, two passes
    previous = None
    for seed in range(3):  # the first call captures, the others replay with new values
        context = torch.randn(24, 200, generator=torch.Generator().manual_seed(seed)).cuda() * 3
        mask = torch.ones(24, 200, dtype=torch.long, device="cuda")
        mask[3, : 50 + seed] = 0
        got = fast(context, 100)
        assert _close(got, model.forecast(context, 100, max_batch_tokens=2048))
        assert previous is None or not _close(got, previous)  # a replay of stale inputs would fail here
        previous = got
        want = model.forecast(context, 100, attention_mask=mask, max_batch_tokens=2048)
        assert _close(fast(context, 100, attention_mask=mask), want)
    assert len(fast._graphs) == 2  # with and without padding


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_least_recently_used_graphs_are_evicted():
    fast = CUDAGraphForecaster(_bf16_model(False), max_graphs=1)
    fast(torch.randn(4, 64, device="cuda"), 8)
    out = fast(torch.randn(2, 64, device="cuda"), 8)
    assert out.shape == (2, 8) and len(fast._graphs) == 1
    with pytest.raises(ValueError, match="NaN"):
        fast(torch.full((2, 64), float("nan"), device="cuda"), 8)

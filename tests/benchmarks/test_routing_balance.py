import torch

from benchmarks.routing_balance import expert_shares, main
from timemoe_forecaster import TimeMoEConfig


def test_shares_cover_every_layer_and_sum_to_one(capsys):
    shares = expert_shares("tiny", batch=2, seq=32)
    config = TimeMoEConfig.from_preset("tiny")
    assert len(shares) == config.num_hidden_layers
    for share in shares:
        assert share.shape == (config.num_experts,)
        assert torch.isclose(share.sum(), torch.tensor(1.0))
    main(["--size", "tiny", "--seq", "32"])
    assert capsys.readouterr().out.count("max/mean") == config.num_hidden_layers

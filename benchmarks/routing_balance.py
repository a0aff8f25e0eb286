"""How a randomly initialised model routes: each layer's share of assignments per expert (CPU).

Session 17 found that the base model with random weights (the official init, normal with std 0.02, which
``speed.py``'s reference weights also follow) sends nearly every token to two experts in every layer
(pointwise inputs give hidden states that look alike): the training benchmarks time a maximally imbalanced
MoE, for the reference and for us. This prints each layer's shares and max/mean.

    python benchmarks/routing_balance.py --size base --seq 1024
"""

from __future__ import annotations

import argparse

import torch

from timemoe_forecaster import TimeMoEConfig
from timemoe_forecaster.model import moe
from timemoe_forecaster.model.modeling import TimeMoEForPrediction


def expert_shares(size: str, batch: int, seq: int, seed: int = 0) -> list[torch.Tensor]:
    """[E] share of assignments per expert, one tensor per layer, for random weights and random inputs."""
    torch.manual_seed(seed)
    model = TimeMoEForPrediction(TimeMoEConfig.from_preset(size)).eval()
    shares, route = [], moe.route

    def counting_route(router_logits, top_k):
        weights, experts = route(router_logits, top_k)
        counts = torch.bincount(experts.reshape(-1), minlength=router_logits.shape[-1])
        shares.append(counts / counts.sum())
        return weights, experts

    moe.route = counting_route
    try:
        with torch.no_grad():
            model(torch.randn(batch, seq, generator=torch.Generator().manual_seed(seed + 1)))
    finally:
        moe.route = route
    return shares


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    args = parser.parse_args(argv)
    for layer, share in enumerate(expert_shares(args.size, args.batch, args.seq)):
        print(
            f"layer {layer:2d}: {' '.join(f'{s:.3f}' for s in share.tolist())}  max/mean {share.max() * len(share):.2f}"
        )


if __name__ == "__main__":
    main()

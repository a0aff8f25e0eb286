"""How a batch crosses from the data worker process to the trainer: by value (``prefetch._by_value``) against
torch's shared-memory reductions for queues, which pass each tensor's storage as a file descriptor.

Times ``ProcessBatchPrefetcher.get()`` for base-sized batches (4 x 4096 points from a synthetic pool) while the
worker has the next batch ready, as during a GPU step. CPU only, a few seconds:

    python benchmarks/prefetch_transfer_cpu.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timemoe_forecaster.data import SyntheticSource, write_binary_dataset  # noqa: E402
from timemoe_forecaster.train import prefetch  # noqa: E402
from timemoe_forecaster.train.trainer import TrainConfig, make_stream, open_data  # noqa: E402


def time_gets(cfg: TrainConfig, steps: int = 40, step_s: float = 0.03) -> list[float]:
    stream = make_stream(open_data(cfg.data, 0), cfg, 0, 1, 0)
    prefetcher = prefetch.ProcessBatchPrefetcher([stream], depth=2)
    prefetcher.get()
    times = []
    for _ in range(steps):
        time.sleep(step_s)  # the GPU step, during which the worker draws the next batch
        t = time.perf_counter()
        prefetcher.get()
        times.append(time.perf_counter() - t)
    prefetcher.close()
    return times


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    pool = tempfile.mkdtemp()
    write_binary_dataset([SyntheticSource(seed=0)[i] for i in range(300)], pool, num_files=1)
    cfg = TrainConfig(config="base", max_length=4096, batch_size=4, data=[pool])
    by_value = time_gets(cfg)
    identity = lambda obj: obj  # noqa: E731 - tensors left to torch's reductions
    with mock.patch.object(prefetch, "_by_value", identity), mock.patch.object(prefetch, "_from_values", identity):
        shared = time_gets(cfg)
    for label, times in (("by value", by_value), ("shared memory", shared)):
        print(f"{label}: get() median {statistics.median(times) * 1e3:.2f} ms over {len(times)} batches")


if __name__ == "__main__":
    main()

"""Background data prefetch (thread and process): same batches in the same order, nothing skipped on close,
errors surface in the training process."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from timemoe_forecaster.train.prefetch import BatchPrefetcher, ProcessBatchPrefetcher, start_prefetcher

PREFETCHERS = pytest.mark.parametrize("prefetcher_cls", [BatchPrefetcher, ProcessBatchPrefetcher])


class CountingStream:
    """Batch ``i`` holds the value i; the state is the next i. Optionally fails at ``fail_at``."""

    def __init__(self, offset: int = 0, fail_at: int | None = None) -> None:
        self.i, self.offset, self.fail_at = 0, offset, fail_at

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.i == self.fail_at:
            raise ValueError(f"bad window {self.i}")
        self.i += 1
        return {"inputs": torch.full((2,), float(self.offset + self.i - 1))}

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def values(item) -> list[float]:
    return [b["inputs"][0].item() for b in item[1]]


@PREFETCHERS
def test_batches_come_in_order_with_the_states_before_them(prefetcher_cls):
    streams = [CountingStream(), CountingStream(offset=100)]
    prefetcher = prefetcher_cls(streams, depth=2)
    items = [prefetcher.get() for _ in range(5)]
    prefetcher.close()
    assert [values(item) for item in items] == [[k, 100 + k] for k in range(5)]
    assert [item[0] for item in items] == [[{"i": k}, {"i": k}] for k in range(5)]


@PREFETCHERS
def test_close_puts_the_streams_back_at_the_first_batch_not_handed_out(prefetcher_cls):
    streams = [CountingStream()]
    prefetcher = prefetcher_cls(streams, depth=3)
    assert prefetcher.next_states() == [{"i": 0}]  # nothing handed out yet
    assert values(prefetcher.get()) == [0]
    assert prefetcher.next_states() == [{"i": 1}]  # without handing batch 1 out
    prefetcher.close()
    prefetcher.close()  # a second close changes nothing
    assert streams[0].i == 1  # batches 1.. drawn ahead are drawn again, not skipped
    again = prefetcher_cls(streams)
    assert values(again.get()) == [1]
    again.close()


@PREFETCHERS
def test_errors_of_the_data_pipeline_reach_the_training_loop(prefetcher_cls):
    prefetcher = prefetcher_cls([CountingStream(fail_at=2)])
    assert values(prefetcher.get()) == [0] and values(prefetcher.get()) == [1]
    with pytest.raises(ValueError, match="bad window 2"):
        prefetcher.get()
    with pytest.raises(RuntimeError, match="closed"):
        prefetcher.get()


@PREFETCHERS
def test_depth_must_be_positive(prefetcher_cls):
    with pytest.raises(ValueError, match="depth"):
        prefetcher_cls([CountingStream()], depth=0)


class DyingStream(CountingStream):
    def next_batch(self):
        os._exit(3)  # as if the kernel killed the worker (out of memory)


def test_a_dead_worker_process_is_reported_not_waited_for():
    streams = [DyingStream()]
    prefetcher = ProcessBatchPrefetcher(streams)
    with pytest.raises(RuntimeError, match="data worker process died \\(exit code 3\\)"):
        prefetcher.get()
    assert streams[0].i == 0  # nothing was handed out, nothing is skipped


def test_an_error_that_cannot_be_pickled_still_reaches_the_training_process():
    class LocalError(Exception):  # a local class does not pickle
        pass

    class FailingStream(CountingStream):
        def next_batch(self):
            raise LocalError("no pickle for me")

    prefetcher = ProcessBatchPrefetcher([FailingStream()])
    with pytest.raises(RuntimeError, match="LocalError.*no pickle for me"):
        prefetcher.get()


def test_start_prefetcher_picks_the_kind():
    for mode, cls in (("thread", BatchPrefetcher), ("process", ProcessBatchPrefetcher)):
        prefetcher = start_prefetcher(mode, [CountingStream()])
        assert isinstance(prefetcher, cls)
        prefetcher.close()
    with pytest.raises(ValueError, match="prefetch mode"):
        start_prefetcher("gpu", [CountingStream()])


def test_tensors_cross_the_process_boundary_unchanged():
    class MixedStream(CountingStream):
        def next_batch(self):
            batch = super().next_batch()
            batch.update(
                mask=torch.tensor([True, False]), ids=torch.arange(3), half=torch.ones(2, dtype=torch.bfloat16)
            )
            return batch

        def state_dict(self):
            return {"i": self.i, "leftover": [torch.full((2,), float(self.i))], "array": [1, 2]}

        def load_state_dict(self, state):
            self.i = state["i"]

    prefetcher = ProcessBatchPrefetcher([MixedStream()])
    states, batches = prefetcher.get()
    prefetcher.close()
    batch = batches[0]
    assert batch["mask"].tolist() == [True, False] and batch["ids"].tolist() == [0, 1, 2]
    assert batch["half"].dtype == torch.bfloat16 and batch["inputs"].dtype == torch.float32
    assert states[0]["leftover"][0].tolist() == [0.0, 0.0] and states[0]["array"] == [1, 2]


def test_a_dropped_process_prefetcher_stops_its_child():
    import gc

    prefetcher = ProcessBatchPrefetcher([CountingStream()])
    process = prefetcher._worker
    assert values(prefetcher.get()) == [0]
    del prefetcher
    gc.collect()
    process.join(timeout=10)
    assert not process.is_alive()


def test_a_worker_process_exits_when_the_training_process_is_killed(tmp_path):
    # SIGKILL, the OOM killer or a SIGTERM that only reaches the trainer never tell the worker to stop: it lived on
    # for ever, holding its memory and the trainer's stdout.
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "trainer.py"
    script.write_text(
        "import os, signal, sys\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import torch\n"
        "from test_prefetch import CountingStream\n"
        "from timemoe_forecaster.train.prefetch import ProcessBatchPrefetcher\n"
        "class Big(CountingStream):  # batches larger than a pipe's buffer (64 KiB), as real ones are\n"
        "    def next_batch(self):\n"
        "        return {'inputs': torch.full((100_000,), float(super().next_batch()['inputs'][0]))}\n"
        "p = ProcessBatchPrefetcher([Big()], depth=2)\n"
        "p.get()\n"
        "print(p._worker.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = tmp_path / "out.txt"
    with out.open("w") as f:  # a file, not a pipe: an orphan holding the pipe would block reading it
        run = subprocess.run([sys.executable, str(script)], stdout=f, stderr=subprocess.STDOUT, timeout=120)
    assert run.returncode == -signal.SIGKILL, out.read_text()
    child = int(out.read_text().split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as f:  # a zombie waits for init to reap it: gone as far as work goes
            if f.read().split()[2] == "Z":
                return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the prefetch worker outlived the killed training process by 20 s")


class SlowStream(CountingStream):
    def next_batch(self):
        time.sleep(0.2)  # the trainer waits for this worker, as when drawing is slower than the step
        return super().next_batch()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_worker_process_leaves_ctrl_c_and_sigterm_to_the_trainer(sig):
    # Ctrl-C and a job's SIGTERM reach the whole process group. The trainer answers by saving after the step in
    # progress, which may wait for a batch still being drawn; a worker that died of the signal failed that save.
    prefetcher = ProcessBatchPrefetcher([SlowStream()], depth=1)
    try:
        assert values(prefetcher.get()) == [0]
        os.kill(prefetcher._worker.pid, sig)
        assert [values(prefetcher.get()) for _ in range(3)] == [[1], [2], [3]]
        assert prefetcher._worker.is_alive()
    finally:
        prefetcher.close()
    assert not prefetcher._worker.is_alive()


class StuckStream(CountingStream):
    def next_batch(self):
        time.sleep(600)  # a read that hangs


def test_a_worker_process_that_does_not_stop_is_killed():
    # It ignores SIGTERM while the trainer lives (and one stuck in C code runs no handler at all): the
    # finalizer's and close()'s last resort must be SIGKILL, or the worker outlives the run.
    from timemoe_forecaster.train.prefetch import _stop_worker

    prefetcher = ProcessBatchPrefetcher([StuckStream()], depth=1)
    worker = prefetcher._worker
    time.sleep(0.5)  # inside next_batch
    prefetcher._finalizer.detach()
    _stop_worker(prefetcher._stop, worker)
    assert not worker.is_alive() and worker.exitcode == -signal.SIGKILL

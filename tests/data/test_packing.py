"""Packing: rows, positions and document ids are right, and a packed batch has the unpacked loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from timemoe_forecaster import TimeMoEConfig, TimeMoEForPrediction
from timemoe_forecaster.data import (
    ArraySource,
    PackedBatchStream,
    SyntheticSource,
    WindowSampler,
    collate,
    pack_windows,
)

KEYS = ("inputs", "labels", "loss_mask", "attention_mask", "position_ids", "seq_ids")


def _windows(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=n).astype(np.float32) for n in lengths]


def test_collate_layout_follows_the_contract():
    w = _windows([5, 3, 4])
    batch = collate([[w[0], w[1]], w[2]], max_length=8)
    assert set(batch) == set(KEYS)
    assert all(batch[k].shape == (2, 8) for k in KEYS)
    assert batch["inputs"].dtype == batch["labels"].dtype == batch["loss_mask"].dtype == torch.float32
    assert batch["attention_mask"].dtype == batch["position_ids"].dtype == batch["seq_ids"].dtype == torch.int64
    assert batch["seq_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, -1, -1]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["loss_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(batch["inputs"][0, 4:6].numpy(), w[1][:-1])
    np.testing.assert_array_equal(batch["labels"][0, 4:6].numpy(), w[1][1:])
    assert float(batch["inputs"][0, 6:].abs().sum()) == 0.0
    assert collate([w[2]], max_length=8, pad_to="longest")["inputs"].shape == (1, 3)
    with pytest.raises(ValueError, match="more than max_length"):
        collate([[w[0], w[2]]], max_length=6)


def test_first_fit_decreasing_places_every_window_once():
    w = _windows([9, 2, 7, 4, 3, 5, 8, 2])
    rows = pack_windows(w, max_length=10)
    assert sorted(id(x) for r in rows for x in r) == sorted(id(x) for x in w)
    assert all(sum(len(x) - 1 for x in r) <= 10 for r in rows)
    assert len(rows) == 4  # 40 tokens in rows of 10, packed without waste here


def _stream(pack, seed=0, batch_size=3, max_length=64, fill_gaps=True):
    rng = np.random.default_rng(1)
    src = ArraySource([rng.normal(size=int(n)) for n in rng.integers(10, 150, size=30)])
    sampler = WindowSampler([src, SyntheticSource(seed=2, max_length=100)], max_length=max_length, seed=seed)
    return PackedBatchStream(sampler, batch_size=batch_size, max_length=max_length, pack=pack, fill_gaps=fill_gaps)


def _documents(batch):
    """Each packed window (inputs then last label), checking that ids and positions are consistent."""
    docs = []
    for r in range(batch["inputs"].shape[0]):
        ids = batch["seq_ids"][r]
        real = ids >= 0
        n_real = int(real.sum())
        assert bool(real[:n_real].all()) and not bool(real[n_real:].any()), "padding only at the row end"
        for d in ids[real].unique().tolist():
            where = (ids == d).nonzero().flatten()
            assert where.tolist() == list(range(int(where[0]), int(where[-1]) + 1)), "a window is contiguous"
            assert batch["position_ids"][r, where].tolist() == list(range(len(where)))
            docs.append(torch.cat([batch["inputs"][r, where], batch["labels"][r, where[-1:]]]))
            torch.testing.assert_close(batch["labels"][r, where[:-1]], batch["inputs"][r, where[1:]])
    return docs


@pytest.mark.parametrize("fill_gaps", [True, False])
def test_packed_stream_rows_are_consistent_and_dense(fill_gaps):
    stream = _stream(pack=True, max_length=128, fill_gaps=fill_gaps)
    real, total = 0, 0
    for _ in range(5):
        batch = stream.next_batch()
        for doc in _documents(batch):
            assert doc.shape[0] >= stream.sampler.min_length
            assert abs(float(doc.mean())) < 1e-4 and abs(float(doc.std(unbiased=False)) - 1.0) < 1e-3
        assert batch["labels"].shape == (3, 128)
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    assert real / total > (0.96 if fill_gaps else 0.8)
    unpacked = _stream(pack=False).next_batch()
    assert (unpacked["seq_ids"].max(dim=1).values == 0).all()


def test_stream_state_round_trip_continues_identically(tmp_path):
    stream = _stream(pack=True)
    for _ in range(3):
        stream.next_batch()
    path = tmp_path / "state.pt"
    torch.save(stream.state_dict(), path)
    expected = [stream.next_batch() for _ in range(4)]
    resumed = _stream(pack=True)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.num_batches == 3
    for want in expected:
        got = resumed.next_batch()
        assert all(torch.equal(got[k], want[k]) for k in KEYS)


def test_a_stream_resumed_with_a_smaller_max_length_cuts_the_waiting_windows_to_fit(caplog):
    # Windows left over by a run with max_length 64 used to wait forever in a resumed run with 24: first_fit
    # never placed them, and their tokens counted as data in every batch, so batches came out short of windows.
    stream = _stream(pack=True, fill_gaps=False)
    while not any(w.shape[0] - 1 > 24 for w in stream.leftover):
        stream.next_batch()
    state = stream.state_dict()
    long = [w for w in state["leftover"] if w.shape[0] - 1 > 24]
    assert long, "the test needs waiting windows longer than the new max_length"
    resumed = _stream(pack=True, max_length=24, fill_gaps=False)
    with caplog.at_level("INFO", logger="timemoe_forecaster.data.packing"):
        resumed.load_state_dict(state)
    assert f"{len(long)} waiting windows were longer than max_length=24" in caplog.text
    assert resumed.leftover and all(w.shape[0] - 1 <= 24 for w in resumed.leftover)
    assert all(w.shape[0] >= resumed.sampler.min_length for w in resumed.leftover)
    for w in resumed.leftover:  # every piece is a standardised window again
        assert abs(float(w.mean())) < 1e-4 and abs(float(w.std()) - 1.0) < 1e-3
    for _ in range(3):
        batch = resumed.next_batch()
        assert batch["labels"].shape == (3, 24)
        assert batch["attention_mask"].float().mean() > 0.6  # rows are filled, not starved by unplaceable windows


@pytest.mark.parametrize("backend", ["eager", "sdpa", "varlen"])
def test_packed_batch_loss_equals_unpacked_loss(backend):
    torch.manual_seed(0)
    model = TimeMoEForPrediction(TimeMoEConfig.from_preset("tiny"), attn_backend=backend).eval()
    windows = [w.cumsum() for w in _windows([41, 17, 60, 33, 25, 2, 90, 12, 97], seed=3)]
    rows = pack_windows(windows, max_length=96)
    windows = [w for row in rows for w in row]
    assert len(rows) == 4 and any(len(row) > 2 for row in rows), "the test needs rows holding several series"
    packed = collate(rows, max_length=96)
    unpacked = collate(windows, max_length=96)
    with torch.no_grad():
        out_p, out_u = model(**packed), model(**unpacked)
    torch.testing.assert_close(out_p.loss, out_u.loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(out_p.ar_loss, out_u.ar_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(out_p.aux_loss, out_u.aux_loss, rtol=1e-5, atol=0)
    # Per-series predictions match too: nothing leaks between packed neighbours.
    pred_docs = [out_p.predictions[r, packed["seq_ids"][r] == d] for r, row in enumerate(rows) for d in range(len(row))]
    for k, w in enumerate(windows):
        torch.testing.assert_close(pred_docs[k], out_u.predictions[k, : len(w) - 1], rtol=1e-5, atol=1e-6)

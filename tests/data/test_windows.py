"""Quality filter, standardisation, and the sampler's determinism, sharding and exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from timemoe_forecaster.data import ArraySource, SyntheticSource, WindowSampler, is_low_quality, iter_eval_windows
from timemoe_forecaster.data.windows import (
    FRUITLESS_PICKS,
    SHARD_IMBALANCE,
    keep_good_stretch,
    low_quality_blocks,
    standardise,
)


def test_quality_filter_cases():
    rng = np.random.default_rng(0)
    assert not is_low_quality(rng.normal(size=128))
    zeros = rng.normal(size=128)
    zeros[:30] = 0.0  # 23% zeros
    assert is_low_quality(zeros)
    flat = rng.normal(size=128)
    flat[10:40] = 5.0  # 29 zero first differences
    assert is_low_quality(flat)
    line = np.arange(128.0)  # no zeros after the first, constant slope: all second differences zero
    assert not is_low_quality(line[1:] + 0.5 * (line[1:] % 2)) and is_low_quality(line + 1.0)
    few = rng.normal(size=128)
    few[:20] = 0.0  # 15.6%: kept
    assert not is_low_quality(few)
    assert is_low_quality(np.zeros(0))


def test_bad_blocks_and_good_stretch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=128 * 5 + 50)
    x[128:256] = 0.0
    bad = low_quality_blocks(x)
    assert bad.tolist() == [False, True, False, False, False, False]
    kept = keep_good_stretch(x)
    np.testing.assert_array_equal(kept, x[256:])


def test_standardise_and_std_floor():
    w = standardise(np.array([1.0, 2.0, 3.0, 4.0]) * 1e6 + 7)
    assert w.dtype == np.float32
    np.testing.assert_allclose([w.mean(), w.std()], [0.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(standardise(np.full(5, 3.0)), np.zeros(5, np.float32))


def _sampler(**kw):
    rng = np.random.default_rng(0)
    series = [rng.normal(size=int(n)) for n in rng.integers(20, 700, size=40)]
    series[3][50:60] = np.nan
    return WindowSampler([ArraySource(series), SyntheticSource(seed=5, max_length=300)], **kw)


def test_sampler_windows_are_standardised_finite_and_bounded():
    sampler = _sampler(max_length=256, min_length=16, seed=0)
    for _ in range(200):
        w = sampler.sample()
        assert w.dtype == np.float32 and 16 <= w.shape[0] <= 257
        assert np.isfinite(w).all()
        assert abs(float(w.mean())) < 1e-4 and abs(float(w.std()) - 1.0) < 1e-3
    assert sampler.num_windows == 200


def test_sampler_is_deterministic_and_resumes_exactly():
    a, b = _sampler(max_length=128, seed=3), _sampler(max_length=128, seed=3)
    for _ in range(50):
        np.testing.assert_array_equal(a.sample(), b.sample())
    state = a.state_dict()
    expected = [a.sample() for _ in range(30)]
    resumed = _sampler(max_length=128, seed=3)
    resumed.load_state_dict(state)
    for want in expected:
        np.testing.assert_array_equal(resumed.sample(), want)
    other = _sampler(max_length=128, seed=4)
    assert not all(np.array_equal(other.sample(), w) for w in expected[:5])


def test_ranks_read_disjoint_series():
    # Each series is a constant offset + tiny noise; the offset reveals which series a window came from.
    rng = np.random.default_rng(2)
    series = [k * 1000.0 + rng.normal(size=300) for k in range(9)]  # 5 windows each: 3 series to a rank

    class Tagged(ArraySource):
        seen: set

        def __getitem__(self, i):
            self.seen.add(int(i))
            return super().__getitem__(i)

    seen = []
    for rank in range(3):
        src = Tagged(series)
        src.seen = set()
        sampler = WindowSampler(src, max_length=64, seed=0, rank=rank, world_size=3)
        for _ in range(100):
            sampler.sample()
        assert len(src.seen) == 3
        seen.append(src.seen)
    assert seen[0] | seen[1] | seen[2] == set(range(9)) and not (seen[0] & seen[1] or seen[1] & seen[2])
    with pytest.raises(ValueError, match="rank 0 of 3"):
        WindowSampler(Tagged(series), rank=1, world_size=3).load_state_dict(sampler.state_dict() | {"rank": 0})


def test_mixture_weights_and_quality_filter():
    good = ArraySource([np.random.default_rng(0).normal(size=200)], name="good")
    zeros = ArraySource([np.zeros(200)], name="zeros")
    with pytest.raises(ValueError, match="no usable window"):
        WindowSampler(zeros, max_tries=20).sample()
    assert WindowSampler(zeros, quality_filter=False).sample().shape == (200,)
    sampler = WindowSampler([good, zeros], weights=[1.0, 0.0], max_length=64)
    for _ in range(20):
        assert sampler.sample().std() > 0.5


def test_sources_get_their_weight_of_windows_however_often_theirs_are_rejected(caplog):
    # A rejected window redrew the source: a 90%-constant source weighted 1 of 2 gave 8% of the windows, 9 of 10
    # gave 45%; and a source with no series long enough (weight 100) was dropped without a word.
    rng = np.random.default_rng(0)
    good = ArraySource([rng.normal(size=2000) for _ in range(20)], name="good")
    flat = ArraySource([np.full(2000, 3.0) if i % 10 else rng.normal(size=2000) for i in range(20)], name="flat")
    for weights, expected in (([1, 1], 0.5), ([1, 9], 0.9)):
        sampler = WindowSampler([good, flat], weights=weights, max_length=64, seed=1)
        accepted = []  # the source of every window handed out
        original = sampler._try_window

        def recording(k, original=original, accepted=accepted):
            window = original(k)
            if window is not None:
                accepted.append(k)
            return window

        sampler._try_window = recording
        for _ in range(2000):
            sampler.sample()
        share = np.mean(np.array(accepted) == 1)
        assert abs(share - expected) < 0.04, (weights, share)
    short = ArraySource([np.arange(5.0)], name="too-short")
    with caplog.at_level("WARNING", logger="timemoe_forecaster.data.windows"):
        sampler = WindowSampler([good, short], weights=[1, 100], max_length=64)
    assert "'too-short' has no series of at least min_length=16 points" in caplog.text
    assert sampler.sample().shape == (65,)
    # Long but never usable: after max_tries draws that window comes from another source, and a resumed sampler
    # draws the same windows.
    zeros = ArraySource([np.zeros(300)], name="zeros")
    sampler = WindowSampler([good, zeros], weights=[1, 1], max_length=64, max_tries=10, seed=3)
    with caplog.at_level("WARNING", logger="timemoe_forecaster.data.windows"):
        assert all(sampler.sample().std() > 0.5 for _ in range(5))
    assert "'zeros' gave no usable window in 10 draws" in caplog.text
    resumed = WindowSampler([good, zeros], weights=[1, 1], max_length=64, max_tries=10, seed=3)
    resumed.load_state_dict(sampler.state_dict())
    assert all(np.array_equal(sampler.sample(), resumed.sample()) for _ in range(5))
    # A usable source whose windows are nearly all rejected is never left out for good (one long series among 999
    # too short, picked uniformly: a window fails its 1000 draws about 37% of the time, and goes elsewhere then).
    rare = ArraySource([np.arange(5.0)] * 999 + [rng.normal(size=500)], name="rare")
    sampler = WindowSampler([good, rare], weights=[1, 1], max_length=64, series_weighting="uniform", seed=4)
    accepted = []
    original = sampler._try_window
    sampler._try_window = lambda k: (lambda w: (accepted.append(k) if w is not None else None, w)[1])(original(k))
    for _ in range(200):
        sampler.sample()
    assert 0.2 < np.mean(np.array(accepted) == 1) and 1 in accepted[-50:]


def test_a_shard_of_only_short_series_reads_the_whole_source(caplog):
    # Series 0 and 2 are long, series 1 too short: shard 1 of 2 held only series 1, and a 2-process run (or one
    # with --grad-accum 2) failed with "no usable window" on data one process trains on. (Series picked uniformly are
    # dealt as i % 2; weighted by length, they are dealt by windows, and an empty share is a lopsided one.)
    rng = np.random.default_rng(1)
    src = ArraySource([rng.normal(size=500), rng.normal(size=10), rng.normal(size=500)], name="three")
    with caplog.at_level("WARNING", logger="timemoe_forecaster.data.windows"):
        shard = WindowSampler(src, max_length=64, rank=1, world_size=2, series_weighting="uniform")
    assert "shard 1 of 2 holds no series of at least min_length=16 points" in caplog.text
    assert shard.sample().shape == (65,)
    with pytest.raises(ValueError, match="no usable window"):  # nothing long enough anywhere: still an error
        WindowSampler(ArraySource([np.arange(5.0)] * 3), rank=1, world_size=2)


def test_a_shard_whose_series_all_fail_the_quality_filter_reads_the_whole_source(caplog):
    # Long enough, but constant: shard 1 of 2 holds series 1 and 2 (dealt 0, 1, 1, 0), which the quality filter
    # rejects. Every window of the source on that shard paid max_tries draws before going to another source (a
    # 2-shard run of real data 5x slower than one shard), and the source got half its weight there.
    rng = np.random.default_rng(2)
    good = ArraySource([rng.normal(size=600) for _ in range(4)], name="good")
    mixed = ArraySource(
        [rng.normal(size=600), np.full(600, 2.0), np.full(600, 2.0), rng.normal(size=600)], name="mixed"
    )
    sampler = WindowSampler([good, mixed], weights=[1, 3], max_length=64, max_tries=50, rank=1, world_size=2, seed=5)
    tries = []
    original = sampler._try_window
    sampler._try_window = lambda k: (tries.append(k), original(k))[1]
    with caplog.at_level("WARNING", logger="timemoe_forecaster.data.windows"):
        windows = [sampler.sample() for _ in range(200)]
    assert all(w.std() > 0.5 for w in windows)
    assert "'mixed': shard 1 of 2 gave no usable window in 50 draws" in caplog.text
    assert "came from another source" not in caplog.text
    assert len(tries) < 200 + 50 + 200  # one round of max_tries in all, not one per window of the source
    # The widening is part of the state: a resumed sampler goes on with the whole source too.
    resumed = WindowSampler([good, mixed], weights=[1, 3], max_length=64, max_tries=50, rank=1, world_size=2, seed=5)
    resumed.load_state_dict(sampler.state_dict())
    assert all(np.array_equal(sampler.sample(), resumed.sample()) for _ in range(20))


def test_shards_hold_equal_shares_of_windows_so_every_point_stays_equally_likely(caplog):
    # Dealt as i % S, each shard drew its own series at the source's full weight: a 200-point series alone in a shard
    # beside a 100,000-point one got half of that shard's windows (0.3% on one shard), so the mix of a run changed
    # with its number of processes x --grad-accum.
    rng = np.random.default_rng(6)
    lengths = rng.integers(100, 5000, size=200)
    src = ArraySource([rng.normal(size=n) for n in lengths], name="lengths")
    windows = np.ceil(lengths / 65)
    shares = []
    for rank in range(4):
        sampler = WindowSampler(src, max_length=64, rank=rank, world_size=4)
        indices, _ = sampler._shards[0]
        shares.append(windows[np.asarray(indices)].sum() / windows.sum())
        assert len(indices) < 200  # a real split, not the whole source
    np.testing.assert_allclose(shares, 0.25, atol=0.25 * SHARD_IMBALANCE)
    dealt = [set(np.asarray(WindowSampler(src, max_length=64, rank=r, world_size=4)._shards[0][0])) for r in range(4)]
    assert set.union(*dealt) == set(range(200)) and sum(map(len, dealt)) == 200
    # One series too large a part of the source to deal evenly: every shard reads all of it, so each keeps its share.
    lopsided = ArraySource([rng.normal(size=100_000), rng.normal(size=200), rng.normal(size=200)], name="lopsided")
    with caplog.at_level("WARNING", logger="timemoe_forecaster.data.windows"):
        for rank in range(2):
            sampler = WindowSampler(lopsided, max_length=64, rank=rank, world_size=2, seed=rank)
            picks = np.array([sampler._pick_series(0) for _ in range(4000)])
            assert np.mean(picks > 0) < 0.02  # 8 of 1,547 windows: 0.5% (it was 50% on shard 1)
    assert "would hold" in caplog.text and "shards overlap" in caplog.text


def test_a_source_that_never_gives_a_window_is_left_out_for_good(caplog):
    # Its windows were retried max_tries times every time the mixture drew it: 8x slower training, forever.
    rng = np.random.default_rng(7)
    good = ArraySource([rng.normal(size=600) for _ in range(4)], name="good")
    zeros = ArraySource([np.zeros(1000)], name="zeros")
    sampler = WindowSampler([good, zeros], weights=[1, 1], max_length=64, max_tries=20, seed=8)
    tries = []
    original = sampler._try_window
    sampler._try_window = lambda k: (tries.append(k), original(k))[1]
    with caplog.at_level("WARNING", logger="timemoe_forecaster.data.windows"):
        for _ in range(300):
            sampler.sample()
    assert tries.count(1) == FRUITLESS_PICKS * 20 and "'zeros' gave no usable window in 200 draws" in caplog.text
    assert "left out from now on" in caplog.text
    # Part of the state: a resumed sampler leaves it out too, and draws the same windows.
    resumed = WindowSampler([good, zeros], weights=[1, 1], max_length=64, max_tries=20, seed=8)
    resumed.load_state_dict(sampler.state_dict())
    assert all(np.array_equal(sampler.sample(), resumed.sample()) for _ in range(20))
    assert resumed._live_weights[1] == 0


def test_a_resume_with_another_data_list_finds_widened_sources_by_name():
    # Widened sources were saved by position: a shorter --data list failed the resume with an IndexError, and a
    # reordered one widened another source.
    rng = np.random.default_rng(9)
    good = ArraySource([rng.normal(size=600) for _ in range(4)], name="good")
    mixed = ArraySource(
        [rng.normal(size=600), np.full(600, 2.0), np.full(600, 2.0), rng.normal(size=600)], name="mixed"
    )
    sampler = WindowSampler([good, mixed], weights=[1, 3], max_length=64, max_tries=50, rank=1, world_size=2)
    for _ in range(50):
        sampler.sample()
    state = sampler.state_dict()
    assert sampler._widened == {1}
    reordered = WindowSampler([mixed, good], max_length=64, max_tries=50, rank=1, world_size=2)
    reordered.load_state_dict(state)
    assert reordered._widened == {0} and len(reordered._shards[0][0]) == 4 and len(reordered._shards[1][0]) == 2
    shorter = WindowSampler([good], max_length=64, rank=1, world_size=2)
    shorter.load_state_dict(state)
    assert shorter._widened == set() and shorter.sample().shape[0] >= 16


def test_spec_string_gives_one_weighted_source_per_input(tmp_path):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).normal(size=(3, 300)))
    sampler = WindowSampler(f"{tmp_path / 'a.npy'},synthetic#seed=1&weight=3", max_length=64)
    assert len(sampler.sources) == 2
    np.testing.assert_allclose(sampler.weights, [0.25, 0.75])


def test_eval_windows_are_fixed_and_split_across_ranks():
    src = SyntheticSource(seed=9, max_length=200)
    first = list(iter_eval_windows(src, 8, max_length=64))
    again = list(iter_eval_windows(src, 8, max_length=64))
    assert len(first) == 8 and all(np.array_equal(x, y) for x, y in zip(first, again))
    halves = [list(iter_eval_windows(src, 8, max_length=64, rank=r, world_size=2)) for r in range(2)]
    np.testing.assert_array_equal(halves[1][2], first[5])


def test_sampler_arguments_are_checked():
    src = ArraySource([np.arange(50.0)])
    with pytest.raises(ValueError, match="rank"):
        WindowSampler(src, rank=2, world_size=2)
    with pytest.raises(ValueError, match="weights"):
        WindowSampler(src, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="min_length"):
        WindowSampler(src, min_length=1)


def test_low_quality_error_names_the_cli_flag():
    zeros = ArraySource([np.zeros(200)], name="zeros")
    with pytest.raises(ValueError, match="--no-quality-filter"):
        WindowSampler(zeros, max_tries=5).sample()


def test_overlapping_shards_are_reported_once(caplog):
    # The trainer builds a fresh evaluation sampler at every evaluation; each repeated the same warning.
    src = ArraySource([np.arange(50.0)], name="one-series-overlap-test")
    with caplog.at_level("WARNING", logger="timemoe_forecaster.data.windows"):
        for _ in range(3):
            WindowSampler(src, rank=1, world_size=2)
    assert sum("shards overlap" in r.getMessage() for r in caplog.records) == 1


def test_nan_padding_does_not_count_as_length_when_series_are_weighted(tmp_path):
    # A wide table pads its shorter columns with NaN: a 200-point column beside a 100,000-point one got half of the
    # windows (each of its points drawn 24x as often) when windows were shared out by padded length.
    from timemoe_forecaster.data import open_source

    long = np.sin(np.arange(100_000) / 10)
    short = np.full(100_000, np.nan)
    short[:200] = np.cos(np.arange(200) / 3)
    for source in (ArraySource([long, short]), open_source(_saved(tmp_path, np.stack([long, short])))):
        assert source.lengths().tolist() == [100_000, 200]
        sampler = WindowSampler(source, max_length=64, seed=0, quality_filter=False)
        picks = np.array([sampler._pick_series(0) for _ in range(4000)])
        assert np.mean(picks == 1) < 0.01  # 4 of 1,543 windows' worth of points: 0.3%


def _saved(tmp_path, matrix):
    path = tmp_path / "rows.npy"
    np.save(path, matrix)
    return str(path)


def test_a_source_the_quality_filter_mostly_drops_is_named_once(caplog, monkeypatch):
    # Beijing's integer-rounded dew point kept 0% of its points under the paper's rule, without a word.
    from timemoe_forecaster.data import windows

    monkeypatch.setattr(windows, "QUALITY_REPORT_POINTS", 5_000)
    rng = np.random.default_rng(0)
    stairs = ArraySource([np.round(np.cumsum(rng.normal(scale=0.05, size=3000))) for _ in range(5)], name="stairs")
    noisy = ArraySource([rng.normal(size=3000) for _ in range(5)], name="noisy")
    with caplog.at_level("WARNING", logger="timemoe_forecaster.data.windows"):
        sampler = WindowSampler([stairs, noisy], max_length=256, seed=0)
        for _ in range(60):
            sampler.sample()
    assert caplog.text.count("source 'stairs': the quality filter kept") == 1
    assert "'noisy'" not in caplog.text


class _CountingSource(ArraySource):
    """An ArraySource that counts whole-series reads and the points its windows read."""

    def __init__(self, series):
        super().__init__(series, name="counting")
        self.whole_reads, self.points_read = [0] * len(series), 0

    def __getitem__(self, i):
        self.whole_reads[i] += 1
        return super().__getitem__(i)

    def read(self, i, start, stop):
        self.points_read += stop - start
        return self._series[i][start:stop]


def test_a_long_series_is_read_whole_once_and_its_windows_are_the_same(monkeypatch):
    # Every window of a long series read and scanned the whole series (217 ms per batch of 8 windows of 4,096 points
    # from one 1e7-point binary series). Its finite runs are now found once; a window reads only its own points, and
    # the windows drawn are the ones the whole-series path draws.
    from timemoe_forecaster.data import windows

    rng = np.random.default_rng(0)
    x = rng.normal(size=200_000).astype(np.float32)
    x[50_000:50_010] = np.nan  # three finite runs: the choice among them must stay the same
    x[120_000:120_500] = np.inf
    short = rng.normal(size=300).astype(np.float32)
    src = _CountingSource([x, short])
    fast = WindowSampler(src, max_length=255, seed=3, series_weighting="uniform")
    got = [fast.sample() for _ in range(60)]
    assert src.whole_reads[0] == 1 and 0 < src.whole_reads[1] < 60  # the short series is read whole, as before
    assert 0 < src.points_read <= 60 * 256
    monkeypatch.setattr(windows, "LONG_SERIES_WINDOWS", 10**9)  # every series takes the whole-series path
    slow = WindowSampler(ArraySource([x, short]), max_length=255, seed=3, series_weighting="uniform")
    want = [slow.sample() for _ in range(60)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_windows_of_a_long_binary_series_read_only_their_points(tmp_path, monkeypatch):
    from timemoe_forecaster.data import BinarySource, write_binary_dataset

    x = np.random.default_rng(1).normal(5.0, 2.0, size=100_000)
    x[70_000:70_100] = np.nan
    write_binary_dataset([x], tmp_path / "bin", num_files=3)
    src = BinarySource(tmp_path / "bin")
    whole_reads = []
    original = BinarySource.__getitem__
    monkeypatch.setattr(BinarySource, "__getitem__", lambda self, i: whole_reads.append(i) or original(self, i))
    sampler = WindowSampler(src, max_length=127, seed=0, quality_filter=False)
    for _ in range(40):
        w = sampler.sample()
        assert w.shape == (128,) and np.isfinite(w).all()
    assert len(whole_reads) == 1


def test_the_runs_kept_for_long_series_are_bounded(monkeypatch):
    from timemoe_forecaster.data import windows

    monkeypatch.setattr(windows, "MAX_KEPT_RUNS", 300)
    gappy = [np.where(np.arange(20_000) % 100 == 0, np.nan, 1.0 + np.sin(np.arange(20_000.0) + k)) for k in range(6)]
    sampler = WindowSampler(ArraySource(gappy), max_length=63, seed=0, series_weighting="uniform")
    for _ in range(200):
        assert sampler.sample().shape[0] >= 16
        assert sampler._kept_runs == sum(r.shape[0] for r in sampler._runs.values()) <= 300
    assert len(sampler._runs) == 1  # 200 runs a series: one series' runs at a time

"""Training windows: quality filter, per-window standardisation, and a resumable, sharded sampler.

A window is ``n + 1`` consecutive points of one series (``n`` inputs, each with its next value as
label), standardised by its own mean and standard deviation. :class:`WindowSampler` draws a source by
mixture weight, a series of this rank's shard, a random crop of at most ``max_length + 1`` points, drops
low-quality stretches (Time-MoE paper, section 4.1: a 128-point block whose share of zeros, of zero first
differences or of zero second differences exceeds 0.2) and standardises what remains.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .sources import SeriesSource, finite_runs, open_sources

logger = logging.getLogger(__name__)

QUALITY_BLOCK = 128
QUALITY_THRESHOLD = 0.2
STD_FLOOR = 1e-5
# (source, series, rank, ranks) whose overlapping shards were already reported: the trainer builds a fresh sampler
# for every evaluation, which repeated the same warning each time.
_OVERLAP_WARNED: set[tuple[str, int, int, int]] = set()


def _zero_ratios(blocks: np.ndarray) -> np.ndarray:
    """Largest of the zero, zero-first-difference and zero-second-difference shares per row of [R, L]."""
    n = blocks.shape[1]
    ratio = (blocks == 0).mean(axis=1)
    if n > 1:
        d1 = np.diff(blocks, axis=1)
        ratio = np.maximum(ratio, (d1 == 0).mean(axis=1))
        if n > 2:
            ratio = np.maximum(ratio, (np.diff(d1, axis=1) == 0).mean(axis=1))
    return ratio


def is_low_quality(window: np.ndarray, threshold: float = QUALITY_THRESHOLD) -> bool:
    """True if the share of zeros, of zero first differences or of zero second differences exceeds ``threshold``."""
    x = np.asarray(window, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] == 0:
        return True
    return bool(_zero_ratios(x[None, :])[0] > threshold)


def low_quality_blocks(x: np.ndarray, block: int = QUALITY_BLOCK, threshold: float = QUALITY_THRESHOLD) -> np.ndarray:
    """Per ``block``-point block of ``x``, whether it is low quality. The last block is the last ``block`` points
    (overlapping its neighbour) so that every block is judged on a full length. Returns bool [ceil(n / block)]."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n <= block:
        return np.array([is_low_quality(x, threshold)])
    num = -(-n // block)
    full = x[: (n // block) * block].reshape(-1, block)  # [n // block, block]
    if num > full.shape[0]:
        full = np.concatenate([full, x[-block:][None, :]])
    return _zero_ratios(full) > threshold


def keep_good_stretch(x: np.ndarray, block: int = QUALITY_BLOCK, threshold: float = QUALITY_THRESHOLD) -> np.ndarray:
    """The longest run of consecutive good blocks of ``x`` (all of ``x`` when no block is bad)."""
    bad = low_quality_blocks(x, block, threshold)
    if not bad.any():
        return x
    good = np.concatenate([[0], (~bad).astype(np.int8), [0]])
    edges = np.diff(good)
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return x[:0]
    k = int(np.argmax(stops - starts))
    return x[starts[k] * block : min(stops[k] * block, x.shape[0])]


def standardise(window: np.ndarray, std_floor: float = STD_FLOOR) -> np.ndarray:
    """(window - mean) / max(std, std_floor) in float64, returned as float32."""
    x = np.asarray(window, dtype=np.float64)
    std = max(float(x.std()), std_floor)
    return ((x - x.mean()) / std).astype(np.float32)


# A series longer than this many windows is not read whole for each window: its finite runs are found once and kept,
# and a window reads only its own points (each window of one 1e7-point binary series took 217 ms, read and scanned
# whole, against 1.7 ms with the same points cut into window-long series).
LONG_SERIES_WINDOWS = 8
# Finite runs the sampler keeps at most (16 bytes each); past this the store starts again. A series with a gap every
# few points would otherwise keep a quarter of its size for the sampler's life.
MAX_KEPT_RUNS = 1 << 20

# Points the quality filter must have seen from a source before it says how much it kept.
QUALITY_REPORT_POINTS = 200_000

# A source that has never given a window is left out for good after this many windows it failed (max_tries draws
# each): a source of rejected series (all zeros, say) cost every window drawn from it max_tries draws, forever (8x
# slower training). One that gave a window once is never left out: its windows are rare, not absent.
FRUITLESS_PICKS = 10

# A shard may hold this much more or less than its 1/S share of a source's windows before every shard reads the whole
# source: drawn at the source's full weight, a shard's series are drawn in proportion to 1 / its share.
SHARD_IMBALANCE = 0.1


class WindowSampler:
    """Endless, deterministic stream of standardised float32 windows of ``min_length..max_length + 1`` points.

    sources: SeriesSource(s) or specs for :func:`open_source` (a comma-separated spec string gives one source per
    input, weighted by its ``#weight=``). weights: mixture weight per source (default: each
    source's ``weight`` attribute, else equal). Rank ``r`` of ``world_size`` reads its own share of each source's
    series and draws from its own random stream. ``series_weighting="length"`` picks series in proportion to their
    number of windows (every point equally likely, as in a concatenated corpus), and the series are dealt to the
    ranks so that each holds about 1 / world_size of the source's windows (where one series is too large a part of
    them for that, every rank reads the whole source); ``"uniform"`` picks every series equally often and rank
    ``r`` reads series ``i`` with ``i % world_size == r``. Sources that cannot list their lengths (synthetic) are
    uniform.
    """

    def __init__(
        self,
        sources: SeriesSource | Sequence[Any] | Any,
        weights: Sequence[float] | None = None,
        max_length: int = 4096,
        min_length: int = 16,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        quality_filter: bool = True,
        series_weighting: str = "length",
        std_floor: float = STD_FLOOR,
        max_tries: int = 1000,
    ) -> None:
        if isinstance(sources, (SeriesSource, str)) or not isinstance(sources, (list, tuple)):
            sources = [sources]
        # A spec string with several inputs becomes several sources, each with its own mixture weight.
        self.sources = [part for s in sources for part in ([s] if isinstance(s, SeriesSource) else open_sources(s))]
        if not self.sources:
            raise ValueError("WindowSampler needs at least one source")
        if weights is None:
            weights = [s.weight if s.weight is not None else 1.0 for s in self.sources]
        if len(weights) != len(self.sources) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"weights must be {len(self.sources)} non-negative numbers with a positive sum: {weights}")
        if not 2 <= min_length <= max_length + 1:
            raise ValueError(f"need 2 <= min_length <= max_length + 1, got min_length={min_length}, {max_length=}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if series_weighting not in ("length", "uniform"):
            raise ValueError(f"series_weighting must be 'length' or 'uniform', got {series_weighting!r}")
        self.weights = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.max_length, self.min_length = int(max_length), int(min_length)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.quality_filter, self.std_floor, self.max_tries = quality_filter, std_floor, max_tries
        self.series_weighting = series_weighting
        # Finite points per series of each source (None: unknown), asked once: shards and windows both read them.
        self._lengths = [s.lengths() for s in self.sources]
        self._shards = [self._shard(k) for k in range(len(self.sources))]
        # Sources whose series are all too short for a window: their weight goes to the others. Derived from the
        # data and min_length alone, so a resumed sampler derives the same; later also those left out for giving no
        # window (_leave_out), which the state carries.
        self._dead: set[int] = {k for k, shard in enumerate(self._shards) if shard is None}
        self._warned_dry: set[int] = set()
        # Points the quality filter saw and kept per source, for one warning when it drops most of a source (the
        # paper's rule drops integer-rounded weather series whole, and said nothing).
        self._filtered = np.zeros((len(self.sources), 2), dtype=np.int64)
        # Sources whose shard gave no window in max_tries draws and now read all their series; in the state, so a
        # resumed sampler goes on as this one would.
        self._widened: set[int] = set()
        # Per source: whether it ever gave a window, and the windows it failed (max_tries draws each) until then.
        self._gave = np.zeros(len(self.sources), dtype=bool)
        self._fruitless = np.zeros(len(self.sources), dtype=np.int64)
        for k in sorted(self._dead):
            logger.warning(
                "source %r has no series of at least min_length=%d points%s: it gives no windows, and its weight "
                "goes to the other sources",
                self.sources[k].name,
                self.min_length,
                f" on rank {self.rank}" if self.world_size > 1 else "",
            )
        if len(self._dead) == len(self.sources):
            raise ValueError(self._no_window_message())
        self._live_weights = self._weights_without(self._dead)
        # The finite runs of long series, found once each (see LONG_SERIES_WINDOWS).
        self._runs: dict[tuple[int, int], np.ndarray] = {}
        self._kept_runs = 0
        self._rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.rank,)))
        self.num_windows = 0

    def _shard(self, k: int, whole: bool = False) -> tuple[Sequence[int], np.ndarray | None] | None:
        """(series indices, cumulative length weights or None) of this rank's share of source ``k`` (``whole``: all
        its series); None when its lengths show that none of them is long enough for a window. Indices are a range
        where they can be: a synthetic source counts its series in billions."""
        n = len(self.sources[k])
        lengths = self._lengths[k]
        if lengths is not None and not (lengths >= self.min_length).any():
            return None
        if whole or self.world_size == 1:
            indices = range(n)
        elif n <= self.rank:
            self._warn_overlap(k, f"is one of more data shards than the source's {n} series")
            indices = range(n)
        elif lengths is not None and self.series_weighting == "length":
            indices = self._dealt_by_windows(k)
        else:
            indices = range(self.rank, n, self.world_size)
        if lengths is None:
            return indices, None
        mine = lengths[np.asarray(indices)]
        if not (mine >= self.min_length).any():
            # This shard's series are all too short while others' are not (a 2-process run failed on data one
            # process trains on).
            self._warn_overlap(k, f"holds no series of at least min_length={self.min_length} points")
            indices, mine = range(n), lengths
        if self.series_weighting != "length":
            return indices, None
        return indices, np.cumsum(self._windows_per_series(mine))

    def _windows_per_series(self, lengths: np.ndarray) -> np.ndarray:
        windows = np.ceil(lengths.astype(np.float64) / (self.max_length + 1))
        windows[lengths < self.min_length] = 0
        return windows

    def _dealt_by_windows(self, k: int) -> Sequence[int]:
        """This rank's series of source ``k``, dealt so that every rank holds about the same number of windows:
        largest first, in a snake order over the ranks. Dealt as ``i % world_size``, a rank whose few series were
        short drew them at the source's full weight, each point many times as often as on the other ranks (a 200-point
        series beside a 100,000-point one: half of a shard's windows). All of them when the deal stays lopsided."""
        windows = self._windows_per_series(self._lengths[k])
        size = self.world_size
        order = np.argsort(-windows, kind="stable")
        turn = np.arange(order.size)
        rank_of = np.empty(order.size, dtype=np.int64)
        rank_of[order] = np.where((turn // size) % 2 == 0, turn % size, size - 1 - turn % size)
        # Decided from every shard's share, not this one's alone: the deal is the same on every rank, and a shard
        # that fell back to the whole source while the others kept their own series drew the series dealt to it at
        # 1 / world_size of their rate (a 4-shard deal whose shard 0 held 22% of the windows).
        shares = np.bincount(rank_of, weights=windows, minlength=size) / windows.sum() * size
        worst = int(np.argmax(np.abs(shares - 1)))
        if abs(shares[worst] - 1) > SHARD_IMBALANCE:
            held = f"{shares[worst] / size:.1%}"
            self._warn_overlap(k, f"would hold {held} of its windows in shard {worst}, not {1 / size:.1%}")
            return range(windows.size)
        return np.flatnonzero(rank_of == self.rank)

    def _warn_overlap(self, k: int, why: str) -> None:
        src = self.sources[k]
        key = (str(src.name), len(src), self.rank, self.world_size, why)
        if key in _OVERLAP_WARNED:  # evaluation builds a fresh sampler at every evaluation
            return
        _OVERLAP_WARNED.add(key)
        logger.warning(
            "source %r: shard %d of %d %s (data shards: processes x --grad-accum); it reads all of the source's "
            "series (shards overlap)",
            src.name,
            self.rank,
            self.world_size,
            why,
        )

    def _pick_series(self, k: int) -> int:
        indices, cum = self._shards[k]
        if cum is not None:
            j = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"))
            j = min(j, cum.shape[0] - 1)
        else:
            j = int(self._rng.integers(len(indices)))
        return int(indices[j])

    def _try_window(self, k: int) -> np.ndarray | None:
        rng = self._rng
        src = self.sources[k]
        i = self._pick_series(k)
        span = self.max_length + 1
        lengths = self._lengths[k]
        whole = None
        if lengths is not None and lengths[i] > LONG_SERIES_WINDOWS * span:
            runs = self._runs.get((k, i))
            if runs is None:
                runs = finite_runs(src[i], self.min_length)
                if self._kept_runs + runs.shape[0] > MAX_KEPT_RUNS:
                    self._runs.clear()
                    self._kept_runs = 0
                self._runs[(k, i)] = runs
                self._kept_runs += runs.shape[0]
        else:
            whole = src[i]
            runs = finite_runs(whole, self.min_length)
        if not runs.shape[0]:
            return None
        if runs.shape[0] > 1:
            sizes = (runs[:, 1] - runs[:, 0]).astype(np.float64)
            start, stop = runs[int(rng.choice(runs.shape[0], p=sizes / sizes.sum()))]
        else:
            start, stop = runs[0]
        start, stop = int(start), int(stop)
        if stop - start > span:
            start += int(rng.integers(0, stop - start - span + 1))
            stop = start + span
        x = whole[start:stop] if whole is not None else src.read(i, start, stop)
        if self.quality_filter and src.wants_quality_filter(i):
            drawn = x.shape[0]
            x = keep_good_stretch(x)
            self._count_filtered(k, drawn, x.shape[0] if x.shape[0] >= self.min_length else 0)
            if x.shape[0] < self.min_length:
                return None
        return standardise(x, self.std_floor)

    def _count_filtered(self, k: int, drawn: int, kept: int) -> None:
        """Once per source: a warning when the quality filter has kept less than half of the points drawn from it
        (over at least QUALITY_REPORT_POINTS of them)."""
        seen = self._filtered[k]
        if seen[0] < 0:  # said already
            return
        seen += (drawn, kept)
        if seen[0] >= QUALITY_REPORT_POINTS:
            if seen[1] < seen[0] / 2:
                logger.warning(
                    "source %r: the quality filter kept %.0f%% of the points drawn from it (128-point blocks that are "
                    "mostly zeros or barely change are dropped, Time-MoE's rule; integer-rounded or slowly varying "
                    "series can lose most of their data); --no-quality-filter keeps them",
                    self.sources[k].name,
                    100 * seen[1] / seen[0],
                )
            seen[:] = -1

    def sample(self) -> np.ndarray:
        """The next window: float32 [n + 1] with min_length <= n + 1 <= max_length + 1.

        The source is drawn by weight once per window, and a rejected window (too short, non-finite, low quality)
        is drawn again from the same source: redrawing the source gave a source whose windows are often rejected
        far less than its weight (a weight of 1 in 2 on a 90%-constant source gave it 8% of the windows). Only a
        source that gives no window in ``max_tries`` draws hands this one window to another source (with a
        warning, once per source); when every source has failed so, it is an error. A source that has failed
        ``FRUITLESS_PICKS`` windows so without ever giving one is left out from then on."""
        failed, weights = set(self._dead), self._live_weights
        while True:
            if weights is None:  # every source with weight has failed this window
                raise ValueError(self._no_window_message())
            k = int(self._rng.choice(len(self.sources), p=weights))
            while True:
                for _ in range(self.max_tries):
                    w = self._try_window(k)
                    if w is not None:
                        self.num_windows += 1
                        self._gave[k] = True
                        return w
                # A shard whose series all fail (the quality filter, say) while the source's others do not: every
                # later window of the source paid max_tries draws before going elsewhere, which made a 2-shard run
                # 5x slower and gave the source half its weight. It reads all of the source's series from now on.
                if not self._widen(k):
                    break
            failed.add(k)
            weights = self._weights_without(failed)
            if not self._gave[k]:
                self._fruitless[k] += 1
                if self._fruitless[k] >= FRUITLESS_PICKS:
                    self._leave_out(k)
            if k not in self._warned_dry and weights is not None:  # with none left, the error says it
                self._warned_dry.add(k)
                logger.warning(
                    "source %r gave no usable window in %d draws; that window came from another source",
                    self.sources[k].name,
                    self.max_tries,
                )

    def _leave_out(self, k: int) -> None:
        self._dead.add(k)
        self._live_weights = self._weights_without(self._dead)
        if self._live_weights is not None:
            logger.warning(
                "source %r gave no usable window in %d draws (%d windows' worth); it is left out from now on and "
                "its weight goes to the other sources",
                self.sources[k].name,
                FRUITLESS_PICKS * self.max_tries,
                FRUITLESS_PICKS,
            )

    def _widen(self, k: int) -> bool:
        """Let source ``k``, whose shard gave no window in ``max_tries`` draws, read all of its series; False when
        it read them all already."""
        reads_all = len(self._shards[k][0]) == len(self.sources[k])
        whole = None if k in self._widened or reads_all else self._shard(k, whole=True)
        if whole is None:
            return False
        self._widened.add(k)
        self._shards[k] = whole
        logger.warning(
            "source %r: shard %d of %d gave no usable window in %d draws (its series are too short, non-finite or "
            "low quality); it reads all of the source's series from now on (shards overlap)",
            self.sources[k].name,
            self.rank,
            self.world_size,
            self.max_tries,
        )
        return True

    def _weights_without(self, left_out: set[int]) -> np.ndarray | None:
        """The mixture weights with ``left_out`` sources at 0, renormalised; None when no weight is left."""
        weights = self.weights.copy()
        weights[sorted(left_out)] = 0.0
        return weights / weights.sum() if weights.sum() > 0 else None

    def _no_window_message(self) -> str:
        return (
            f"no usable window from {[s.name for s in self.sources]}: series are shorter than "
            f"min_length={self.min_length}, all non-finite, or low quality (mostly constant or zero). "
            "Lower min_length (CLI: --min-length), or turn the quality filter off with quality_filter=False "
            "(CLI: --no-quality-filter)."
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        keys = self._source_keys()
        return {
            "rng": self._rng.bit_generator.state,
            "num_windows": self.num_windows,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            # By source, not by position: a resume may change the --data list (a position then named another
            # source, or none: IndexError).
            "widened_sources": [keys[k] for k in sorted(self._widened)],
            "fruitless_sources": {keys[k]: int(n) for k, n in enumerate(self._fruitless) if n},
            "gave_sources": [keys[k] for k in np.flatnonzero(self._gave)],
        }

    def _source_keys(self) -> list[str]:
        """A name per source that a resumed sampler with another --data list finds it by: its name, number of
        series, and its place among sources of the same name and size."""
        keys, seen = [], {}
        for src in self.sources:
            base = f"{src.name}|{len(src)}"
            seen[base] = seen.get(base, 0) + 1
            keys.append(f"{base}|{seen[base]}")
        return keys

    def load_state_dict(self, state: dict) -> None:
        if (state.get("rank"), state.get("world_size")) != (self.rank, self.world_size):
            raise ValueError(
                f"sampler state was saved by rank {state.get('rank')} of {state.get('world_size')}, but this sampler "
                f"is rank {self.rank} of {self.world_size}; resume with the same number of processes"
            )
        self._rng.bit_generator.state = state["rng"]
        self.num_windows = int(state["num_windows"])
        index = {key: k for k, key in enumerate(self._source_keys())}
        if "widened_sources" in state:
            widened = [index[key] for key in state["widened_sources"] if key in index]
        else:  # before session 32, by position (before session 28, absent: none widened)
            widened = [k for k in state.get("widened", []) if 0 <= k < len(self.sources)]
        for k in widened:
            if k not in self._widened:
                self._widened.add(k)
                self._shards[k] = self._shard(k, whole=True)
        for key in state.get("gave_sources", []):
            if key in index:
                self._gave[index[key]] = True
        for key, count in state.get("fruitless_sources", {}).items():
            if key in index and not self._gave[index[key]]:
                self._fruitless[index[key]] = count
                if count >= FRUITLESS_PICKS:
                    self._dead.add(index[key])
        self._live_weights = self._weights_without(self._dead)
        if self._live_weights is None:
            raise ValueError(self._no_window_message())


def iter_eval_windows(
    sources: SeriesSource | Sequence[Any] | Any,
    num_windows: int,
    max_length: int = 4096,
    seed: int = 1_000_003,
    rank: int = 0,
    world_size: int = 1,
    **sampler_kwargs: Any,
) -> Iterator[np.ndarray]:
    """A fixed set of ``num_windows`` evaluation windows, the same on every call and on every rank count.

    With ``world_size > 1`` rank ``r`` yields windows ``r, r + world_size, ...`` of that set. Pass sources
    held out from training (e.g. ``SyntheticSource(seed=train_seed + 1)``) for a true held-out estimate.
    """
    sampler = WindowSampler(sources, max_length=max_length, seed=seed, **sampler_kwargs)
    for k in range(num_windows):
        w = sampler.sample()
        if k % world_size == rank:
            yield w

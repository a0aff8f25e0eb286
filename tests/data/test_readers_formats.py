"""Files written in a layout the readers do not take (decimal commas, day-first dates, no header, tabs in a .csv,
folders mixing formats) are read right or refused with an error naming the file and the fix, never misread."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from timemoe_forecaster.data import frames, open_source


def _all(src) -> list[np.ndarray]:
    return [src[i] for i in range(len(src))]


@pytest.mark.parametrize("when", ["2023-01-{day:02d}", "{day:02d}.01.2023", "202301{day:02d}"])
def test_decimal_commas_after_a_date_column_are_an_error_not_row_names(tmp_path, when):
    # "100,5" under the header "date,sales" has one field too many: pandas took the dates for R row names and
    # dropped them, and the integer and fraction parts became two series, [100, 103, 106] and [5, 27, 18].
    rows = "".join(
        f"{when.format(day=day)},{whole},{fraction}\n" for day, whole, fraction in [(1, 100, 5), (2, 103, 27)]
    )
    (tmp_path / "sales.csv").write_text("date,sales\n" + rows)
    with pytest.raises(
        ValueError, match=r"sales\.csv: .* its time column 'date', which holds numbers instead.*decimal commas"
    ):
        open_source(tmp_path / "sales.csv")


def test_r_row_names_next_to_a_date_column_are_still_dropped(tmp_path):
    # The date column keeps its own dates there, so the first fields are labels, not dates pushed aside.
    rows = '"a","2023-01-01",5\n"b","2023-01-02",7\n"c","2023-01-03",2\n'
    (tmp_path / "r.csv").write_text('"date","load"\n' + rows)
    series = _all(open_source(tmp_path / "r.csv"))
    assert len(series) == 1
    np.testing.assert_array_equal(series[0], np.array([5, 7, 2], dtype=np.float32))
    counter = '"1",20230101,5\n"2",20230102,7\n"3",20230103,2\n'  # yyyymmdd dates under R's counter
    (tmp_path / "counter.csv").write_text('"date","load"\n' + counter)
    np.testing.assert_array_equal(_all(open_source(tmp_path / "counter.csv"))[0], np.array([5, 7, 2], "f4"))


@pytest.mark.parametrize("freq", ["MS", "QS", "QS-APR"])
@pytest.mark.parametrize("fmt", ["%d.%m.%Y", "%d/%m/%Y"])
def test_day_first_month_starts_are_read_as_months(tmp_path, fmt, freq):
    # Read month-first, 01.02.2022 is January 2: twelve days in a row each January, which looked more regular than
    # months of 28 to 31 days, so that reading won and shuffled rows were put in a wrong order.
    starts = pd.date_range("2022-01-01", periods=36, freq=freq)
    assert frames.parse_times(pd.Series(starts.strftime(fmt))).tolist() == list(starts)
    table = pd.DataFrame({"date": starts.strftime(fmt), "sales": np.arange(36.0)})
    table.sample(frac=1.0, random_state=0).to_csv(tmp_path / "monthly.csv", index=False)
    np.testing.assert_array_equal(_all(open_source(tmp_path / "monthly.csv"))[0], np.arange(36, dtype=np.float32))


@pytest.mark.parametrize("start, months", [("2022-01-01", 12), ("2022-02-01", 11), ("2022-03-01", 6)])
def test_day_first_month_starts_of_a_year_or_less_are_read_as_months(start, months, caplog):
    # Within one year, 01.02.2022 ... 01.12.2022 read month-first are January 2 ... 12: daily, with a frequency
    # as the months have one, and more regular, so that reading won. Between dots, dates are day-first.
    starts = pd.date_range(start, periods=months, freq="MS")
    dotted = pd.Series(starts.strftime("%d.%m.%Y"))
    assert frames.parse_times(dotted).tolist() == list(starts)
    # With slashes both orders are written (US, UK): nothing tells, so the daily reading stands (January 1 to 12),
    # with a warning where the dates are printed (where=). Rows are in the same order either way.
    slashes = pd.Series(starts.strftime("%d/%m/%Y"))
    with caplog.at_level("WARNING"):
        assert frames.parse_times(slashes).tolist() == [pd.Timestamp(d.year, 1, d.month) for d in starts]
        assert not caplog.text
        frames.parse_times(dotted, where="column 'date'")
        assert not caplog.text
        frames.parse_times(slashes, where="column 'date'")
    assert "column 'date': dates such as" in caplog.text and "read month-first" in caplog.text


@pytest.mark.parametrize("fmt", ["%m/%d/%Y", "%d.%m.%Y"])
def test_dates_that_read_both_ways_keep_the_reading_with_a_frequency(fmt):
    monthly = pd.date_range("2022-01-01", periods=24, freq="MS")  # US month-first months
    assert frames.parse_times(pd.Series(monthly.strftime("%m/%d/%Y"))).tolist() == list(monthly)
    daily = pd.date_range("2022-03-01", periods=12, freq="D")  # days 1-12: both readings have a frequency
    assert frames.parse_times(pd.Series(daily.strftime(fmt))).tolist() == list(daily)


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_a_file_without_a_header_row_is_an_error(tmp_path, suffix, sep):
    # Its first line was taken for the header: one row fewer, silently, in training and in forecasting.
    days = pd.date_range("2023-01-01", periods=30, freq="D").strftime("%Y-%m-%d")
    path = tmp_path / f"nohdr{suffix}"
    path.write_text("".join(f"{day}{sep}{100 + k}.0{sep}{100 + k}.0\n" for k, day in enumerate(days)))
    with pytest.raises(ValueError, match=r"nohdr\.[ct]sv looks like it has no header row \(its first line "):
        open_source(path)
    path.write_text("".join(f"{day}{sep}{100 + k}\n" for k, day in enumerate(days)))
    message = f"{path} looks like it has no header row (its first line 2023-01-01, 100 is data); add a header such"
    with pytest.raises(ValueError, match=re.escape(message)):
        open_source(path)


def test_numeric_series_ids_as_column_names_are_a_header(tmp_path):
    (tmp_path / "ids.csv").write_text("1001,1002,1003\n1.5,2.5,3.5\n2.0,3.0,4.0\n")
    assert len(_all(open_source(tmp_path / "ids.csv"))) == 3
    (tmp_path / "dated.csv").write_text("date,1001,1002\n2023-01-01,1.5,2.5\n2023-01-02,2.0,3.0\n")
    assert [s.size for s in _all(open_source(tmp_path / "dated.csv"))] == [2, 2]


def test_a_tab_separated_file_named_csv_is_an_error_that_says_so(tmp_path):
    # It read as one text column named "date\tsales": "not numeric", with no word of the separator.
    frame = pd.DataFrame({"date": pd.date_range("2023-01-01", periods=5).astype(str), "sales": np.arange(5.0)})
    frame.to_csv(tmp_path / "tabs.csv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"tabs\.csv looks tab-separated .*name it \.tsv or save it comma-separated"):
        open_source(tmp_path / "tabs.csv")
    frame.to_csv(tmp_path / "tabs.tsv", sep="\t", index=False)
    np.testing.assert_array_equal(_all(open_source(tmp_path / "tabs.tsv"))[0], np.arange(5, dtype=np.float32))


def test_folder_options_apply_to_its_tables_only(tmp_path):
    # "options ['columns'] do not apply to numpy files": a folder's table options reached its .npy file too.
    folder = tmp_path / "mixed"
    folder.mkdir()
    pd.DataFrame({"load": np.arange(4.0), "temp": np.ones(4)}).to_csv(folder / "a.csv", index=False)
    np.save(folder / "b.npy", np.full(3, 7.0))
    (folder / "c.jsonl").write_text(json.dumps({"target": [1.0, 2.0]}) + "\n")
    series = _all(open_source(f"{folder}#columns=load"))
    assert [s.tolist() for s in series] == [[0, 1, 2, 3], [7, 7, 7], [1, 2]]
    assert len(_all(open_source(folder, exclude=["temp"]))) == 3
    (folder / "a.csv").unlink()
    with pytest.raises(ValueError, match=rf"options \['columns'\] apply to tables .*{folder.name} holds none"):
        open_source(f"{folder}#columns=load")


def test_rows_ending_in_a_separator_the_header_lacks_are_read_in_place(tmp_path):
    # "2023-01-01,100,7," under "date,sales,store": the empty last field made pandas take the dates for row names
    # and shift every value one column left (the sales under "date", the store under "sales").
    rows = "".join(f"2023-01-{day:02d},{100 + day},7,\n" for day in range(1, 6))
    (tmp_path / "export.csv").write_text("date,sales,store\n" + rows)
    series = _all(open_source(f"{tmp_path / 'export.csv'}#columns=sales"))
    np.testing.assert_array_equal(series[0], np.arange(101, 106, dtype=np.float32))
    from timemoe_forecaster.data.readers import read_frame

    frame = read_frame(tmp_path / "export.csv", ".csv")
    assert list(frame.columns) == ["date", "sales", "store"] and frame["date"].iloc[0] == "2023-01-01"


@pytest.mark.parametrize("first", ["{day}", "202301{day:02d}"])
def test_trailing_separators_are_told_from_r_row_names_by_the_text(tmp_path, first):
    from timemoe_forecaster.data.readers import read_frame

    # An integer first column (a counter, yyyymmdd dates) with trailing separators was read shifted, or refused
    # as decimal commas; R's row names beside an all-NA last column, which look alike once read, were shifted.
    rows = "".join(f"{first.format(day=day)},{100 + day},7,\n" for day in range(1, 6))
    (tmp_path / "t.csv").write_text("t,sales,store\n" + rows)
    frame = read_frame(tmp_path / "t.csv", ".csv")
    assert list(frame["sales"]) == [101, 102, 103, 104, 105] and list(frame["store"]) == [7] * 5
    r_rows = "".join(f'"2023-01-0{day}",{100 + day},{day},NA\n' for day in range(1, 6))
    (tmp_path / "r.csv").write_text('"sales","returns","note"\n' + r_rows)
    frame = read_frame(tmp_path / "r.csv", ".csv")
    assert list(frame["sales"]) == [101, 102, 103, 104, 105] and frame["note"].isna().all()


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_empty_cells_of_a_one_column_file_stay_missing_values(tmp_path, suffix):
    # An empty cell of a one-column file is a blank line, which pandas skips: the gap closed up silently.
    values = [str(float(i)) for i in range(30)]
    values[10] = values[11] = ""
    path = tmp_path / f"one{suffix}"
    path.write_text("value\n" + "\n".join(values) + "\n")
    (series,) = open_source(str(path))
    assert len(series) == 30
    np.testing.assert_array_equal(np.flatnonzero(np.isnan(series)), [10, 11])


def test_only_a_step_back_that_a_clock_takes_reads_as_the_repeated_hour():
    from timemoe_forecaster.data.local_time import fall_back_timeline

    # Berlin's clocks went back at 03:00 to 02:00 on 2023-10-29: 02:00 twice, an hour apart.
    wall = pd.Series(pd.date_range("2023-10-28 20:00", periods=12, freq="h", tz="Europe/Berlin").tz_localize(None))
    timeline, offsets = fall_back_timeline(wall)
    assert (np.diff(timeline.asi8) == 3600 * 10**9).all() and list(timeline + offsets) == list(wall)
    # A row written twice at an hour no clock repeats, or a daily series repeating a day at 02:00, is no such hour.
    hourly = pd.Series(pd.date_range("2023-05-01", periods=12, freq="h"))
    assert fall_back_timeline(pd.concat([hourly[:6], hourly[5:]], ignore_index=True)) is None
    daily = pd.Series(pd.date_range("2023-10-20 02:00", periods=15, freq="D"))
    assert fall_back_timeline(pd.concat([daily[:10], daily[9:]], ignore_index=True)) is None
    assert fall_back_timeline(wall.sample(frac=1.0, random_state=0)) is None  # out of order

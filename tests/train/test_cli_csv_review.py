"""``timemoe forecast`` on real-world CSV files: cases that forecast the wrong series without a word."""

from __future__ import annotations

import pandas as pd
import pytest

from timemoe_forecaster.cli import load_series, main

DAYS = pd.date_range("2024-01-01", periods=30, freq="D")


def _observed(out: str) -> list[list[str]]:
    return [line.split()[1:] for line in out.splitlines() if line.strip().startswith("observed")]


def _forecast_times(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.strip().startswith("forecast")]


@pytest.mark.parametrize(
    "header, time_of",
    [
        ("date", lambda d: d.strftime("%Y%m%d")),  # yyyymmdd integers
        ("timestamp", lambda d: str(int(d.timestamp()))),  # epoch seconds
        ("timestamp", lambda d: str(int(d.timestamp() * 1000))),  # epoch milliseconds
    ],
)
def test_a_numeric_time_column_orders_and_dates_a_newest_first_file(tmp_path, capsys, header, time_of):
    # A numeric time column was no time column: a newest-first file was forecast backwards (its oldest value shown
    # as the last observation), undated.
    csv = tmp_path / "rev.csv"
    rows = [f"{time_of(d)},{i}" for i, d in enumerate(DAYS)]
    csv.write_text(f"{header},value\n" + "\n".join(reversed(rows)) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert _observed(out) == [["2024-01-30", "29.0000"]]
    assert _forecast_times(out) == ["2024-01-31", "2024-02-01"]


def test_a_year_column_orders_a_newest_first_file(tmp_path):
    csv = tmp_path / "years.csv"
    csv.write_text("year,value\n" + "\n".join(f"{y},{y - 1990}" for y in range(2023, 1989, -1)) + "\n")
    series = load_series(str(csv))
    assert series.iloc[-1] == 33 and series.index[-1] == pd.Timestamp("2023-01-01")


def test_a_numeric_time_column_is_not_the_series_forecast(tmp_path):
    # "sales,timestamp": the last numeric column was the epoch milliseconds, forecast as the series.
    csv = tmp_path / "ms.csv"
    csv.write_text("sales,timestamp\n" + "\n".join(f"{i},{int(d.timestamp() * 1000)}" for i, d in enumerate(DAYS)))
    series = load_series(str(csv))
    assert series.name == "sales" and series.iloc[-1] == 29 and series.index[-1] == DAYS[-1]


@pytest.mark.parametrize("fmt", ["%b-%y", "%b %y", "%B-%y", "%m/%y"])
def test_months_with_two_digit_years_are_not_read_as_days_of_year_one(tmp_path, fmt):
    # Excel's "mmm-yy" (Jan-20): read as January 20 of year 1, the rows were sorted by month, then by year.
    months = pd.date_range("2019-11-01", periods=15, freq="MS")
    csv = tmp_path / "m.csv"
    csv.write_text("month,value\n" + "\n".join(f"{m.strftime(fmt)},{i}" for i, m in enumerate(months)) + "\n")
    series = load_series(str(csv))
    assert list(series) == list(range(15))  # file order (it is time order), whether dated or not
    if isinstance(series.index, pd.DatetimeIndex):
        assert list(series.index) == list(months)


def test_semicolon_file_with_decimal_commas_reads_thousands_dots_in_every_column(tmp_path):
    # "1.020" beside "9,50" is one thousand and twenty: it was read as 1.02 (the forecast a thousand times too low).
    csv = tmp_path / "de.csv"
    sales = [950 + 10 * i for i in range(30)]
    text = [f"{d:%d.%m.%Y};9,50;{s if s < 1000 else f'{s // 1000}.{s % 1000:03d}'}" for d, s in zip(DAYS, sales)]
    csv.write_text("Datum;Preis;Umsatz\n" + "\n".join(text) + "\n")
    series = load_series(str(csv))
    assert list(series) == sales


@pytest.mark.parametrize("start", [100, 0])
def test_a_one_column_file_with_decimal_commas_is_not_read_as_row_names(tmp_path, start):
    # "101,3" under the header "Wert": 101 was taken for an R row name and 3 forecast as the value (from 0,5 on the
    # first fields even looked like no row names at all).
    csv = tmp_path / "one.csv"
    values = [f"{start + i},{(7 * i) % 10}" for i in range(30)]
    csv.write_text("Wert\n" + "\n".join(values) + "\n")
    try:
        series = load_series(str(csv))
    except ValueError as err:  # refusing is fine; the decimals alone are not
        assert "decimal comma" in str(err)
    else:
        assert list(series) == [float(v.replace(",", ".")) for v in values]


def test_a_long_table_of_several_ids_is_refused_whatever_its_value_column_is_named(tmp_path, capsys):
    # unique_id + sales (not "value"/"y"): the two stores were forecast as one series (a warning said "one after
    # another", and for rows sorted by date they were interleaved: a zig-zag).
    csv = tmp_path / "long.csv"
    rows = [f"{d.date()},{s},{(100 if s == 'A' else 5) + i}" for i, d in enumerate(DAYS) for s in "AB"]
    csv.write_text("date,unique_id,sales\n" + "\n".join(rows) + "\n")
    with pytest.raises(SystemExit):
        main(["forecast", "--dataset", str(csv), "--horizon", "2"])
    assert "long table of 2 series (column 'unique_id': A, B)" in capsys.readouterr().err


def test_rows_of_separators_alone_do_not_undate_the_file(tmp_path, capsys):
    # Spreadsheet exports end in ",," lines: the date column "had holes", the forecast was undated, and a
    # newest-first file was then forecast backwards.
    csv = tmp_path / "x.csv"
    rows = [f"{d.date()},{i}" for i, d in enumerate(DAYS)]
    csv.write_text("date,value\n" + "\n".join(reversed(rows)) + "\n,\n,\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "1", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert _observed(out) == [["2024-01-30", "29.0000"]] and _forecast_times(out) == ["2024-01-31"]


@pytest.mark.parametrize(
    "text",
    ["time,temp\n22:00,0\n23:00,1\n00:00,2\n01:00,3\n02:00,4\n", "month,temp\nNov,0\nDec,1\nJan,2\nFeb,3\nMar,4\n"],
)
def test_times_without_their_date_keep_file_order(tmp_path, text):
    # 00:00 was sorted before 22:00 (all dated today), January before the November of the year before (year 1).
    csv = tmp_path / "t.csv"
    csv.write_text(text)
    assert list(load_series(str(csv))) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("sep", [" ", "-"])
def test_days_without_a_year_are_not_read_as_months_of_two_digit_years(tmp_path, sep):
    # "Jan 05" can be Excel's January 2005 or the fifth of January of no year. Read as months, days from Jan 28 to
    # Feb 03 scattered over four decades and were sorted Feb 01, Jan 28, Feb 02 ...: they keep file order.
    days = pd.date_range("2024-01-28", periods=7, freq="D")
    csv = tmp_path / "d.csv"
    csv.write_text("day,value\n" + "\n".join(f"{d.strftime(f'%b{sep}%d')},{i}" for i, d in enumerate(days)) + "\n")
    series = load_series(str(csv))
    assert list(series) == list(range(7))


@pytest.mark.parametrize(
    "header, row",
    [
        # The UCI household power layout: day-first dates (16/12/2006) and a time of day with seconds, ';'-separated.
        ("Date;Time;Global_active_power", lambda t, i: f"{t:%d/%m/%Y};{t:%H:%M:%S};{i}"),
        ("date,time,value", lambda t, i: f"{t:%Y-%m-%d},{t:%H:%M},{i}"),
    ],
)
def test_a_date_column_and_a_time_of_day_column_make_one_timestamp(tmp_path, capsys, header, row):
    # The date column alone repeated (once per hour): the file was read as stacked series, undated, in file order,
    # so a newest-first file was forecast backwards.
    hours = pd.date_range("2006-12-16 17:00", periods=30, freq="h")
    csv = tmp_path / "power.txt"
    csv.write_text(header + "\n" + "\n".join(reversed([row(t, i) for i, t in enumerate(hours)])) + "\n")
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert _observed(out) == [["2006-12-17", "22:00:00", "29.0000"]]
    assert _forecast_times(out) == ["2006-12-17", "2006-12-18"]
    assert "one after another" not in capsys.readouterr().err


def test_a_day_first_date_column_beside_times_of_day_is_read_day_first(tmp_path):
    # 01/02 .. 03/02 alone reads both ways; beside 13/02 it is February, and so is every row's timestamp.
    times = pd.date_range("2024-02-01", periods=13 * 4, freq="6h")
    csv = tmp_path / "p.csv"
    csv.write_text("Date,Time,load\n" + "\n".join(f"{t:%d/%m/%Y},{t:%H:%M},{i}" for i, t in enumerate(times)) + "\n")
    series = load_series(str(csv))
    assert list(series.index) == list(times) and list(series) == list(range(len(times)))


@pytest.mark.parametrize("store", [lambda s: s, lambda s: {"A": "17", "B": "42"}[s]])
def test_a_panel_told_apart_by_a_column_of_any_name_is_refused(tmp_path, capsys, store):
    # "date,store,sales" sorted by date: the two stores were forecast as one zig-zag series, with a warning that they
    # were stacked "one after another".
    csv = tmp_path / "panel.csv"
    rows = [f"{d.date()},{store(s)},{(100 if s == 'A' else 5) + i}" for i, d in enumerate(DAYS) for s in "AB"]
    csv.write_text("date,store,sales\n" + "\n".join(rows) + "\n")
    with pytest.raises(SystemExit):
        main(["forecast", "--dataset", str(csv), "--horizon", "2"])
    err = capsys.readouterr().err
    assert f"long table of 2 series (column 'store': {store('A')}, {store('B')})" in err
    assert "TimeMoEForecaster" in err


def test_repeated_times_without_a_column_that_tells_them_apart_keep_their_reading(tmp_path, capsys):
    # Series stacked one after another with a text column that does not tell the copies apart (a unit): numbered in
    # file order, with the warning, as before; a date repeated once is ordered, not refused.
    csv = tmp_path / "stacked.csv"
    rows = [f"{d.date()},kWh,{i}" for i, d in enumerate(list(DAYS) * 2)]
    csv.write_text("date,unit,value\n" + "\n".join(rows) + "\n")
    assert list(load_series(str(csv))) == list(range(60))
    once = tmp_path / "once.csv"
    days = [*DAYS[:10], DAYS[9], *DAYS[10:]]
    once.write_text("date,note,value\n" + "\n".join(f"{d.date()},n{i},{i}" for i, d in enumerate(days)) + "\n")
    assert list(load_series(str(once))) == list(range(31))


@pytest.mark.parametrize("fmt", ["Q{q} {y}", "Q{q}-{y}", "{y} Q{q}", "{y}-Q{q}"])
def test_quarters_are_read_as_dates(tmp_path, capsys, fmt):
    quarters = pd.period_range("2015Q1", periods=12, freq="Q")
    csv = tmp_path / "q.csv"
    rows = [f"{fmt.format(q=p.quarter, y=p.year)},{i}" for i, p in enumerate(quarters)]
    csv.write_text("quarter,value\n" + "\n".join(reversed(rows)) + "\n")  # newest first
    assert main(["forecast", "--dataset", str(csv), "--horizon", "2", "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert _observed(out) == [["2017-10-01", "11.0000"]]
    assert _forecast_times(out) == ["2018-01-01", "2018-04-01"]


@pytest.mark.parametrize(
    "header, row",
    [
        ("Monat;Umsatz", lambda m, v: f"{m:%m.%Y};{v}"),
        ("month,sales", lambda m, v: f"{m:%m.%Y},{v}"),
        ("Umsatz;Monat", lambda m, v: f"{v};{m:%m.%Y}"),  # last: it was the column forecast
    ],
)
def test_months_written_mm_yyyy_are_dates_not_numbers(tmp_path, header, row):
    # "01.2020" (a German export's month) was read as the number 1.202: the month column was a series, the file
    # undated and, newest first, forecast backwards.
    months = pd.date_range("2019-11-01", periods=15, freq="MS")
    csv = tmp_path / "m.csv"
    rows = [row(m, 100 + i) for i, m in enumerate(months)]
    csv.write_text(header + "\n" + "\n".join(reversed(rows)) + "\n")
    series = load_series(str(csv))
    assert list(series) == [100 + i for i in range(15)] and list(series.index) == list(months)


def test_numbers_that_look_like_mm_yyyy_stay_numbers(tmp_path):
    # A column of such numbers that is no monthly sequence (repeated, out of order) is data.
    csv = tmp_path / "n.csv"
    values = ["01.2020", "03.2021", "01.2020", "12.1999", "05.2030", "02.2020"]
    csv.write_text("x,value\n" + "\n".join(f"{v},{i}" for i, v in enumerate(values)) + "\n")
    series = load_series(str(csv), "x")
    assert list(series) == [float(v) for v in values]


@pytest.mark.parametrize("sep, decimal", [(",", "."), (";", ",")])
def test_a_question_mark_is_a_missing_value(tmp_path, sep, decimal):
    # The UCI repository marks missing values "?": the column was text, refused, or passed over for the next one.
    csv = tmp_path / "uci.csv"
    values = ["4.216", "5.360", "?", "5.374", "3.666", "3.520"]
    rows = [f"2006-12-16 17:{24 + i}:00{sep}{v.replace('.', decimal)}{sep}1" for i, v in enumerate(values)]
    csv.write_text(f"time{sep}power{sep}unit\n" + "\n".join(rows) + "\n")
    series = load_series(str(csv), column=None)
    assert series.name == "power" and series.isna().tolist() == [False, False, True, False, False, False]
    assert series.iloc[3] == 5.374

"""TimeMoEForecaster's time grid through sktime's fit and update: the fitted frequency holds, an absolute fh
at fit works, and updates of another index layout are clear errors (each test failed before its fix)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sktime")

from sktime.forecasting.base import ForecastingHorizon  # noqa: E402
from sktime.split import temporal_train_test_split  # noqa: E402

from tests.helpers import make_model  # noqa: E402
from timemoe_forecaster import TimeMoEForecaster  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_ckpt_review")
    make_model(seed=5).save_pretrained(path)
    return str(path)


def forecaster(checkpoint, **kwargs):
    kwargs.setdefault("context_length", 48)
    kwargs.setdefault("device", "cpu")
    return TimeMoEForecaster(model_path=checkpoint, **kwargs)


def _gappy_daily():
    times = pd.DatetimeIndex(list(pd.date_range("2022-01-01", periods=120, freq="D").delete([10, 50])))  # no freq
    return pd.Series(np.sin(np.arange(len(times)) / 5) + 10, index=times)


def _ragged_panel():
    def member(n, start):
        return pd.DataFrame({"v": np.sin(np.arange(n) / 3) * 5 + 20}, index=pd.date_range(start, periods=n, freq="D"))

    return pd.concat({"a": member(40, "2021-03-01"), "b": member(30, "2021-03-05")}, names=["id", "t"])


@pytest.mark.parametrize("data", ["gappy series", "ragged panel"])
def test_an_absolute_fh_given_to_fit_works_where_predict_takes_it(checkpoint, data):
    # sktime's tutorial way: fh = ForecastingHorizon(y_test.index, is_relative=False); fit(y_train, fh=fh).
    # sktime leaves the cutoff without a freq for a series that skips points or a panel of unequal spans; predict
    # took such an fh, but fit failed inside pandas ("You must pass a freq argument as current index has none").
    if data == "gappy series":
        y_train, y_test = temporal_train_test_split(_gappy_daily(), test_size=3)
        fh = ForecastingHorizon(y_test.index, is_relative=False)
    else:
        y_train = _ragged_panel()
        fh = ForecastingHorizon(pd.DatetimeIndex(["2021-04-10", "2021-04-12"]), is_relative=False)
    got = forecaster(checkpoint).fit(y_train, fh=fh).predict()  # first: sktime caches fh conversions
    expected = forecaster(checkpoint).fit(y_train).predict(fh=fh)
    pd.testing.assert_index_equal(got.index, expected.index)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected))


def _monthly():
    return pd.Series(np.sin(np.arange(60) / 4) * 50 + 300, index=pd.date_range("2015-01-01", periods=60, freq="MS"))


def test_an_update_whose_index_carries_another_freq_is_read_on_the_fitted_grid(checkpoint):
    # pd.date_range(t, periods=1) is daily by default: sktime took the cutoff's freq from it, and the next month of a
    # monthly series was refused as "off the time grid of y's frequency D (its own frequency is MS)".
    y = _monthly()
    new_month = pd.Timestamp("2020-01-01")
    plain = forecaster(checkpoint).fit(y)
    plain.update(pd.Series([310.0], index=pd.DatetimeIndex([new_month])), update_params=False)
    f = forecaster(checkpoint).fit(y)
    f.update(pd.Series([310.0], index=pd.date_range(new_month, periods=1)), update_params=False)
    assert f.cutoff.freqstr == "MS"
    pd.testing.assert_series_equal(f.predict(fh=[1, 2]), plain.predict(fh=[1, 2]))


def test_daily_points_updating_a_monthly_series_are_refused_not_a_new_daily_history(checkpoint, caplog):
    # Two daily points made the whole monthly history a daily one (1,767 interpolated days, with only a warning),
    # and the forecasts were labelled by day.
    y = _monthly()
    f = forecaster(checkpoint).fit(y)
    before = f.predict(fh=[1, 2])
    with pytest.raises(ValueError, match="off the time grid of y's frequency MS"):
        f.update(pd.Series([1.0, 2.0], index=pd.date_range("2020-01-01", periods=2, freq="D")), update_params=False)
    assert f.cutoff[0] == y.index[-1]
    pd.testing.assert_series_equal(f.predict(fh=[1, 2]), before)


_MONTHS = pd.period_range("2015-01", periods=60, freq="M")


@pytest.mark.parametrize(
    "fitted_index, new_index, message",
    [
        (_MONTHS, pd.period_range("2020-01-01", periods=2, freq="D"), "periods of frequency D"),
        (_MONTHS, pd.date_range("2020-01-01", periods=2, freq="MS"), "times without a time zone"),
        (_MONTHS.to_timestamp(), pd.period_range("2020-01", periods=2, freq="M"), "periods of frequency M"),
        (pd.RangeIndex(60), pd.date_range("2020-01-01", periods=2, freq="MS"), "times without a time zone"),
        (_MONTHS.to_timestamp(), pd.date_range("2020-01-01", periods=2, freq="MS", tz="UTC"), "times with a time zone"),
    ],
)
def test_an_update_with_another_kind_of_time_index_is_a_clear_error(checkpoint, fitted_index, new_index, message):
    # They failed inside pandas' sort: "'<' not supported between instances of 'Timestamp' and 'Period'",
    # "Input has different freq=M from Period(freq=D)", "Cannot compare tz-naive and tz-aware timestamps".
    y = pd.Series(np.sin(np.arange(60) / 4) * 50 + 300, index=fitted_index)
    f = forecaster(checkpoint).fit(y)
    before = f.predict(fh=[1, 2])
    with pytest.raises(ValueError, match=f"update's y has a time index of {message}"):
        f.update(pd.Series([1.0, 2.0], index=new_index), update_params=False)
    pd.testing.assert_series_equal(f.predict(fh=[1, 2]), before)


def test_an_update_with_other_index_levels_than_the_fitted_panel_is_a_clear_error(checkpoint):
    times = pd.date_range("2021-01-01", periods=30, freq="D")
    y = pd.concat(
        {k: pd.DataFrame({"v": np.arange(30.0) + i}, index=times) for i, k in enumerate("ab")}, names=["id", "t"]
    )
    f = forecaster(checkpoint).fit(y)
    with pytest.raises(ValueError, match="update's y has 1 index level"):
        f.update(pd.Series([1.0], index=pd.DatetimeIndex(["2021-01-31"])), update_params=False)
    assert f.cutoff[0] == times[-1]

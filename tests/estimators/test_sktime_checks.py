"""sktime's own API conformance suite, one pytest item per check."""

from __future__ import annotations

import pytest

pytest.importorskip("sktime")

from sktime.utils.estimator_checks import check_estimator, parametrize_with_checks  # noqa: E402

from timemoe_forecaster.sktime import TimeMoEForecaster  # noqa: E402


@parametrize_with_checks(TimeMoEForecaster)
def test_sktime_check_estimator(obj, test_name):
    check_estimator(obj, tests_to_run=test_name, raise_exceptions=True)

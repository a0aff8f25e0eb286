"""Optional dependencies: a missing or broken one is named with the extra that installs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from timemoe_forecaster import __version__
from timemoe_forecaster.extras import install_hint, missing


def _run(code: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    "package, module, what",
    [
        ("sktime", "from timemoe_forecaster import TimeMoEForecaster", "TimeMoEForecaster"),
        ("darts", "import timemoe_forecaster.darts", "timemoe_forecaster.darts"),
    ],
)
def test_an_estimator_without_its_extra_names_the_extra(package, module, what):
    # A bare "No module named 'sktime'" from deep inside our module named no extra, and the extra pins skpro too.
    code = f"import sys; sys.modules[{package!r}] = None\ntry:\n    {module}\nexcept ImportError as e:\n    print(e)"
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.strip()
        == f'{what} needs {package}, which is not installed: pip install "timemoe-forecaster[{package}]"'
    )


def test_a_broken_install_is_told_apart_from_a_missing_one(tmp_path):
    # pyarrow 14 beside numpy 2 imports and fails: the message said it was not installed, and to install it.
    fake = tmp_path / "pyarrow"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('_ARRAY_API not found')\n")
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    code = (
        "from pathlib import Path\nfrom timemoe_forecaster.data.readers import _read_parquet\n"
        f"try:\n    _read_parquet(Path({str(tmp_path / 'd.parquet')!r}))\nexcept ImportError as e:\n    print(e)"
    )
    out = _run(code, pythonpath=str(tmp_path))
    assert "needs pyarrow, which is installed but failed to import: _ARRAY_API not found" in out.stdout, out.stderr
    blocked = _run("import sys; sys.modules['pyarrow'] = None\n" + code)
    assert 'needs pyarrow, which is not installed: pip install "timemoe-forecaster[data]"' in blocked.stdout


def test_install_hints_and_version():
    assert install_hint("huggingface_hub") == 'pip install "timemoe-forecaster[hub]"'
    assert install_hint("statsforecast") == "pip install statsforecast"
    err = missing("darts", "x", ModuleNotFoundError("No module named 'darts.models'", name="darts.models"))
    assert "not installed" in str(err)
    err = missing("darts", "x", ModuleNotFoundError("No module named 'pytorch_lightning'", name="pytorch_lightning"))
    assert "installed but failed to import: No module named 'pytorch_lightning'" in str(err)
    out = subprocess.run([sys.executable, "-m", "timemoe_forecaster.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"timemoe {__version__}"


def test_a_hub_id_without_the_hub_extra_names_the_extra():
    code = (
        "import sys; sys.modules['huggingface_hub'] = None\nfrom timemoe_forecaster import TimeMoEForPrediction\n"
        "try:\n    TimeMoEForPrediction.from_pretrained('someone/some-model')\nexcept Exception as e:\n    print(e)"
    )
    out = _run(code)
    assert "fetching it from the hub needs huggingface_hub, which is not installed" in out.stdout, out.stderr
    assert 'pip install "timemoe-forecaster[hub]"' in out.stdout

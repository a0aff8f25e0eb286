"""Errors for optional dependencies: which extra of ``timemoe-forecaster`` brings a missing package."""

from __future__ import annotations

# The extra of pyproject.toml that installs each optional package.
EXTRA_OF = {"sktime": "sktime", "skpro": "sktime", "darts": "darts", "pytorch_lightning": "darts"}
EXTRA_OF.update({"huggingface_hub": "hub", "pyarrow": "data", "triton": "gpu"})
# flash-attn has no wheels on PyPI: it compiles against the torch already installed, which build isolation hides.
OWN_HINT = {"flash_attn": "pip install flash-attn --no-build-isolation"}


def install_hint(package: str) -> str:
    """What to type to get ``package`` (an import name)."""
    if package in OWN_HINT:
        return OWN_HINT[package]
    extra = EXTRA_OF.get(package)
    return f'pip install "timemoe-forecaster[{extra}]"' if extra else f"pip install {package}"


def missing(package: str, what: str, err: ImportError) -> ImportError:
    """The error for ``what`` (e.g. "TimeMoEForecaster") when importing ``package`` failed with ``err``: not
    installed, with the extra to install; or installed but broken, with the package's own error."""
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == package:
        return ImportError(f"{what} needs {package}, which is not installed: {install_hint(package)}")
    return ImportError(f"{what} needs {package}, which is installed but failed to import: {err}")

"""Every python example in docs/estimators.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "estimators.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_have_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_example_runs(index):
    pytest.importorskip("sktime")
    pytest.importorskip("darts")
    exec(compile(BLOCKS[index], f"{DOC.name}[example {index}]", "exec"), {"__name__": "docs_example"})

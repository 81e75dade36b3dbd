"""The ``>>>`` examples in the library's docstrings run and print what they show.

The docs build runs the guides' ``{doctest}``/``{testcode}`` blocks, but not the docstrings'
``>>>`` examples (``docs/conf.py``: ``doctest_test_doctest_blocks = ""``). This file runs
those with :func:`doctest.testmod`, one case per module that has any, so that an example
that no longer matches the code fails here instead of misleading readers of the API pages.
"""

from __future__ import annotations

import doctest
import importlib
import io
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hgpso", "lightning_callbacks")


def _modules_with_examples() -> list[str]:
    """Dotted names of the modules under PACKAGES whose source holds a ``>>>`` prompt."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>> " not in path.read_text():
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def _optim_example_globals() -> dict[str, Any]:
    """What the HGPSO class example takes as given: a model, a loss and one batch."""
    import torch
    import torch.nn.functional as F

    import hgpso
    from tests.helpers import TinyNet

    torch.manual_seed(0)
    model = TinyNet()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    return {"hgpso": hgpso, "model": model, "loss_fn": F.cross_entropy, "x": x, "y": y}


#: names an example uses without defining them (the reader's own model and data)
EXTRA_GLOBALS: dict[str, Callable[[], dict[str, Any]]] = {
    "hgpso.optim.hgpso": _optim_example_globals,
}

MODULES = _modules_with_examples()


def test_the_modules_with_examples_are_found() -> None:
    assert "hgpso.tune.space" in MODULES  # SearchSpace's decode example
    assert "hgpso.optim.hgpso" in MODULES  # HGPSO's class example
    assert set(EXTRA_GLOBALS) <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    extra = EXTRA_GLOBALS[name]() if name in EXTRA_GLOBALS else None
    report = io.StringIO()
    with redirect_stdout(report):  # doctest writes each failure's report to stdout
        failed, attempted = doctest.testmod(
            module, extraglobs=extra, optionflags=doctest.ELLIPSIS, report=False
        )
    assert attempted > 0, f"{name} has a '>>> ' line but doctest found no example in it"
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed:\n{report.getvalue()}"

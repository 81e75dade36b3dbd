"""Sphinx configuration for the hgpso documentation.

Build (offline; warnings are errors):

    bash scripts/docs.sh            # HTML into docs/_build/html, then runs the examples

The API pages are generated from the docstrings (autodoc + napoleon for the Google-style
``Args:`` sections); ``.. math::`` blocks render with MathJax. Guides are MyST Markdown.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package under docs/.. wins over any installed copy
os.environ.setdefault("HGPSO_JIT", "0")  # never compile the CUDA kernel while documenting

from hgpso import __version__  # noqa: E402

project = "hgpso"
author = "hgpso developers"
copyright = "2026, hgpso developers"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx-mathjax-offline",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: $...$ math in guides, ::: fences, heading anchors for [text](page.md#anchor) links.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc / napoleon
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = False
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# MathJax 3 ships with the site (sphinx-mathjax-offline copies it into _static), so the
# pages render their math without a network. textmacros: `\_` inside `\text{...}` (the
# docstrings write argument names such as \text{num\_particles}, as torch.optim does).
mathjax3_config = {
    "loader": {"load": ["[tex]/textmacros"]},
    "tex": {"packages": {"[+]": ["textmacros"]}},
}

# Examples: only the explicit {testcode}/{doctest} blocks of the guides run (sphinx -b
# doctest). Docstring examples written as fragments (`model`, `x` undefined, as in
# torch.optim) are illustrations, not tests.
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import torch
torch.manual_seed(0)
"""

# Nitpicky: every cross-reference must resolve. The build is offline (no intersphinx), so
# references into other projects and the standard library are accepted by name.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|lightning|pytorch_lightning|openai|optuna)(\..*)?"),
    (r"py:.*", r"(collections|typing|typing_extensions|contextvars|pathlib|os|json)\..*"),
    (r"py:.*", r"(Tensor|Module|Optimizer|Generator|Path|Callable|Sequence|Mapping|Iterable)"),
    (r"py:.*", r"(Iterator|Any|Literal|Self|ParamSpec|TypeVar|NoReturn|Enum)"),
    (r"py:.*", r"(ContextVar|Trainer|LightningModule|Callback|ProcessGroup|Number)"),
    (r"py:class", r"(T|P|R|_T)"),
    # private helpers that appear only as base classes or return types
    (r"py:class", r"hgpso\..*\._[A-Za-z].*"),
    (r"py:class", r"hgpso\.optim\.random\.SwarmRandom"),
    # the descriptor behind the swarm-wide option attributes (opt.forget, ...)
    (r"py:class", r"hgpso\.optim\.options\.Option"),
    (r"py:class", r"LossFn"),  # lightning_callbacks' alias for Callable[[module, batch], Tensor]
]

html_theme = "furo"
html_title = f"hgpso {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

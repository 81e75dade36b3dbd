"""README, docs and packaging metadata agree with the code (nothing here builds a wheel:
scripts/check_package.sh does that in CI)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

import hgpso

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _pairs(text: str) -> dict[str, object]:
    """`a=1, b=True` -> {"a": 1, "b": True} (Python literals only)."""
    out: dict[str, object] = {}
    for key, value in re.findall(r"(\w+)=([\w.\-']+)", text):
        literals = {"True": True, "False": False, "None": None}
        out[key] = literals[value] if value in literals else json.loads(value)
    return out


def _settings_paragraph() -> list[str]:
    para = README[README.index("**Which settings?**") :].split("\n\n")[0]
    return [" ".join(c.split()) for c in re.findall(r"`([^`]*=[^`]*)`", para)]


def test_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) < 150
    assert "example.invalid" not in README
    assert "pip install hgpso" not in README  # there is no release on a package index


def test_readme_example_is_the_one_the_docs_build_runs() -> None:
    block = re.search(r"```python\n(.*?)```", README, re.S)
    assert block is not None
    code = block.group(1)
    guide = (ROOT / "docs" / "guides" / "quickstart.md").read_text()
    testcode = re.search(r"```\{testcode\}\n(.*?)```", guide, re.S)
    assert testcode is not None and testcode.group(1) == code
    assert code.count("opt.step(") == 1  # one step per batch


def test_readme_settings_match_the_code() -> None:
    library, quickstart, tuned = (_pairs(c) for c in _settings_paragraph())
    defaults = {
        k: p.default
        for k, p in inspect.signature(hgpso.HGPSO).parameters.items()
        if p.default is not p.empty
    }
    assert library == {k: defaults[k] for k in library}

    from benchmarks import quickstart as qs

    parser_defaults = {"lr": 0.02, "num_particles": 4}
    assert quickstart == parser_defaults
    src = inspect.getsource(qs.main)
    assert 'ap.add_argument("--lr", type=float, default=0.02' in src
    assert 'ap.add_argument("--particles", type=int, default=4)' in src

    from benchmarks.lit import DEFAULT_HPARAMS

    changed = {k: v for k, v in DEFAULT_HPARAMS["hgpso"].items() if defaults[k] != v}
    assert tuned == changed  # every tuned value that differs from the library, and only those


def test_readme_results_are_the_committed_ones() -> None:
    summary = json.loads((ROOT / "benchmarks/results/fashion-mnist/summary.json").read_text())
    rows = {
        line.split("|")[1].split()[0].lower().replace("-", ""): line
        for line in README.splitlines()
        if line.startswith("| ") and "±" in line
    }
    assert sorted(rows) == ["adam", "hgpso", "pso", "sgd"]
    budget = summary["equal_budget"]
    for name, line in rows.items():
        opt = summary["optimizers"][name]
        acc = f"{100 * opt['test_accuracy_mean']:.2f} ± {100 * opt['test_accuracy_std']:.2f}%"
        at_budget = (
            f"{100 * budget['accuracy_at_budget'][name]:.2f} ± "
            f"{100 * budget['accuracy_at_budget_std'][name]:.2f}%"
        )
        passes = f"{opt['forward_passes']:,.0f} + {opt['backward_passes']:,.0f}"
        cells = [c.strip().strip("*") for c in line.split("|")[2:5]]
        assert cells == [acc, passes, at_budget], (name, cells)
    adam_more = json.loads(
        (ROOT / "benchmarks/results/fashion-mnist/adam-at-hgpso-budget/summary.json").read_text()
    )["optimizers"]["adam"]
    claim = (
        f"{100 * adam_more['test_accuracy_mean']:.2f} ± {100 * adam_more['test_accuracy_std']:.2f}%"
    )
    assert claim in README


def test_quickstart_command_in_readme() -> None:
    line = (
        'python3 -m venv .venv && .venv/bin/pip install -e ".[bench]" && '
        ".venv/bin/python -m benchmarks.quickstart"
    )
    assert line in README.splitlines()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_wheel_metadata(pyproject: dict) -> None:
    project = pyproject["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert "scripts" not in project and "urls" not in project
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["hgpso*", "lightning_callbacks*"]  # no top-level `benchmarks`
    assert any(r.startswith("setuptools>=77") for r in pyproject["build-system"]["requires"])
    assert (ROOT / "hgpso" / "py.typed").is_file()
    assert pyproject["tool"]["mypy"]["files"] == ["hgpso", "lightning_callbacks"]

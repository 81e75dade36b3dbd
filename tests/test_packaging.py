"""README, docs and packaging metadata agree with the code (nothing here builds a wheel:
scripts/check_package.sh does that in CI)."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hgpso

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# An install of hgpso from a package index, where there is no release: `pip install` of the
# name (with options, quotes, a version or extras), or an extra of hgpso written as name[extra]
# anywhere. Clone installs (`pip install -e ".[llm]"`) do not match; neither does this file.
INDEX_INSTALL = re.compile(r"pip3?\s+install\s+(?:-\S+\s+)*['\"]?hgpso\b|\bhgpso\[")


def _pairs(text: str) -> dict[str, object]:
    """`a=1, b=True, c="x"` -> {"a": 1, "b": True, "c": "x"} (Python literals only)."""
    out: dict[str, object] = {}
    for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|'[^']*'|[\w.\-]+)", text):
        out[key] = ast.literal_eval(value)
    return out


def _resolved_defaults(gradient: str | None = None) -> dict[str, object]:
    """What ``hgpso.HGPSO(params)`` uses (``gradient`` given: ``HGPSO(params,
    gradient=gradient)``): the signature's defaults, ``lr``/``inertia`` (``None`` there)
    resolved from the gradient term's own (``hgpso.optim.GRADIENT_DEFAULTS``)."""
    defaults = {
        k: p.default
        for k, p in inspect.signature(hgpso.HGPSO).parameters.items()
        if p.default is not p.empty
    }
    if gradient is not None:
        defaults["gradient"] = gradient
    resolved = hgpso.optim.gradient_defaults(defaults["gradient"])
    return {**defaults, **{k: v for k, v in resolved.items() if defaults[k] is None}}


def _settings_paragraph() -> list[str]:
    para = README[README.index("**Which settings?**") :].split("\n\n")[0]
    return [" ".join(c.split()) for c in re.findall(r"`([^`]*=[^`]*)`", para)]


def test_readme_is_a_front_page() -> None:
    # a front page: install, test, one example, three ways to tune, results; the rest in docs
    assert len(README.splitlines()) < 240
    assert "example.invalid" not in README
    assert not INDEX_INSTALL.search(README)  # there is no release on a package index


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
    defaults = _resolved_defaults()
    assert library == {k: defaults[k] for k in library}
    params = [torch.nn.Parameter(torch.zeros(2))]
    built = hgpso.HGPSO(params)  # the signature's defaults are the ones it resolves to
    for key in ("lr", "inertia"):
        assert built.defaults[key] == defaults[key], key
    assert built.gradient == defaults["gradient"]

    from benchmarks import quickstart as qs

    parser_defaults = {"num_particles": 4}  # its --lr is the library's (default None)
    assert quickstart == parser_defaults
    src = inspect.getsource(qs.main)
    assert re.search(r'"--lr",\s*type=cli\.positive_float,\s*default=None,', src)
    assert 'ap.add_argument("--particles", type=cli.positive_int, default=4)' in src

    from benchmarks.lit import DEFAULT_HPARAMS
    from benchmarks.registry import OPTIMIZER_SPECS

    # the tuned entry's settings, its gradient term included; what HGPSO(params, **changed)
    # needs to build them: lr/inertia left out take that term's own defaults
    settings = {**DEFAULT_HPARAMS["hgpso"], **OPTIMIZER_SPECS["hgpso"].fixed}
    left_out = {**_resolved_defaults(settings.get("gradient")), "gradient": defaults["gradient"]}
    changed = {k: v for k, v in settings.items() if left_out[k] != v}
    assert tuned == changed  # every tuned value that differs from the library, and only those


def test_readme_results_are_the_committed_ones() -> None:
    results = ROOT / "benchmarks/results/fashion-mnist-10ep"
    summary = json.loads((results / "summary.json").read_text())
    labels = {  # README row label -> optimizer key of the committed summary
        "SGD (": "sgd",
        "Adam (": "adam",
        "AdamW (": "adamw",
        "SWA (": "swa",
        "Lookahead (": "lookahead",
        "PSO (": "pso",
        "HG-PSO (tuned": "hgpso",
        "HG-PSO (library defaults": "hgpso-default",
    }
    table = README.split("| Optimizer | Test accuracy |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        label = line.split("|")[1].strip()
        (key,) = [k for prefix, k in labels.items() if label.startswith(prefix)]
        rows[key] = line
    assert sorted(rows) == sorted(labels.values())

    def pct(mean: float, std: float, runs: int) -> str:
        return f"{100 * mean:.2f}%" if runs == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}%"

    budget = summary["equal_budget"]
    for name, line in rows.items():
        opt = summary["optimizers"][name]
        runs = opt["num_runs"]
        acc = pct(opt["test_accuracy_mean"], opt["test_accuracy_std"], runs)
        at_budget = pct(
            budget["accuracy_at_budget"][name], budget["accuracy_at_budget_std"][name], runs
        )
        passes = f"{opt['forward_passes']:,.0f} + {opt['backward_passes']:,.0f}"
        cells = [c.strip().strip("*") for c in line.split("|")[2:5]]
        assert cells == [acc, passes, at_budget], (name, cells)
    noisy = json.loads(
        (ROOT / "benchmarks/results/fashion-mnist-noise40/summary.json").read_text()
    )["optimizers"]
    for name, label in (("sgd", "SGD"), ("adam", "Adam"), ("hgpso", "HG-PSO")):
        o = noisy[name]
        claim = f"{label} {100 * o['test_accuracy_mean']:.2f} ± {100 * o['test_accuracy_std']:.2f}%"
        assert claim in README, claim


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


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: no list of tracked files")
    files = []
    for name in out.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        if path.suffix in {".py", ".md", ".sh", ".toml", ".cfg"}:
            files.append(path)
        elif not path.suffix and path.read_bytes()[:2] == b"#!":  # .ci/run, scripts/hgpso-train
            files.append(path)
    return files


def test_index_install_pattern() -> None:
    name = "hgpso"  # spelled through a variable so that this file passes the scan below
    for hint in (
        f"pip install {name}",
        f"pip install {name}[llm]",
        f'pip3 install -U "{name}[llm]"',
        f"python -m pip install --upgrade {name}==0.1",
        f"LLM strategies need `{name}[llm]`",
    ):
        assert INDEX_INSTALL.search(hint), hint
    for fine in (
        'pip install -e ".[llm]"',
        "pip install -e '.[docs]'",
        "pip install openai",
        "pip install --no-build-isolation .",
        f"pip install {name}x",
        f"import {name}",
    ):
        assert not INDEX_INSTALL.search(fine), fine


def test_no_file_tells_users_to_install_hgpso_from_an_index() -> None:
    """hgpso is on no package index: every install hint must be a clone install
    (`pip install -e ".[extra]"`) or name the third-party package itself (`pip install openai`)."""
    files = _tracked_text_files()
    assert ROOT / "hgpso" / "tune" / "llm.py" in files and ROOT / "README.md" in files
    found = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in INDEX_INSTALL.finditer(line):
                if rel == "pyproject.toml" and line[: match.start()].endswith('"'):
                    continue  # a requirement on other extras of this project, in its extras
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "install hints for a package-index hgpso:\n" + "\n".join(found)


def test_missing_openai_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from hgpso.tune import LLMClient

    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` raises ImportError
    llm = LLMClient(base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ImportError) as info:
        _ = llm.client
    message = str(info.value)
    assert "pip install openai" in message and 'pip install -e ".[llm]"' in message
    assert not INDEX_INSTALL.search(message)


def test_docs_extra_pulls_what_the_docs_build_imports(pyproject: dict) -> None:
    """The docs build imports lightning, optuna and openai (autodoc and the tuning guide)."""
    extras = pyproject["project"]["optional-dependencies"]
    assert f"{pyproject['project']['name']}[lightning,llm,tune]" in extras["docs"]
    assert any(r.startswith("lightning") for r in extras["lightning"])
    assert any(r.startswith("openai") for r in extras["llm"])
    assert any(r.startswith("optuna") for r in extras["tune"])
    script = (ROOT / "scripts" / "docs.sh").read_text()
    checked = re.search(r"names = \[(.*?)\]", script)
    assert checked is not None
    for module in ("sphinx", "myst_parser", "furo", "lightning", "optuna", "openai"):
        assert f'"{module}"' in checked.group(1), module

"""benchmarks/llm_prompt_variants end to end against a fake OpenAI-compatible server on
127.0.0.1 (tiny budget): one run file per variant and seed, the measured rates, the table,
resumption, and the refusals."""

from __future__ import annotations

import json

import pytest

from benchmarks import llm_prompt_variants as lpv
from tests.tune.fake_server import FakeLLM

# the same two points in every answer: the first round's are new, every later round's are
# duplicates of points already evaluated (in the space's units and as unit coordinates alike)
ANSWER = json.dumps({"points": [{"x0": 0.7, "x1": 0.3}, {"x0": 0.2, "x1": 0.9}]})
VARIANTS = ["default", "units=unit", "state_grid=true", "k=1"]


def args(fake: FakeLLM, out, *more: str) -> list[str]:
    return [
        "--base-url", fake.url, "--model", "fake", "--out", str(out), "--seeds", "2",
        "--population", "4", "--budget", "16", "--llm-every", "1", "--max-llm-calls", "2",
        "--timeout", "10", "--variants", *VARIANTS, *more,
    ]  # fmt: skip


@pytest.fixture
def fake():
    srv = FakeLLM()
    srv.default = ("ok", ANSWER)
    yield srv
    srv.close()


def test_runs_measure_each_variant_and_resume(fake, tmp_path, capsys):
    assert lpv.main(args(fake, tmp_path)) == 0
    root = tmp_path / "rastrigin"
    for v in VARIANTS:
        assert sorted(p.name for p in (root / "runs" / v).glob("*.json")) == [
            "seed0.json",
            "seed1.json",
        ]
    out = capsys.readouterr().out
    assert out.count("answers=2") == 2 * len(VARIANTS)  # a progress line per run
    run = json.loads((root / "runs" / "default" / "seed0.json").read_text())
    # round 1: both points new; round 2: the same two, now evaluated: duplicates after snap
    assert (run["answers"], run["valid"], run["new"], run["duplicates"]) == (2, 4, 2, 2)
    assert run["config"]["prompt_options"] == lpv.PromptOptions().as_dict()
    assert run["calls_to_target"] is None and run["n_calls"] == 16
    k1 = json.loads((root / "runs" / "k=1" / "seed0.json").read_text())
    # k=1: round 1 takes the first point (reading stops there); round 2 reads the first
    # (a duplicate now) and takes the second
    assert (k1["valid"], k1["new"], k1["duplicates"]) == (3, 2, 1)
    summary = json.loads((root / "summary.json").read_text())
    assert list(summary) == VARIANTS
    assert summary["default"]["valid_per_answer"] == 2.0
    assert summary["default"]["new_per_answer"] == 1.0
    assert summary["default"]["llm_tokens_per_answer"] == 18.0  # the fake's 11 + 7
    assert summary["units=unit"]["config"]["prompt_options"]["units"] == "unit"
    table = (root / "table.md").read_text()
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + len(VARIANTS)  # the header and a line per variant
    assert "| state_grid=true | 2 | 4 | 2 | 1 | - | 0/2 |" in table
    # each variant changed its prompt, and only its prompt
    prompts = [r["messages"][-1]["content"] for r in fake.requests]
    assert sum("unit coordinates in [0, 1]" in t for t in prompts) == 4  # 2 seeds x 2 rounds
    assert sum("number in [0, 1] (0 means -5.12" in t for t in prompts) == 4
    assert {r["temperature"] for r in fake.requests} == {0.7}
    # resumed: every run file exists, nothing is asked again
    n = len(fake.requests)
    assert lpv.main(args(fake, tmp_path)) == 0
    assert len(fake.requests) == n
    # a run file made with other settings is refused, not silently reused
    with pytest.raises(SystemExit, match="other settings"):
        lpv.main(args(fake, tmp_path, "--history", "3"))
    assert len(fake.requests) == n


@pytest.mark.parametrize(
    "bad, match",
    [
        (["--variants", "units=cube"], "units must be one of"),
        (["--variants", "order=random"], "order must be one of"),
        (["--variants", "target=-1"], "variant 'target=-1'"),
        (["--variants", "colour=red"], "unknown variant field 'colour'"),
        (["--variants", "k"], "field=value"),
        (["--strategy", "pso"], "asks no LLM"),
        (["--strategy", "nope"], "unknown strategy"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(fake, tmp_path, capsys, bad, match):
    with pytest.raises(SystemExit):
        lpv.main(["--base-url", fake.url, "--model", "fake", "--out", str(tmp_path), *bad])
    assert match in capsys.readouterr().err
    assert fake.requests == []


def test_variants_list_parses_and_changes_one_thing_each():
    names = [lpv.parse_variant(v) for v in lpv.DEFAULT_VARIANTS]
    assert names[0] == ("default", {})
    assert all(len(change) == 1 for _, change in names[1:])
    assert lpv.parse_variant("target=off") == ("target=off", {"target": None})
    assert lpv.parse_variant("state_grid=true") == ("state_grid=true", {"state_grid": True})

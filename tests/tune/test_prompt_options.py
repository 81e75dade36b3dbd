"""Prompt options (hgpso/tune/proposals.py PromptOptions): validation, the prompts each option
writes, unit-coordinate answers, snapping before the duplicate check, and resume."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

from hgpso.tune import (
    Categorical,
    Float,
    Int,
    LLMStats,
    PromptOptions,
    SearchSpace,
    make_strategy,
    parse_points,
    points_schema,
)
from hgpso.tune.proposals import best_points_prompt, describe_space, target_value
from hgpso.tune.state import StateError
from tests.tune.scripted_llm import points_answer, scripted_client

# the LSTM benchmark's space (benchmarks/tune_lstm.py) plus a categorical dimension
LSTM = SearchSpace(
    {
        "lr": Float(1e-4, 1e-1, log=True),
        "hidden": Int(4, 64, log=True),
        "layers": Int(1, 2),
        "window": Int(5, 40),
        "act": Categorical(["tanh", "relu"]),
    }
)
HIST = [
    ({"lr": 0.01, "hidden": 8, "layers": 1, "window": 10, "act": "tanh"}, 0.5),
    ({"lr": 0.001, "hidden": 16, "layers": 2, "window": 20, "act": "relu"}, 0.2),
    ({"lr": 0.05, "hidden": 32, "layers": 1, "window": 30, "act": "tanh"}, 0.9),
    ({"lr": 0.002, "hidden": 4, "layers": 2, "window": 5, "act": "relu"}, 0.3),
]


def lines_of(prompt: str) -> list[str]:
    return [ln for ln in prompt.splitlines() if ln.startswith("{") and " -> " in ln]


# -- the options object ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"units": "cube"}, "units must be one of"),
        ({"order": "random"}, "order must be one of"),
        ({"state_grid": 1}, "state_grid must be True or False"),
        ({"target": 0}, "target must be finite and > 0"),
        ({"target": -0.1}, "target must be finite and > 0"),
        ({"target": math.inf}, "target must be finite and > 0"),
        ({"target": True}, "target must be a number or None"),
        ({"target": "0.1"}, "target must be a number or None"),
    ],
)
def test_bad_options_are_refused_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        PromptOptions(**kw)


def test_options_from_dicts_and_their_data():
    opts = PromptOptions.make({"units": "unit", "target": 1})
    assert opts == PromptOptions(units="unit", target=1.0) and isinstance(opts.target, float)
    assert PromptOptions.make(None) == PromptOptions()
    assert PromptOptions(**opts.as_dict()) == opts
    assert json.loads(json.dumps(opts.as_dict())) == opts.as_dict()
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        PromptOptions.make({"colour": "red"})
    with pytest.raises(TypeError):
        PromptOptions.make("unit")
    with pytest.raises(ValueError, match="order must be one of"):
        make_strategy(
            "llm_pso",
            LSTM,
            population=4,
            llm=scripted_client([])[0],
            prompt_options={"order": "up"},
        )


# -- the prompts ----------------------------------------------------------------------------
def test_the_default_prompt_is_the_papers_prompt_unchanged():
    # written out as the prompt was before the options existed (papers 000/001)
    ranked = sorted(HIST, key=lambda pv: pv[1])[:3]
    lines = "\n".join(
        json.dumps(
            {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in p.items()},
            separators=(",", ":"),
        )
        + f" -> {v}"
        for p, v in ranked
    )
    expected = (
        f"T\nParameters:\n{LSTM.describe()}\n"
        "Best points evaluated so far (point -> score, lower is better):\n"
        f"{lines}\n"
        "Propose 2 new points, different from those above, likely to score lower. "
        'Answer as JSON: {"points": [{...}, ...]} with exactly 2 points.'
    )
    assert best_points_prompt("T", LSTM, HIST, 3, 2) == expected
    assert best_points_prompt("T", LSTM, HIST, 3, 2, PromptOptions()) == expected


def test_order_changes_the_order_of_the_same_points():
    def shown(order):
        return lines_of(best_points_prompt("T", LSTM, HIST, 3, 2, PromptOptions(order=order)))

    best = shown("best_first")
    assert [ln.split(" -> ")[1] for ln in best] == ["0.2", "0.3", "0.5"]
    assert shown("worst_first") == best[::-1]
    # the same three best, in the order they were told: 0.5 (1st), 0.2 (2nd), 0.3 (4th)
    assert [ln.split(" -> ")[1] for ln in shown("chronological")] == ["0.5", "0.2", "0.3"]
    text = best_points_prompt("T", LSTM, HIST, 3, 2, PromptOptions(order="worst_first"))
    assert "lower is better, worst first, the best last):" in text


def test_unit_prompt_shows_unit_coordinates_and_asks_for_them():
    opts = PromptOptions(units="unit")
    text = best_points_prompt("T", LSTM, HIST, 1, 2, opts)
    (line,) = lines_of(text)
    shown = json.loads(line.split(" -> ")[0])
    u = LSTM.encode(HIST[1][0])
    assert shown == {n: float(f"{x:.4g}") for n, x in zip(LSTM.names, u, strict=True)}
    assert "- window: number in [0, 1] (0 means 5, 1 means 40)" in text
    assert "- lr: number in [0, 1] (0 means 0.0001, 1 means 0.1, log scale)" in text
    assert "Answer as JSON (unit coordinates in [0, 1])" in text
    item = points_schema(LSTM, 2, "unit")["properties"]["points"]["items"]
    assert all(v == {"type": "number"} for v in item["properties"].values())


def test_state_grid_spells_out_integers_and_choices():
    text = describe_space(LSTM, PromptOptions(state_grid=True))
    assert "- layers: integer, one of [1, 2]" in text
    assert "- window: integer in [5, 40], step 1 (36 values;" in text
    assert "- hidden: integer in [4, 64], log scale, step 1 (61 values;" in text
    assert "- act: exactly one of ['tanh', 'relu'] (no other value is accepted)" in text
    assert "- lr: float in [0.0001, 0.1], log scale" in text  # floats have no grid
    unit = describe_space(LSTM, PromptOptions(units="unit", state_grid=True))
    assert "the 36 integers 5..40 each own an equal slice of [0, 1]" in unit
    assert (
        "the 61 integers 4..64 own consecutive slices of [0, 1], in order, equal on the log" in unit
    )
    assert "the 2 choices each own an equal slice of [0, 1]" in unit
    assert describe_space(LSTM) == LSTM.describe()


def test_target_asks_for_a_value_below_the_best():
    # LLAMBO: best - alpha * (worst - best) = 0.2 - 0.5 * 0.7
    assert target_value(HIST, 0.5) == pytest.approx(-0.15)
    assert target_value([({}, 2.0), ({}, 2.0)], 0.1) == pytest.approx(1.8)  # |best|
    assert target_value([({}, 0.0)], 0.1) == pytest.approx(-0.1)  # 1
    assert target_value([({}, math.inf)], 0.1) is None
    text = best_points_prompt("T", LSTM, HIST, 3, 2, PromptOptions(target=0.5))
    assert "expected to score about -0.15 (the best so far is 0.2). Answer" in text
    assert "likely to score lower" not in text
    # nothing finite told yet: the default question
    empty = best_points_prompt("T", LSTM, [], 3, 2, PromptOptions(target=0.5))
    assert "likely to score lower" in empty


def test_llm_ga_prompt_follows_the_options():
    llm, fake = scripted_client([])
    st = make_strategy(
        "llm_ga",
        LSTM,
        population=6,
        seed=0,
        llm=llm,
        prompt_options=PromptOptions(units="unit", target=0.1, state_grid=True),
    )
    pts = st.ask()
    st.tell(pts, [float(i) for i in range(len(pts))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        st.ask()
    text = fake.requests[0]["messages"][-1]["content"]
    assert "- layers: number in [0, 1] (0 means 1, 1 means 2); the 2 integers" in text
    assert "expected to score about -0.5 (the best so far is 0.0), keeping what worked" in text
    parent = json.loads(lines_of(text)[0].split(" -> ")[0])
    assert all(0.0 <= v <= 1.0 for v in parent.values())


# -- the answers: snapped, then de-duplicated; data, never code -----------------------------
def test_answers_are_snapped_to_the_grid_before_the_duplicate_check():
    tried = {LSTM.key(HIST[0][0])}  # hidden 8, window 10, tanh
    stats = LLMStats()
    answer = {
        "points": [
            # the tried point spelled off the grid: 7.6 -> 8, "10.4" -> 10, act by its spelling
            {"lr": 0.01, "hidden": 7.6, "layers": 1.2, "window": "10.4", "act": "tanh"},
            {"lr": 0.02, "hidden": 12.4, "layers": 2, "window": 12, "act": "relu"},
            # the previous point once rounded (12.4 -> 12, 11.6 -> 12)
            {"lr": 0.02, "hidden": 12, "layers": 2, "window": 11.6, "act": "relu"},
            {"lr": 0.03, "hidden": 64, "layers": 1, "window": 40, "act": "gelu"},  # invalid
            {"lr": 0.03, "hidden": 99, "layers": 1, "window": 40, "act": "tanh"},  # clipped
        ]
    }
    got = parse_points(answer, LSTM, k=5, seen=tried, stats=stats)
    assert got == [
        {"lr": 0.02, "hidden": 12, "layers": 2, "window": 12, "act": "relu"},
        {"lr": 0.03, "hidden": 64, "layers": 1, "window": 40, "act": "tanh"},
    ]
    assert (stats.proposed, stats.accepted, stats.rejected, stats.duplicates) == (5, 2, 3, 2)


def test_unit_answers_are_decoded_then_compared():
    stats = LLMStats()
    # window: 36 levels; u = 0.01 and 0.02 both fall in level 0 (window 5): one is a duplicate
    answer = {
        "points": [
            {"lr": 0.5, "hidden": 0.0, "layers": 0.9, "window": 0.01, "act": 0.7},
            {"lr": 0.5, "hidden": 0.0, "layers": 0.8, "window": 0.02, "act": 0.9},
            {"lr": 1.7, "hidden": -3, "layers": 0.1, "window": "0.5", "act": 0.2},  # clipped
            {"lr": "1+1", "hidden": 0, "layers": 0, "window": 0, "act": 0},  # not a number
        ]
    }
    got = parse_points(answer, LSTM, k=4, stats=stats, units="unit")
    assert got == [
        {"lr": LSTM["lr"].decode(0.5), "hidden": 4, "layers": 2, "window": 5, "act": "relu"},
        {"lr": 0.1, "hidden": 4, "layers": 1, "window": 22, "act": "tanh"},  # 22.5 rounds to even
    ]
    assert (stats.accepted, stats.rejected, stats.duplicates) == (2, 2, 1)
    with pytest.raises(ValueError, match="units must be one of"):
        parse_points(answer, LSTM, k=1, units="cube")


def test_replies_stay_data_whatever_they_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = Path("pwned")
    payload = f"__import__('os').system('touch {marker}')"
    stats = LLMStats()
    answer = {
        "target": payload,
        "points": [
            {"lr": payload, "hidden": 8, "layers": 1, "window": 10, "act": "tanh"},
            {"lr": 0.01, "hidden": "4*4", "layers": 1, "window": 10, "act": "tanh"},
            {"lr": 0.01, "hidden": 8, "layers": 1, "window": 10, "act": payload},
            # a predicted score or an echoed target beside the values: ignored
            {
                "lr": 0.01,
                "hidden": 9,
                "layers": 1,
                "window": 10,
                "act": "tanh",
                "score": payload,
                "expected": -1.0,
            },
        ],
    }
    got = parse_points(answer, LSTM, k=4, stats=stats)
    assert got == [{"lr": 0.01, "hidden": 9, "layers": 1, "window": 10, "act": "tanh"}]
    assert stats.rejected == 3 and not marker.exists()


# seeds where the first grid point not told yet is one of the batch's other members
@pytest.mark.parametrize("name, seed", [("llm_pso", 3), ("llm_ga", 5), ("llm_random", 0)])
def test_a_proposal_equal_to_a_kept_member_of_the_batch_is_a_duplicate(name, seed):
    """On a 3x3 integer grid the LLM lists every point: the accepted ones are new, none is a
    point of the batch that stays (it would be evaluated twice) or one told before."""
    space = SearchSpace({"a": Int(0, 2), "b": Int(0, 2)})
    grid = [{"a": a, "b": b} for a in range(3) for b in range(3)]
    llm, _ = scripted_client([points_answer(*grid)] * 5)
    st = make_strategy(name, space, population=4, seed=seed, llm=llm, k=1)
    pts = st.ask()
    st.tell(pts, [float(p["a"] + p["b"]) for p in pts])
    told = {space.key(p) for p in pts}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        batch = st.ask()
    stats = st.llm_stats
    assert stats.accepted == 1
    keys = [space.key(p) for p in batch]

    # every grid point is valid and k=1: the points read before the accepted one were
    # all rejected as duplicates, and the accepted one is the next
    assert stats.duplicates == stats.rejected
    new = grid[stats.rejected]
    assert space.key(new) not in told and new in batch
    kept = set(keys) - {space.key(new)}  # the batch's other members
    assert all(space.key(p) in told | kept for p in grid[: stats.rejected])
    assert keys.count(space.key(new)) == 1  # not also a kept member of the batch


# -- resume ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llm_pso", "llm_ga", "llm_tpe"])
def test_the_options_are_in_the_state_and_resume_is_exact(name):
    pytest.importorskip("optuna")
    opts = PromptOptions(units="unit", order="chronological", state_grid=True, target=0.2)
    answers = [
        points_answer({"lr": 0.5, "hidden": 0.3, "layers": 0.1, "window": 0.1 * i, "act": 0.2})
        for i in range(1, 9)
    ]

    def build(o=opts, ans=answers):
        llm, fake = scripted_client(list(ans))
        return make_strategy(name, LSTM, population=4, seed=0, llm=llm, k=1, prompt_options=o), fake

    def score(p):
        return p["window"] / 40 + p["hidden"] / 64

    a, fa = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            pts = a.ask()
            a.tell(pts, [score(p) for p in pts])
        state = json.loads(json.dumps(a.state_dict()))
        assert state["data"]["prompt_options"] == opts.as_dict()
        b, fb = build(ans=answers[len(fa.requests) :])
        b.load_state_dict(state)
        pa, pb = a.ask(), b.ask()
    assert pa == pb
    assert fa.requests[-1]["messages"] == fb.requests[-1]["messages"]
    # another set of options: refused, naming both
    c, _ = build(o=PromptOptions(units="unit"))
    with pytest.raises(StateError, match="saved with prompt options"):
        c.load_state_dict(state)
    bad = json.loads(json.dumps(state))
    bad["data"]["prompt_options"]["order"] = "sideways"
    with pytest.raises(StateError, match="order must be one of"):
        b.load_state_dict(bad)


def test_an_older_state_without_options_or_duplicates_loads_as_the_defaults():
    llm, _ = scripted_client([])
    a = make_strategy("llm_pso", LSTM, population=4, seed=0, llm=llm)
    pts = a.ask()
    a.tell(pts, [1.0] * len(pts))
    state = json.loads(json.dumps(a.state_dict()))
    del state["data"]["prompt_options"]
    del state["data"]["llm_stats"]["duplicates"]
    b = make_strategy("llm_pso", LSTM, population=4, seed=0, llm=scripted_client([])[0])
    b.load_state_dict(state)
    assert b.llm_stats.duplicates == 0 and b.prompt_options == PromptOptions()
    c = make_strategy(
        "llm_pso",
        LSTM,
        population=4,
        seed=0,
        llm=scripted_client([])[0],
        prompt_options={"units": "unit"},
    )
    with pytest.raises(StateError, match="saved with prompt options"):
        c.load_state_dict(state)


def test_llm_sampler_writes_and_reads_with_the_options():
    optuna = pytest.importorskip("optuna")
    from hgpso.tune import LLMSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # unit coordinates: x = -3 + 6u, n = floor(6u) of 0..5
    llm, fake = scripted_client([points_answer({"x": 0.75, "n": 0.4})])
    sampler = LLMSampler(
        optuna.samplers.RandomSampler(seed=0),
        llm=llm,
        k=1,
        every=3,
        prompt_options=PromptOptions(units="unit", state_grid=True),
    )
    study = optuna.create_study(sampler=sampler)
    study.optimize(
        lambda t: t.suggest_float("x", -3.0, 3.0) ** 2 + t.suggest_int("n", 0, 5), n_trials=5
    )
    text = fake.requests[0]["messages"][-1]["content"]
    assert "the 6 integers 0..5 each own an equal slice" in text
    (round0,) = LLMSampler.rounds(study).values()
    assert round0["points"] == [{"x": 1.5, "n": 2}]
    with pytest.raises(ValueError, match="units must be one of"):
        LLMSampler(optuna.samplers.RandomSampler(), llm=llm, prompt_options={"units": "x"})

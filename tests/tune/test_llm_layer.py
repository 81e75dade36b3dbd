"""The ``llm`` layer over every base, with a scripted LLM (hgpso/tune/layer.py)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from hgpso.tune import Float, Int, SearchSpace, make_strategy, minimize, strategy_class
from hgpso.tune.state import StateError
from tests.tune.scripted_llm import points_answer, scripted_client

pytest.importorskip("optuna")
pytest.importorskip("cmaes")

SPACE = SearchSpace({"x": Float(-5.0, 5.0), "y": Float(-5.0, 5.0), "n": Int(0, 6)})
BASES = ["random", "pso", "ga", "tpe", "cmaes"]
POP = 6


def f(p):
    return (p["x"] - 1.0) ** 2 + (p["y"] + 0.5) ** 2 + (p["n"] - 2) ** 2


def answers(n=40, k=2):
    # distinct, valid, never-tried points: every LLM round is accepted in full
    return [
        points_answer(*({"x": 0.01 * i + 0.001 * j, "y": -0.3, "n": 2} for j in range(k)))
        for i in range(1, n + 1)
    ]


def layer(base, answers_, seed=0, **kw):
    llm, fake = scripted_client(answers_)
    st = make_strategy("llm", SPACE, population=POP, seed=seed, base=base, llm=llm, **kw)
    return st, fake


def twin_of(base_strategy):
    """A copy of a base strategy (through its JSON state): what it asks without the LLM."""
    twin = make_strategy(base_strategy.name, SPACE, population=POP, seed=base_strategy.seed)
    twin.load_state_dict(json.loads(json.dumps(base_strategy.state_dict())))
    return twin


def predicted_worst(st, batch, rows):
    """The layer's documented rule, computed here independently of layer.py."""
    if st.base_name == "pso":
        return sorted(rows, key=lambda r: -st.base.values[r])  # stable: LLM-PSO's order
    xs = np.array([SPACE.encode(p) for p, _ in st.history])
    vs = np.array([v for _, v in st.history])
    pred = {r: vs[np.argmin(((xs - SPACE.encode(batch[r])) ** 2).sum(1))] for r in rows}
    return sorted(rows, key=lambda r: (-pred[r], -r))


@pytest.mark.parametrize("base", BASES)
def test_llm_points_replace_exactly_the_k_worst_of_the_bases_batch(base):
    st, fake = layer(base, answers(), k=2)
    for generation in range(4):
        twin = twin_of(st.base)
        own = twin.ask()  # the base's batch without the layer
        pts = st.ask()
        if generation == 0:
            assert pts == own and st.adopted == [] and not fake.requests  # no LLM round
        else:
            rows = twin.foreign_rows()
            assert st.adopted == predicted_worst(st, own, rows)[:2]
            assert "Best points evaluated so far" in fake.requests[-1]["messages"][1]["content"]
            for j, row in enumerate(st.adopted):
                assert pts[row] == {"x": 0.01 * generation + 0.001 * j, "y": -0.3, "n": 2}
            for row in set(range(len(pts))) - set(st.adopted):
                assert pts[row] == own[row]  # untouched members are the base's own
        st.tell(pts, [f(p) for p in pts])
    assert st.llm_rounds == 3 and len(fake.requests) == 3
    assert st.llm_stats.accepted == 6 and st.llm_stats.fallbacks == 0
    # the base was told every evaluated point, the LLM's included
    assert st.base.history == st.history


def test_replace_last_takes_the_last_rows_last_first():
    st, _ = layer("tpe", answers(), k=2, replace="last")
    pts = st.ask()
    st.tell(pts, [f(p) for p in pts])
    st.ask()
    assert st.adopted == [POP - 1, POP - 2]


def test_ga_foreign_rows_are_children_only():
    st, _ = layer("ga", answers(k=3), k=3, base_kwargs={"reevaluate_parents": True})
    pts = st.ask()
    st.tell(pts, [f(p) for p in pts])
    st.ask()
    n_parents = st.base._n_parents_in_batch
    assert n_parents == 3 and sorted(st.adopted) == [3, 4, 5]


def test_llm_over_pso_proposes_exactly_what_llm_pso_proposes():
    a, _ = layer("pso", answers())
    llm, _ = scripted_client(answers())
    b = make_strategy("llm_pso", SPACE, population=POP, seed=0, llm=llm)
    for _ in range(6):
        pa, pb = a.ask(), b.ask()
        assert pa == pb
        vals = [f(p) for p in pa]
        a.tell(pa, vals)
        b.tell(pb, vals)
    np.testing.assert_array_equal(a.base.v, b.v)  # LLM-moved particles start at rest
    # the same counters; the seconds spent waiting are the clock's, not the search's
    sa, sb = a.llm_stats.as_dict(), b.llm_stats.as_dict()
    assert sa.pop("seconds") >= 0 and sb.pop("seconds") >= 0
    assert sa == sb


@pytest.mark.parametrize("base", BASES)
def test_invalid_or_duplicate_answers_fall_back_to_the_bases_own_points(base):
    st, fake = layer(base, [], k=2)
    pts = st.ask()
    st.tell(pts, [f(p) for p in pts])
    told = dict(pts[0])
    bad = [
        "Sorry, no JSON here.",
        points_answer(told, {"x": "far", "y": 0, "n": 1}),  # already tried; wrong type
        json.dumps({"points": "none"}),
    ]
    fake.answers = list(bad)
    for _ in bad:
        own = twin_of(st.base).ask()
        with pytest.warns(RuntimeWarning, match="using the plain move for 2 point"):
            got = st.ask()
        assert got == own and st.adopted == []
        st.tell(got, [f(p) for p in got])
    assert st.llm_stats.fallbacks == 3 and st.llm_stats.accepted == 0
    assert st.llm_stats.rejected == 2 and st.llm_rounds == 3


@pytest.mark.parametrize("base", BASES)
def test_state_round_trips_through_json_and_resumes_identically(base):
    script = answers()
    a, _ = layer(base, script)
    for _ in range(3):
        pts = a.ask()
        a.tell(pts, [f(p) for p in pts])
    a.ask()  # saved with an LLM batch pending
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    assert state["strategy"] == "llm" and state["data"]["base"]["strategy"] == base
    assert state["data"]["llm_rounds"] == 3 and state["data"]["adopted"] == a.adopted
    b, _ = layer(base, script[3:], seed=99)  # the rest of the script; the seed is the state's
    b.load_state_dict(state)
    assert b.pending == a.pending and b.adopted == a.adopted
    assert b.llm_stats.as_dict() == a.llm_stats.as_dict()
    for _ in range(3):
        pa, pb = a.pending, b.pending
        assert pa == pb
        a.tell(pa, [f(p) for p in pa])
        b.tell(pb, [f(p) for p in pb])
        a.ask()
        b.ask()
    sa, sb = a.state_dict(), b.state_dict()
    for s in (sa, sb):  # wall time spent waiting for the (scripted) LLM differs, nothing else
        s["data"]["llm_stats"].pop("seconds")
    assert sa == sb
    # a state whose nested base was tampered with is refused, and nothing changes
    bad = json.loads(json.dumps(state))
    bad["data"]["base"]["iteration"] = "3"
    c, _ = layer(base, [])
    before = c.state_dict()
    with pytest.raises(StateError, match="iteration must be an int"):
        c.load_state_dict(bad)
    assert c.state_dict() == before
    with pytest.raises(StateError, match="strategy"):  # another base's state
        layer("random" if base != "random" else "pso", [])[0].load_state_dict(state)


@pytest.mark.parametrize("name", ["tpe", "cmaes", "llm_tpe", "llm_cmaes", "llm_random"])
def test_seeded_runs_repeat(name):
    def run(seed):
        kw = {}
        if name.startswith("llm"):
            kw["llm"] = scripted_client(answers())[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return minimize(f, SPACE, name, budget=36, population=POP, seed=seed, **kw).trace

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_every_strategy_starts_from_the_shared_first_batch():
    first = [make_strategy(n, SPACE, population=POP, seed=2).ask() for n in ("pso", "tpe")]
    first.append(layer("cmaes", [], seed=2)[0].ask())
    assert first[0] == first[1] == first[2]


def test_the_optuna_bases_learn_from_adopted_points():
    st, _ = layer("cmaes", answers(), k=2)
    for _ in range(3):
        pts = st.ask()
        st.tell(pts, [f(p) for p in pts])
    trials = st.base._study.trials
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    llm_trials = [t for t in completed if t.params["y"] == -0.3]
    assert len(llm_trials) == 4  # two rounds of two, told as the LLM wrote them
    # CMA-ES counted each as a solution of the generation it was written into
    for t in llm_trials:
        gen = t.system_attrs.get("cma:generation")
        mates = [u for u in completed if u.system_attrs.get("cma:generation") == gen]
        assert gen is not None and len(mates) == POP
    assert sum(t.state.name == "FAIL" for t in trials) == 4  # the samples they replaced


def test_the_layer_refuses_bad_arguments():
    with pytest.raises(ValueError, match="name the base"):
        make_strategy("llm", SPACE, llm=scripted_client([])[0])
    with pytest.raises(ValueError, match="without an LLM"):
        make_strategy("llm", SPACE, base="llm_pso", llm=scripted_client([])[0])
    with pytest.raises(ValueError, match="replace"):
        make_strategy("llm", SPACE, base="pso", replace="best", llm=scripted_client([])[0])
    with pytest.raises(ValueError, match="over 'tpe'"):
        make_strategy("llm_tpe", SPACE, base="pso", llm=scripted_client([])[0])
    with pytest.raises(ValueError, match="popsize"):
        make_strategy("cmaes", SPACE, population=6, popsize=8)
    assert all(strategy_class(n).uses_llm for n in ("llm", "llm_tpe", "llm_cmaes", "llm_random"))
    assert not strategy_class("tpe").uses_llm and not strategy_class("cmaes").uses_llm


def test_an_optuna_state_that_replays_differently_is_refused():
    st = make_strategy("tpe", SPACE, population=POP, seed=0)
    for _ in range(3):
        pts = st.ask()
        st.tell(pts, [f(p) for p in pts])
    state = json.loads(json.dumps(st.state_dict()))
    other = make_strategy("tpe", SPACE, population=POP, seed=0, n_startup_trials=2)
    with pytest.raises(StateError, match="replaying event"):
        other.load_state_dict(state)
    fresh = make_strategy("tpe", SPACE, population=POP, seed=0)
    fresh.load_state_dict(state)
    assert fresh.ask() == st.ask()

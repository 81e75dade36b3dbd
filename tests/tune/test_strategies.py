import json
import math

import numpy as np
import pytest

from hgpso.tune import GA, PSO, Float, Int, RandomSearch, SearchSpace, make_strategy, minimize


def sphere(p):
    return sum((v - 0.3) ** 2 for v in p.values())


def space(d=3):
    return SearchSpace({f"x{i}": Float(-1.0, 1.0) for i in range(d)})


def run(strategy, iters=4, f=sphere):
    asked = []
    for _ in range(iters):
        pts = strategy.ask()
        asked.append(pts)
        strategy.tell(pts, [f(p) for p in pts])
    return asked


@pytest.mark.parametrize("name", ["random", "pso", "ga"])
def test_seeded_reproducibility(name):
    a = run(make_strategy(name, space(), population=6, seed=5))
    b = run(make_strategy(name, space(), population=6, seed=5))
    c = run(make_strategy(name, space(), population=6, seed=6))
    assert a == b
    assert a != c


def test_same_initial_points_for_every_strategy():
    firsts = [
        make_strategy(n, space(), population=6, seed=2).ask() for n in ("random", "pso", "ga")
    ]
    assert firsts[0] == firsts[1] == firsts[2]


@pytest.mark.parametrize("name", ["random", "pso", "ga"])
def test_bounds_respected(name):
    s = SearchSpace({"a": Float(-5, 5), "b": Float(1e-5, 1, log=True), "n": Int(2, 7)})
    st = make_strategy(name, s, population=8, seed=0)
    # an objective that pushes everything to the walls
    for pts in run(st, iters=8, f=lambda p: -abs(p["a"]) - p["n"] + math.log(p["b"])):
        for p in pts:
            assert -5 <= p["a"] <= 5 and 1e-5 <= p["b"] <= 1 and 2 <= p["n"] <= 7
            assert isinstance(p["n"], int)


def test_pso_update_matches_formula():
    st = PSO(space(2), population=4, seed=0, inertia=0.5, cognitive=1.0, social=2.0)
    pts = st.ask()
    st.tell(pts, [sphere(p) for p in pts])
    x, v, pb, gb = st.x.copy(), st.v.copy(), st.pbest.copy(), st.gbest.copy()
    rng = np.random.default_rng(0)
    rng.bit_generator.state = st.rng.bit_generator.state
    r1, r2 = rng.random((4, 2)), rng.random((4, 2))
    v_exp = np.clip(0.5 * v + r1 * (pb - x) + 2.0 * r2 * (gb - x), -0.5, 0.5)
    x_exp = x + v_exp
    st.ask()
    inside = (x_exp >= 0) & (x_exp <= 1)
    np.testing.assert_allclose(st.x[inside], x_exp[inside])
    np.testing.assert_allclose(st.v[inside], v_exp[inside])
    assert np.all(st.v[~inside] == 0)


def test_pso_and_ga_beat_random_on_sphere():
    res = {
        n: np.median(
            [minimize(sphere, space(4), n, budget=300, seed=s).best_value for s in range(5)]
        )
        for n in ("random", "pso", "ga")
    }
    assert res["pso"] < res["random"] and res["ga"] < res["random"]


def test_ga_operators_as_in_paper_003():
    st = GA(space(4), population=10, seed=1, mutation_rate=0.2)
    pts = st.ask()
    vals = [sphere(p) for p in pts]
    st.tell(pts, vals)
    parents, pvals = st.select()
    assert len(parents) == 5
    assert np.allclose(np.sort(vals)[:5], pvals)  # top half, best first
    # uniform crossover: every gene comes from one of the two parents
    a, b = np.zeros(4000), np.ones(4000)
    child = st.crossover(a, b)
    assert set(np.unique(child)) <= {0.0, 1.0} and abs(child.mean() - 0.5) < 0.05
    # mutation: each gene resampled with probability 0.2
    c = np.full(20000, 2.0)
    m = st.mutate(c)
    changed = m != 2.0
    assert abs(changed.mean() - 0.2) < 0.02
    assert np.all((m[changed] >= 0) & (m[changed] <= 1))
    # next generation: asks only the 5 children; parents keep their scores
    kids = st.ask()
    assert len(kids) == 5
    st.tell(kids, [sphere(p) for p in kids])
    assert len(st.pop) == 10 and np.allclose(
        np.sort(st.pop_val)[:1], min(vals + [sphere(p) for p in kids])
    )


def test_ga_without_mutation_children_are_parent_mixes():
    st = GA(space(3), population=6, seed=0, mutation_rate=0.0)
    pts = st.ask()
    st.tell(pts, [sphere(p) for p in pts])
    parents, _ = st.select()
    for kid in st.ask():
        u = st.space.encode(kid)
        for j in range(3):
            assert np.any(np.isclose(parents[:, j], u[j]))


def test_ga_reevaluate_parents():
    st = GA(space(2), population=6, seed=0, reevaluate_parents=True)
    pts = st.ask()
    st.tell(pts, [sphere(p) for p in pts])
    assert len(st.ask()) == 6


def test_minimize_counts_and_stops():
    r = minimize(sphere, space(2), "pso", budget=37, seed=0, population=5)
    assert r.n_calls == 37 and len(r.trace) == 37 and r.stopped == "budget"
    assert r.calls_to_target is None and r.llm == {}
    assert all(a >= b for a, b in zip(r.trace, r.trace[1:], strict=False))
    r2 = minimize(sphere, space(2), "pso", budget=1000, target=0.05, seed=0, population=5)
    assert r2.stopped == "target" and r2.calls_to_target == r2.n_calls and r2.best_value <= 0.05
    assert r2.trace[-1] == r2.best_value


def test_ask_tell_misuse_and_bad_values():
    st = RandomSearch(space(2), population=3, seed=0)
    with pytest.raises(RuntimeError):
        st.tell([], [])
    pts = st.ask()
    with pytest.raises(RuntimeError):
        st.ask()
    with pytest.raises(ValueError):
        st.tell(pts, [1.0])
    with pytest.raises(TypeError, match="value 1 is None"):
        st.tell(pts, [float("nan"), None, 2.0])
    st.tell(pts, [float("nan"), float("inf"), 2.0])  # non-finite scores count as +inf
    assert st.best_value == 2.0 and [v for _, v in st.history] == [math.inf, math.inf, 2.0]
    with pytest.raises(ValueError):
        make_strategy("nope", space())
    with pytest.raises(ValueError):
        PSO(space(), population=1)


@pytest.mark.parametrize("name", ["random", "pso", "ga"])
def test_state_dict_roundtrip_through_json_continues_the_search(name):
    import json

    a = make_strategy(name, space(), population=6, seed=9)
    run(a, iters=3)
    state = json.loads(json.dumps(a.state_dict()))
    b = make_strategy(name, space(), population=6, seed=123)  # seed overwritten by the state
    b.load_state_dict(state)
    assert run(a, iters=3) == run(b, iters=3)
    assert a.best_value == b.best_value and a.iteration == b.iteration == 6
    with pytest.raises(ValueError):
        make_strategy("random" if name != "random" else "pso", space()).load_state_dict(state)


# -- the ask/tell contract ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["random", "pso", "ga"])
def test_tell_matches_points_to_what_was_asked(name):
    a = make_strategy(name, space(), population=6, seed=1)
    b = make_strategy(name, space(), population=6, seed=1)
    for _ in range(3):
        pa, pb = a.ask(), b.ask()
        assert pa == pb
        vals = [sphere(p) for p in pa]
        a.tell(pa, vals)
        b.tell(pb[::-1], vals[::-1])  # the same batch told in another order
    assert a.ask() == b.ask() and a.state_dict() == b.state_dict()


def test_tell_refuses_points_that_were_not_asked():
    st = PSO(space(2), population=3, seed=0)
    pts = st.ask()
    other = dict(pts[0], x0=0.123456)
    with pytest.raises(ValueError, match="not one of the asked points"):
        st.tell([other, pts[1], pts[2]], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="not one of the asked points"):
        st.tell([pts[0], pts[0], pts[2]], [1.0, 2.0, 3.0])  # one asked point twice
    st.tell(pts, [1.0, 2.0, 3.0])  # still pending after the refusals
    assert st.iteration == 1


def test_cancel_drops_the_pending_batch():
    st = GA(space(2), population=4, seed=0)
    pts = st.ask()
    st.cancel()
    assert st.pending is None and st.iteration == 0
    with pytest.raises(RuntimeError, match="without a pending"):
        st.tell(pts, [1.0] * 4)
    assert len(st.ask()) == 4


def test_minimize_after_a_raising_objective_is_not_stuck_pending():
    st = PSO(space(2), population=4, seed=0)
    calls = []

    def bad(p):
        calls.append(p)
        if len(calls) == 3:
            raise KeyError("boom")
        return sphere(p)

    with pytest.raises(KeyError, match="boom"):
        minimize(bad, space(2), st, budget=20)
    assert st.pending is None
    state = st.state_dict()
    assert state["pending"] is None  # a state saved now is not pending either
    res = minimize(sphere, space(2), st, budget=8)  # the same strategy goes on
    assert res.n_calls == 8


def test_minimize_objective_returning_none_is_a_clear_error():
    with pytest.raises(TypeError, match=r"objective returned None for \{'x0'"):
        minimize(lambda p: None, space(2), "random", budget=3)
    with pytest.raises(TypeError, match="objective returned 'abc'"):
        minimize(lambda p: "abc", space(2), "random", budget=3)


def test_observe_and_extra_points():
    st = PSO(space(2), population=4, seed=0)
    pts = st.ask()
    st.tell(pts, [sphere(p) for p in pts])
    before = st.ask()
    st.cancel()
    best = {"x0": 0.3, "x1": 0.3}
    st.observe([best], [0.0])
    assert st.best_point == best and st.gbest_val == 0.0
    np.testing.assert_allclose(st.gbest, st.space.encode(best))
    assert st.history[-1] == (best, 0.0)
    # an extra point leaves the strategy unchanged and is a function of the rng
    state = st.state_dict()
    e1 = st.propose_extra(np.random.default_rng(5))
    assert st.state_dict() == state
    assert e1 == st.propose_extra(np.random.default_rng(5))
    assert before != st.ask()  # the swarm moved towards the observed best
    ga = GA(space(2), population=4, seed=0)
    pts = ga.ask()
    ga.tell(pts, [sphere(p) for p in pts])
    ga.observe([best], [-1.0])
    _, vals = ga.select()
    assert vals[0] == -1.0  # an observed point competes for parenthood
    child = ga.space.encode(ga.propose_extra(np.random.default_rng(1)))
    assert child.shape == (2,) and np.all((child >= 0) & (child <= 1))


def test_uses_llm_is_a_capability():
    from hgpso.tune import LLMGA, LLMPSO, strategy_class

    assert not any(c.uses_llm for c in (RandomSearch, PSO, GA))
    assert LLMPSO.uses_llm and LLMGA.uses_llm
    assert strategy_class("LLM-PSO") is LLMPSO and strategy_class("ga") is GA
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_class("nope")


# -- state: versioned, JSON data, validated on load ------------------------------------------
def _saved(name="pso", iters=2):
    st = make_strategy(name, space(2), population=4, seed=3)
    run(st, iters=iters)
    st.ask()  # saved while a batch is pending
    return st, json.loads(json.dumps(st.state_dict(), allow_nan=False))  # strict JSON


@pytest.mark.parametrize("name", ["random", "pso", "ga"])
def test_state_is_strict_json_with_a_version(name):
    st, state = _saved(name)
    assert state["format"] == "hgpso.tune.strategy" and state["version"] == 2
    assert state["strategy"] == name and state["iteration"] == 2
    fresh = make_strategy(name, space(2), population=4, seed=0)
    fresh.load_state_dict(state)
    assert fresh.pending == st.pending
    vals = [sphere(p) for p in st.pending]
    st.tell(st.pending, vals)
    fresh.tell(fresh.pending, vals)
    assert st.ask() == fresh.ask()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.update(iteration="2"), "iteration must be an int"),
        (lambda s: s.update(iteration=True), "iteration must be an int"),
        (lambda s: s.update(space={"x0": 1}), "search space"),
        (lambda s: s.update(extra=1), r"unknown key\(s\) \['extra'\]"),
        (lambda s: s["data"].update(gbest=[float("nan"), 0.5]), "gbest"),
        (lambda s: s["data"].update(gbest_val=float("nan")), "gbest_val"),
        (lambda s: s["data"].update(x=[[2.0, 0.5]] * 4), "unit cube"),
        (lambda s: s["data"].update(v=[[0.0, 0.0]] * 3), "4 rows"),
        (lambda s: s["data"].pop("pbest"), "missing key"),
        (lambda s: s.update(version=1), "version"),
        (lambda s: s.update(strategy="ga"), "'ga' strategy given to a 'pso'"),
        (lambda s: s.update(population=5), "population"),
        (lambda s: s.update(best_value=float("nan")), "best_value"),
        (lambda s: s.update(history=[[{"x0": 0.1}, 1.0]]), "history"),
        (lambda s: s.update(history=[[{"x0": 5.0, "x1": 0.0}, 1.0]]), "outside the space"),
        (lambda s: s.update(rng={"bit_generator": "MT19937"}), "rng"),
    ],
)
def test_load_refuses_a_bad_state_and_changes_nothing(change, match):
    from hgpso.tune.state import StateError

    _, state = _saved("pso")
    change(state)
    st = make_strategy("pso", space(2), population=4, seed=0)
    before = st.state_dict()
    with pytest.raises(StateError, match=match):
        st.load_state_dict(state)
    assert st.state_dict() == before


def test_load_refuses_a_state_for_other_bounds():
    _, state = _saved("ga")
    wider = SearchSpace({f"x{i}": Float(-2.0, 1.0) for i in range(2)})
    with pytest.raises(ValueError, match="search space"):
        make_strategy("ga", wider, population=4).load_state_dict(state)


def test_llm_ga_state_round_trips_its_llm_records(fake_llm):
    pytest.importorskip("openai")
    from hgpso.tune import LLMGA, LLMClient

    answer = json.dumps({"points": [{"x0": 0.31, "x1": 0.29}]})
    fake_llm.script = [("ok", answer)] * 2
    client = LLMClient(base_url=fake_llm.url, model="fake", api_key="k", max_retries=0)
    a = LLMGA(space(2), population=4, seed=0, llm=client, k=1)
    run(a, iters=2)  # the second ask is an LLM generation
    a.ask()
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    assert state["data"]["llm_rounds"] == 2 and state["data"]["eot"]
    assert state["data"]["llm_stats"]["calls"] == len(fake_llm.requests) == 2
    fresh = LLMClient(base_url=fake_llm.url, model="fake", api_key="k", max_retries=0)
    b = LLMGA(space(2), population=4, seed=0, llm=fresh, k=1)
    b.load_state_dict(state)
    assert b.eot == a.eot and b._llm_rows == a._llm_rows and b.pending == a.pending
    assert b.llm_stats.calls == 2  # the new client counts on from the saved totals
    bad = json.loads(json.dumps(state))
    bad["data"]["llm_stats"]["calls"] = "2"
    with pytest.raises(ValueError, match="llm_stats"):
        LLMGA(space(2), population=4, seed=0, llm=fresh, k=1).load_state_dict(bad)

"""Error paths of the LLM client and strategies against a scripted fake server."""

import json
import warnings

import numpy as np
import pytest

from hgpso.tune import LLMGA, LLMPSO, Float, LLMClient, LLMError, SearchSpace, minimize

SPACE = SearchSpace({"x": Float(-1.0, 1.0), "y": Float(-1.0, 1.0)})
SECRET = "sk-test-SECRET-123"


def f(p):
    return p["x"] ** 2 + p["y"] ** 2


def client(fake, **kw):
    kw.setdefault("max_retries", 2)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff", 0.01)
    return LLMClient(base_url=fake.url, model="fake", api_key=SECRET, **kw)


def good(*pts):
    return ("ok", json.dumps({"points": [{"x": a, "y": b} for a, b in pts]}))


def test_good_answer_counts_tokens_and_sends_schema(fake_llm):
    fake_llm.script = [good((0.1, 0.2))]
    c = client(fake_llm)
    assert c.complete_json([{"role": "user", "content": "hi"}], {"type": "object"}) == {
        "points": [{"x": 0.1, "y": 0.2}]
    }
    assert c.stats.calls == 1 and c.stats.prompt_tokens == 11 and c.stats.completion_tokens == 7
    req = fake_llm.requests[0]
    assert req["response_format"]["type"] == "json_schema"
    assert req["max_tokens"] == 256 and req["model"] == "fake"
    assert fake_llm.headers[0].get("authorization") == f"Bearer {SECRET}"


def test_500_then_success_is_retried(fake_llm):
    fake_llm.script = [("status", 500), ("status", 503), good((0.1, 0.2))]
    c = client(fake_llm)
    assert c.complete_json([{"role": "user", "content": "hi"}])["points"]
    assert c.stats.calls == 3 and c.stats.failures == 2 and c.stats.retries == 2


def test_each_call_sends_its_own_seed_and_retries_step_it(fake_llm):
    # the same prompt twice (a stalled search) must not get the same seeded sample twice
    fake_llm.script = [good((0.1, 0.2)), ("status", 500), good((0.3, 0.4)), good((0.5, 0.6))]
    c = client(fake_llm, seed=7)
    msgs = [{"role": "user", "content": "the same prompt"}]
    for _ in range(3):
        c.complete_json(msgs)
    assert [r["seed"] for r in fake_llm.requests] == [7, 1007, 1008, 2007]
    # a new client with the same seed repeats the sequence call for call
    fake_llm.requests.clear()
    fake_llm.script = [good((0.1, 0.2)), good((0.3, 0.4))]
    c2 = client(fake_llm, seed=7)
    c2.complete_json(msgs)
    c2.complete_json(msgs)
    assert [r["seed"] for r in fake_llm.requests] == [7, 1007]


def test_rate_limit_and_malformed_then_give_up(fake_llm):
    fake_llm.script = [("status", 429), ("ok", "not json at all"), ("raw", b"{garbage")]
    c = client(fake_llm)
    with pytest.raises(LLMError):
        c.complete_json([{"role": "user", "content": "hi"}])
    assert c.stats.calls == 3 and c.stats.failures == 3


def test_timeout_is_bounded(fake_llm):
    fake_llm.script = [("sleep", 2.0)]
    fake_llm.default = ("sleep", 2.0)
    c = client(fake_llm, timeout=0.3, max_retries=1)
    with pytest.raises(LLMError):
        c.complete_json([{"role": "user", "content": "hi"}])
    # timeout is one deadline for the whole call: the first request uses it all, so the
    # allowed retry is never sent (test_llm_hostile.py has the wall-time bounds)
    assert c.stats.calls == 1 and c.stats.failures == 1 and c.stats.seconds < 1.5


def test_bad_request_downgrades_response_format(fake_llm):
    # only errors that name the response format downgrade it (see test_llm_hostile for a 400
    # about something else)
    fake_llm.script = [
        ("error", (422, "response_format type json_schema is not supported")),
        ("error", (400, "unknown field: response_format")),
        good((0.3, 0.3)),
        good((0.1, 0.1)),
    ]
    c = client(fake_llm)
    assert c.complete_json([{"role": "user", "content": "hi"}], {"type": "object"})
    kinds = [r.get("response_format", {}).get("type") for r in fake_llm.requests]
    assert kinds == ["json_schema", "json_object", None]
    # a new client for the same server starts with the format that worked
    c2 = client(fake_llm)
    assert c2.complete_json([{"role": "user", "content": "hi"}], {"type": "object"})
    assert "response_format" not in fake_llm.requests[-1] and c2.stats.calls == 1


def test_llama_cpp_style_500_on_response_format_downgrades(fake_llm):
    msg = "1 validation error: ('body', 'response_format', 'type') Input should be 'text'"
    fake_llm.script = [("status", 500), ("error", (500, msg)), good((0.3, 0.3))]
    c = client(fake_llm, max_retries=2)
    assert c.complete_json([{"role": "user", "content": "hi"}], {"type": "object"})
    kinds = [r.get("response_format", {}).get("type") for r in fake_llm.requests]
    # a plain 500 is retried with the same format, one naming response_format downgrades
    assert kinds == ["json_schema", "json_schema", "json_object"]


def test_llm_pso_replaces_k_worst_and_resets_velocity(fake_llm):
    fake_llm.default = good((0.01, 0.02), (-0.03, 0.04), (0.5, 0.5))
    st = LLMPSO(SPACE, population=6, seed=0, llm=client(fake_llm), k=2)
    pts = st.ask()
    vals = [f(p) for p in pts]
    st.tell(pts, vals)
    worst = set(np.argsort(vals)[-2:].tolist())
    nxt = st.ask()
    replaced = {i for i, p in enumerate(nxt) if (p["x"], p["y"]) in {(0.01, 0.02), (-0.03, 0.04)}}
    assert replaced == worst
    assert all(np.all(st.v[i] == 0) for i in worst)
    assert st.llm_stats.accepted == 2 and st.llm_stats.fallbacks == 0
    # the LLM prompt carries the best points and the search space
    prompt = fake_llm.requests[0]["messages"][-1]["content"]
    assert "x: float in [-1, 1]" in prompt and "->" in prompt


def test_llm_failure_falls_back_to_plain_pso(fake_llm):
    from hgpso.tune import PSO

    fake_llm.default = ("status", 500)
    st = LLMPSO(SPACE, population=5, seed=3, llm=client(fake_llm, max_retries=1), k=2)
    ref = PSO(SPACE, population=5, seed=3)
    for _ in range(3):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            a = st.ask()
        b = ref.ask()
        assert a == b  # identical to plain PSO when the LLM never answers
        st.tell(a, [f(p) for p in a])
        ref.tell(b, [f(p) for p in b])
    assert st.llm_stats.fallbacks == 2 and st.llm_stats.calls == 4
    assert any("plain move" in str(x.message) for x in w)


def test_duplicates_and_partial_answers_fall_back_with_warning(fake_llm):
    st = LLMPSO(SPACE, population=4, seed=0, llm=client(fake_llm), k=2)
    pts = st.ask()
    st.tell(pts, [f(p) for p in pts])
    tried = pts[0]
    fake_llm.default = ("ok", json.dumps({"points": [tried, {"x": 0.2, "y": "bad"}]}))
    with pytest.warns(RuntimeWarning, match="0 of 2"):
        st.ask()
    assert st.llm_stats.rejected == 2 and st.llm_stats.fallbacks == 1


def test_llm_ga_evolution_of_thought_in_prompt(fake_llm):
    fake_llm.script = [good((0.0, 0.01)), good((0.0, 0.02)), good((0.0, 0.03))]
    st = LLMGA(SPACE, population=6, seed=0, llm=client(fake_llm), k=1)
    for _ in range(3):
        pts = st.ask()
        st.tell(pts, [f(p) for p in pts])
    assert len(st.eot) >= 1 and st.eot[0]["point"] == {"x": 0.0, "y": 0.01}
    assert st.eot[0]["outcome"] in ("improved", "worse")
    later = fake_llm.requests[-1]["messages"][-1]["content"]
    assert "earlier proposals" in later and '{"x":0.0,"y":0.01}' in later
    assert "Current parents" in later


def test_minimize_reports_llm_separately_and_never_leaks_key(fake_llm):
    fake_llm.default = good((0.0, 0.0))
    c = client(fake_llm)
    res = minimize(f, SPACE, "llm_pso", budget=30, target=1e-9, seed=0, population=5, llm=c, k=1)
    assert res.calls_to_target is not None and res.best_value == 0.0
    assert res.llm["calls"] >= 1 and res.llm["tokens"] > 0 and res.llm["seconds"] > 0
    blob = json.dumps(res.as_dict()) + repr(c) + json.dumps(c.describe())
    assert SECRET not in blob


def test_llm_settings_validation(monkeypatch):
    monkeypatch.delenv("HGPSO_LLM_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with pytest.raises(ValueError, match="model"):
        LLMClient(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError):
        LLMClient(model="m", temperature=5)
    monkeypatch.setenv("HGPSO_LLM_MODEL", "from-env")
    monkeypatch.setenv("HGPSO_LLM_TEMPERATURE", "0.2")
    c = LLMClient()
    assert c.model == "from-env" and c.temperature == 0.2
    with pytest.raises(ValueError):
        LLMPSO(SPACE, population=4, llm=c, k=5)


def test_format_negotiation_does_not_use_up_retries(fake_llm):
    fake_llm.script = [
        ("error", (422, "json_schema response_format unsupported")),
        good((0.2, 0.2)),
    ]
    c = client(fake_llm, max_retries=0)
    assert c.complete_json([{"role": "user", "content": "hi"}], {"type": "object"})
    assert c.stats.calls == 2 and c.stats.retries == 0 and c.stats.negotiations == 1

"""End to end against the real local server (scripts/llm_server.sh): real HTTP via openai.

At most ~4 LLM calls with capped max_tokens, so this stays around a minute on 2 CPU cores.
"""

import warnings

import pytest

from hgpso.tune import LLMGA, LLMPSO, Float, Int, LLMClient, SearchSpace, minimize

pytestmark = pytest.mark.llm

SPACE = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "layers": Int(1, 4)})


def objective(p):
    import math

    return (math.log10(p["lr"]) + 2.0) ** 2 + (p["layers"] - 2) ** 2


def make_client(real_llm, **kw):
    return LLMClient(
        base_url=real_llm["base_url"],
        model=real_llm["model"],
        max_tokens=96,
        timeout=120,
        max_retries=1,
        seed=0,
        **kw,
    )


def test_real_server_answers_json(real_llm):
    c = make_client(real_llm)
    ans = c.complete_json(
        [{"role": "user", "content": 'Reply with the JSON object {"ok": true} only.'}],
        {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    )
    assert isinstance(ans, dict)
    assert c.stats.calls >= 1 and c.stats.prompt_tokens > 0 and c.stats.completion_tokens > 0


def test_real_llm_pso_end_to_end(real_llm):
    c = make_client(real_llm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a tiny model may fall back
        st = LLMPSO(
            SPACE,
            population=4,
            seed=0,
            llm=c,
            k=2,
            max_llm_calls=1,
            task="Tune a learning rate and a layer count; lower loss is better.",
        )
        res = minimize(objective, SPACE, st, budget=12)
    assert res.n_calls == 12 and st.llm_rounds == 1
    assert 1 <= res.llm["calls"] <= 2 and res.llm["tokens"] > 0 and res.llm["seconds"] > 0
    # whatever the model said, every evaluated point is typed and in bounds
    for p, _ in st.history:
        assert 1e-4 <= p["lr"] <= 1.0 and p["layers"] in (1, 2, 3, 4)
    assert res.llm["accepted"] + res.llm["fallbacks"] >= 1


def test_real_llm_ga_end_to_end(real_llm):
    c = make_client(real_llm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        st = LLMGA(SPACE, population=4, seed=1, llm=c, k=1, max_llm_calls=1)
        res = minimize(objective, SPACE, st, budget=8)
    assert st.llm_rounds == 1 and res.llm["calls"] >= 1
    for p, _ in st.history:
        assert 1e-4 <= p["lr"] <= 1.0 and p["layers"] in (1, 2, 3, 4)

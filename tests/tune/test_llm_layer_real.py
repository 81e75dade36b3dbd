"""``llm`` over ``tpe`` against the real local server (scripts/llm_server.sh), a few rounds."""

from __future__ import annotations

import math
import warnings

import pytest

from hgpso.tune import Float, Int, LLMClient, SearchSpace, make_strategy, minimize

pytest.importorskip("optuna")
pytestmark = pytest.mark.llm

SPACE = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "layers": Int(1, 4)})


def objective(p):
    return (math.log10(p["lr"]) + 2.0) ** 2 + (p["layers"] - 2) ** 2


def test_real_llm_over_tpe_for_three_generations(real_llm):
    llm = LLMClient(
        base_url=real_llm["base_url"],
        model=real_llm["model"],
        max_tokens=96,
        timeout=120,
        max_retries=1,
        seed=0,
    )
    st = make_strategy(
        "llm",
        SPACE,
        population=4,
        seed=0,
        base="tpe",
        llm=llm,
        k=2,
        task="Tune a learning rate and a layer count; lower loss is better.",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a tiny model may fall back (counted)
        res = minimize(objective, SPACE, st, budget=16)  # generations 0-3: 3 LLM rounds
    assert res.n_calls == 16 and st.llm_rounds == 3
    assert res.llm["calls"] >= 3 and res.llm["tokens"] > 0 and res.llm["seconds"] > 0
    # each round either had its points accepted or counted a fallback
    assert res.llm["accepted"] + res.llm["fallbacks"] >= 3
    # whatever the model said, the base (TPE) was told every evaluated point, typed, in bounds
    assert st.base.history == st.history and len(st.history) == 16
    for p, _ in st.history:
        assert 1e-4 <= p["lr"] <= 1.0 and p["layers"] in (1, 2, 3, 4)

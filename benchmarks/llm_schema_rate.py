"""Valid-answer rate of the local LLM server per ``response_format`` (counts, not timings).

Sends the same LLM-PSO proposal prompt ``--n`` times (seeds 0..n-1) in three forms and counts
answers from which :func:`hgpso.tune.llm.parse_points` takes ``k`` valid, new points:

- ``json_object``: plain JSON mode without a schema (what a client falls back to when the
  server rejects ``json_schema`` and the schema is dropped);
- ``json_object+schema``: ``{"type": "json_object", "schema": ...}``, which llama.cpp's server
  turns into a grammar;
- ``client_auto``: :class:`hgpso.tune.LLMClient` with ``response_format="auto"`` (tries
  ``json_schema``, downgrades only on an error naming the format).

Usage (a server from ``scripts/llm_server.sh start``)::

    python -m benchmarks.llm_schema_rate --n 10 --out benchmarks/results/llm_schema_rate.json
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from benchmarks import cli_types as cli
from hgpso.tune import Float, LLMClient, SearchSpace
from hgpso.tune.llm import extract_json, parse_points, points_schema

SPACE = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "momentum": Float(0.0, 0.99)})
K = 2
PROMPT = (
    "We minimise the validation loss of a model over two hyperparameters: lr in [0.0001, 1] "
    "(log scale) and momentum in [0, 0.99]. Tried so far (point -> loss):\n"
    '{"lr": 0.1, "momentum": 0.9} -> 0.41\n{"lr": 0.01, "momentum": 0.5} -> 0.63\n'
    f"Propose {K} new points likely to lower the loss. Answer only JSON: "
    '{"points": [{"lr": <number>, "momentum": <number>}, ...]}'
)


def _valid(answer: Any) -> bool:
    try:
        return len(parse_points(answer, SPACE, K)) == K
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=cli.positive_int, default=10, help="requests per form")
    p.add_argument("--max-tokens", type=cli.positive_int, default=160)
    p.add_argument("--out", type=cli.out_file_mkdir, default=None)
    p.add_argument(
        "--chat-format",
        default=None,
        help="the server's chat template, recorded with the counts (the API does not report it)",
    )
    args = p.parse_args(argv)
    url, model = os.environ.get("HGPSO_LLM_BASE_URL"), os.environ.get("HGPSO_LLM_MODEL")
    if not url or not model:
        print("set HGPSO_LLM_BASE_URL and HGPSO_LLM_MODEL (scripts/llm_server.sh start)")
        return 2
    import openai

    raw = openai.OpenAI(base_url=url, api_key="sk-no-key", timeout=120, max_retries=0)
    messages = [{"role": "user", "content": PROMPT}]
    schema = points_schema(SPACE, K)
    forms: dict[str, dict[str, Any] | None] = {
        "json_object": {"type": "json_object"},
        "json_object+schema": {"type": "json_object", "schema": schema},
    }
    results: dict[str, Any] = {}
    for name, rf in forms.items():
        valid, samples = 0, []
        for seed in range(args.n):
            try:
                r = raw.chat.completions.create(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=args.max_tokens,
                    temperature=0.7,
                    seed=seed,
                    response_format=rf,  # type: ignore[arg-type]
                )
                text = r.choices[0].message.content or ""
                ok = _valid(extract_json(text))
            except (openai.OpenAIError, ValueError) as e:
                text, ok = f"error: {type(e).__name__}", False
            valid += ok
            samples.append(text[:120])
        results[name] = {"valid": valid, "of": args.n, "samples": samples[:3]}
        print(f"{name:20s} valid {valid}/{args.n}", flush=True)
    valid, fmts = 0, []
    for seed in range(args.n):
        c = LLMClient(url, model, max_tokens=args.max_tokens, timeout=120, max_retries=0, seed=seed)
        try:
            ok = _valid(c.complete_json(messages, schema))
        except Exception:
            ok = False
        valid += ok
        fmts.append(c.describe()["response_format"])
    results["client_auto"] = {"valid": valid, "of": args.n, "final_formats": sorted(set(fmts))}
    print(f"{'client_auto':20s} valid {valid}/{args.n} (format {sorted(set(fmts))})")
    record = {
        "server": url,
        "model": model,
        "chat_format": args.chat_format,
        "k": K,
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

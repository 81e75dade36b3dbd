"""An in-process stand-in for an OpenAI-compatible server (``LLMClient(client=...)``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from hgpso.tune import LLMClient


class ScriptedLLM:
    """Answers chat requests from a list of texts (then ``default``); records the requests."""

    def __init__(self, answers: Iterable[str], default: str = "Sorry, no idea.") -> None:
        self.answers, self.default, self.requests = list(answers), default, []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, **request: Any) -> Any:
        self.requests.append(request)
        text = self.answers.pop(0) if self.answers else self.default
        usage = SimpleNamespace(prompt_tokens=10, completion_tokens=5)
        return SimpleNamespace(
            choices=[SimpleNamespace(message=SimpleNamespace(content=text))], usage=usage
        )


def points_answer(*points: dict[str, Any]) -> str:
    return json.dumps({"points": list(points)})


def scripted_client(answers: Iterable[str], **kw: Any) -> tuple[LLMClient, ScriptedLLM]:
    fake = ScriptedLLM(answers)
    return LLMClient(model="scripted", client=fake, max_retries=0, **kw), fake

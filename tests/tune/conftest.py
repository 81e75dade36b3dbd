"""Fixtures for hgpso.tune tests: the real LLM server (or a clear skip) and a scripted fake."""

from __future__ import annotations

import os

import pytest

from tests.tune.fake_server import FakeLLM, chat_body

__all__ = ["FakeLLM", "chat_body"]


@pytest.fixture(scope="session")
def real_llm() -> dict:
    """Settings of the real OpenAI-compatible server started by scripts/llm_server.sh.

    Skips when ``HGPSO_LLM_BASE_URL``/``HGPSO_LLM_MODEL`` are unset, except under
    ``HGPSO_REQUIRE_LLM=1`` (CI), where a missing server is a failure.
    """
    base_url = os.environ.get("HGPSO_LLM_BASE_URL")
    model = os.environ.get("HGPSO_LLM_MODEL")
    if not (base_url and model):
        msg = (
            "no LLM server: set HGPSO_LLM_BASE_URL and HGPSO_LLM_MODEL, e.g. "
            'eval "$(bash scripts/llm_server.sh start)"'
        )
        if os.environ.get("HGPSO_REQUIRE_LLM") == "1":
            pytest.fail("HGPSO_REQUIRE_LLM=1 but " + msg)
        pytest.skip(msg)
    return {"base_url": base_url, "model": model}


@pytest.fixture
def fake_llm():
    srv = FakeLLM()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server started for this test run on 127.0.0.1, stopped at its end.

    Skipped only where the server binaries (``initdb``, ``pg_ctl``) are absent; a missing
    ``psycopg2`` driver (the ``test`` extra) is a failure, not a skip.
    """
    from tests.tune.postgres import PostgresServer, find_binaries

    bindir = find_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("psycopg2 is missing: install the test extra (pip install -e '.[test]')")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()  # also when a test (or the start itself) failed

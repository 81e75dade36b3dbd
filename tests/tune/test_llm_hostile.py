"""A hostile OpenAI-compatible server (fake, on loopback): nothing it sends escapes ``ask()``.

Each case of issues 13 ("LLM client and strategies") and 24 ("hardening, round 2") has a
test here: deeply nested and huge answers, numbers too large for a float, a server trickling
one byte at a time, one deadline for a whole call (retries, back-off and Retry-After waits
included), Retry-After, truthful attempt counts, secrets echoed back (also URL-encoded,
JSON-escaped, base64), an unrelated 400, and replies that never end (the request's thread
and socket end with the call; the byte cap counts socket bytes).
"""

import gzip
import json
import os
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hgpso.tune import LLMPSO, Float, LLMClient, LLMError, SearchSpace, make_strategy
from hgpso.tune import llm as llm_mod
from hgpso.tune.llm import (
    MAX_DECODE_ATTEMPTS,
    MAX_REPLY_CHARS,
    extract_json,
    parse_points,
    scrub_secrets,
)
from tests.tune.fake_server import chat_body

SPACE = SearchSpace({"x": Float(-1.0, 1.0), "y": Float(-1.0, 1.0)})
SECRET = "sk-hostile-SECRET-987"


def client(fake, **kw):
    kw.setdefault("max_retries", 1)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("backoff", 0.01)
    return LLMClient(base_url=fake.url, model="fake", api_key=SECRET, **kw)


def ask_with_fallback(st):
    """One ``ask()`` that must not raise; returns the points and the warnings' texts."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pts = st.ask()
    return pts, [str(w.message) for w in caught]


def llm_round(fake, content, **kw):
    """A strategy whose second ``ask()`` is an LLM round answered by ``content``."""
    st = LLMPSO(SPACE, population=4, seed=0, llm=client(fake, **kw), k=2)
    first = st.ask()
    st.tell(first, [float(i) for i in range(len(first))])
    fake.default = ("ok", content)
    pts, msgs = ask_with_fallback(st)
    assert len(pts) == 4  # the plain PSO move filled in
    return st, msgs


def test_deep_nesting_is_a_counted_fallback(fake_llm):
    with pytest.raises(ValueError):
        extract_json("[" * 100_000)
    st, msgs = llm_round(fake_llm, "[" * 100_000)
    assert st.llm_stats.fallbacks == 1 and any("LLM" in m for m in msgs)


def test_400_digit_integer_is_rejected_not_raised(fake_llm):
    big = "9" * 400
    answer = f'{{"points": [{{"x": {big}, "y": 0.1}}, {{"x": 0.2, "y": -{big}}}]}}'
    assert parse_points(answer, SPACE, 2) == []
    st, _ = llm_round(fake_llm, answer)
    assert st.llm_stats.fallbacks == 1 and st.llm_stats.rejected == 2


def test_decoding_is_bounded_per_answer(monkeypatch):
    """The work is at most MAX_DECODE_ATTEMPTS decodes per candidate, each from an offset."""
    calls = []
    real = json.JSONDecoder.raw_decode

    def counting(self, s, idx=0):
        calls.append((len(s), idx))
        return real(self, s, idx)

    monkeypatch.setattr(json.JSONDecoder, "raw_decode", counting)
    text = '{"a" ' * (MAX_REPLY_CHARS // 5 - 1)  # 52k openers, none decodes
    with pytest.raises(ValueError):
        extract_json(text)
    decodes = [c for c in calls if c[1] > 0 or c[0] == len(text.strip())]
    # json.loads of the whole text goes through raw_decode once, then the bounded scan
    assert len(decodes) <= MAX_DECODE_ATTEMPTS + 1
    # no tail copies: every decode gets the same (stripped) string
    assert {n for n, _ in calls} == {len(text.strip())}


def test_5mb_reply_is_rejected_within_a_bound(fake_llm):
    # The 5 s bound is a guard against the old quadratic scan (150 s+), not a speed claim.
    hostile = '{"a" ' * (5 * 1024 * 1024 // 5)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="cap"):
        extract_json(hostile)
    st, _ = llm_round(fake_llm, hostile, max_retries=0)
    assert time.perf_counter() - t0 < 5.0 * 3  # shared CPU: generous
    assert st.llm_stats.fallbacks == 1


# The deadline tests bound the wall time of a whole complete_json call by timeout + SLACK:
# SLACK covers thread start-up and loopback connects on a shared CPU, and is far below what
# the old per-attempt deadlines allowed (one timeout per attempt plus the waits between).
SLACK = 1.5
HI = [{"role": "user", "content": "hi"}]


def timed_failure(c):
    t0 = time.perf_counter()
    with pytest.raises(LLMError) as ei:
        c.complete_json(HI)
    return time.perf_counter() - t0, str(ei.value)


def test_trickling_server_hits_the_wall_clock_deadline(fake_llm):
    # a valid answer, one byte each 0.5 s: ~120 s to send; each read returns within 0.5 s
    fake_llm.script = [("trickle", ('{"points": []}', 0.5))]
    c = client(fake_llm, timeout=2.0, max_retries=0)
    elapsed, _ = timed_failure(c)
    assert elapsed < 2.0 + SLACK
    assert c.stats.failures == 1


def test_one_deadline_for_all_retries_of_a_trickling_server(fake_llm):
    # 1 byte/s on every request; three retries allowed. The first attempt uses the whole
    # 2 s, so no second request is sent (per-attempt deadlines took 4 x 2 s here).
    fake_llm.default = ("trickle", ('{"points": []}', 1.0))
    c = client(fake_llm, timeout=2.0, max_retries=3)
    elapsed, msg = timed_failure(c)
    assert elapsed < 2.0 + SLACK
    assert c.stats.calls == 1 and c.stats.failures == 1 and c.stats.retries == 0
    assert "after 1 attempt(s)" in msg and "deadline" in msg


def test_always_503_stops_retrying_at_the_deadline(fake_llm):
    # back-off for 5xx is 0.1 * backoff * 2**attempt: 0.1, 0.2, 0.4, 0.8, then 1.0 (capped),
    # so about 1.5 s of waits fit in the 2 s deadline and the 1.0 s wait that would pass it
    # is never started, although 20 retries were allowed.
    fake_llm.default = ("status", 503)
    c = client(fake_llm, timeout=2.0, max_retries=20, backoff=1.0)
    elapsed, msg = timed_failure(c)
    assert elapsed < 2.0 + SLACK
    assert 2 <= c.stats.calls <= 5 and c.stats.failures == c.stats.calls
    assert c.stats.retries == c.stats.calls - 1
    assert f"after {c.stats.calls} attempt(s)" in msg
    assert "back-off" in msg and "deadline" in msg and "503" in msg


def test_always_429_honours_retry_after_within_the_deadline(fake_llm):
    # Retry-After: 1 on every answer, 2.5 s deadline: waits of 1 s until the next one would
    # pass the deadline (2 or 3 requests on a loaded CPU), never 11 requests and 10 s.
    fake_llm.default = ("retry_after", (429, 1))
    c = client(fake_llm, timeout=2.5, max_retries=10)
    elapsed, msg = timed_failure(c)
    assert 1.0 <= elapsed < 2.5 + SLACK
    assert 2 <= c.stats.calls <= 3 and c.stats.failures == c.stats.calls
    assert "Retry-After" in msg and "429" in msg


def test_retry_after_is_honoured_and_bounded(fake_llm):
    fake_llm.script = [("retry_after", (429, 1)), ("ok", '{"points": []}')]
    c = client(fake_llm, max_retries=1)
    t0 = time.perf_counter()
    assert c.complete_json(HI) == {"points": []}
    assert time.perf_counter() - t0 >= 1.0
    assert c.stats.calls == 2 and c.stats.retries == 1
    # a Retry-After past the deadline is not slept through: the call ends at once (one
    # request, no hour-long or deadline-long sleep), as a counted failure
    fake_llm.script = [("retry_after", (429, 3600)), ("ok", '{"points": []}')]
    c = client(fake_llm, max_retries=1, timeout=3.0)
    elapsed, msg = timed_failure(c)
    assert elapsed < 3.0
    assert c.stats.calls == 1 and "3600 s would pass the 3 s deadline" in msg


def test_no_wait_after_the_last_allowed_attempt(fake_llm):
    # a 429 on the last allowed attempt raises at once instead of sleeping its Retry-After
    fake_llm.default = ("retry_after", (429, 2))
    c = client(fake_llm, timeout=10.0, max_retries=0)
    elapsed, msg = timed_failure(c)
    assert elapsed < 2.0 and c.stats.calls == 1 and "after 1 attempt(s)" in msg


def test_deadline_failure_is_a_counted_fallback_in_ask(fake_llm):
    st = LLMPSO(SPACE, population=4, seed=0, llm=client(fake_llm, timeout=1.0), k=2)
    first = st.ask()
    st.tell(first, [float(i) for i in range(len(first))])
    fake_llm.default = ("trickle", ('{"points": []}', 1.0))
    t0 = time.perf_counter()
    pts, msgs = ask_with_fallback(st)
    assert time.perf_counter() - t0 < 1.0 + SLACK
    assert len(pts) == 4 and st.llm_stats.fallbacks == 1
    assert any("deadline" in m for m in msgs)


def test_401_reports_the_attempts_really_made(fake_llm):
    fake_llm.script = [("error", (401, "invalid key"))]
    c = client(fake_llm, max_retries=2)
    with pytest.raises(LLMError, match=r"after 1 attempt\(s\)"):
        c.complete_json([{"role": "user", "content": "hi"}])
    assert c.stats.calls == 1


def test_echoed_secrets_never_reach_errors_or_warnings(fake_llm):
    echo = f"bad request; you sent Authorization: Bearer {SECRET} and api_key={SECRET}"
    fake_llm.default = ("error", (403, echo))
    c = client(fake_llm, max_retries=0)
    with pytest.raises(LLMError) as ei:
        c.complete_json([{"role": "user", "content": "hi"}])
    assert SECRET not in str(ei.value) and "***" in str(ei.value)
    st = LLMPSO(SPACE, population=4, seed=0, llm=client(fake_llm, max_retries=0), k=2)
    st.tell(st.ask(), [0.0, 1.0, 2.0, 3.0])
    _, msgs = ask_with_fallback(st)
    assert msgs and all(SECRET not in m for m in msgs)


def test_one_scrubber_cuts_after_scrubbing():
    # a key without a recognisable prefix, straddling the length cut: cutting first would
    # leave its head ("tok-ABCDEFG") in the message
    key = "tok-ABCDEFGHIJKLMNOP"
    text = "x" * 289 + " " + key + " and more" * 10
    out = scrub_secrets(text, [key], max_chars=300)
    assert out == "x" * 289 + " *** and mo..."
    # the patterns need no list of secrets
    assert scrub_secrets("Authorization: Bearer abc.def") == "Authorization: ***"
    assert scrub_secrets("use sk-abcdefgh1234 here") == "use sk-*** here"
    assert not hasattr(llm_mod, "_scrub")  # one scrubber for every message path


def test_unrelated_400_does_not_downgrade_the_format(fake_llm, monkeypatch):
    monkeypatch.setattr(llm_mod, "_ACCEPTED_FORMAT", {})
    fake_llm.script = [("error", (400, "This model's maximum context length is 8192 tokens"))]
    c = client(fake_llm, max_retries=0)
    with pytest.raises(LLMError):
        c.complete_json([{"role": "user", "content": "hi"}], {"type": "object"})
    assert c.describe()["response_format"] == "json_schema"
    fake_llm.script = [("ok", '{"points": []}')]
    c2 = client(fake_llm)
    c2.complete_json([{"role": "user", "content": "hi"}], {"type": "object"})
    assert fake_llm.requests[-1]["response_format"]["type"] == "json_schema"
    assert llm_mod._ACCEPTED_FORMAT.get((fake_llm.url, "fake")) in (None, "json_schema")


def test_trainer_fit_survives_hostile_answers_and_warnings_are_scrubbed(fake_llm):
    pytest.importorskip("lightning")
    import lightning.pytorch as pl

    from lightning_callbacks import LLMPSOCallback

    from .test_callback_llm import Reg

    big = "9" * 400
    fake_llm.script = [
        ("ok", "[" * 100_000),
        ("ok", f'{{"points": [{{"lr": {big}, "momentum": 0.1}}]}}'),
        ("error", (403, f"echo: Authorization: Bearer {SECRET}")),
    ]
    fake_llm.default = ("ok", "[" * 100_000)
    llm = client(fake_llm, max_retries=0)
    space = {"lr": Float(1e-3, 0.5, log=True), "momentum": Float(0.0, 0.9)}
    cb = LLMPSOCallback(space, strategy="llm_pso", population=3, probe_steps=1, llm=llm, k=1)
    t = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(Reg())
    assert cb.decisions == 4 and t.current_epoch == 4
    assert cb.strategy.llm_stats.fallbacks >= 3
    assert all(SECRET not in str(w.message) for w in caught)


# Issue 24: the key echoed back encoded. The key has characters that each encoding treats
# differently ("+" and "/" are quoted by quote(safe="") and quote_plus, "/" is kept by
# quote(), "~" is never quoted, "/" may be JSON-escaped as "\/").
ODD_KEY = "hgpsoSECRET-Zq9+/xYw~k3y!"


def encoded_forms(key):
    import base64
    import urllib.parse

    raw = key.encode()
    forms = {
        "literal": key,
        "quote": urllib.parse.quote(key),
        "quote safe=''": urllib.parse.quote(key, safe=""),
        "quote_plus": urllib.parse.quote_plus(key),
        "quote lower-case hex": urllib.parse.quote(key, safe="").replace("%2B", "%2b"),
        "json": json.dumps(key)[1:-1],
        "json ascii \\/": json.dumps(key).replace("/", "\\/")[1:-1],
        "json \\u": "".join(f"\\u{ord(c):04x}" for c in key),
    }
    for name, enc in (("b64", base64.b64encode), ("b64 urlsafe", base64.urlsafe_b64encode)):
        for prefix in (b"", b"u:", b"ab:"):  # alone, and inside Basic base64("user:key")
            text = enc(prefix + raw).decode()
            forms[f"{name} {prefix!r}"] = text
            forms[f"{name} {prefix!r} unpadded"] = text.rstrip("=")
    return forms


@pytest.mark.parametrize("form", sorted(encoded_forms(ODD_KEY)))
def test_scrub_secrets_replaces_each_encoded_form(form):
    encoded = encoded_forms(ODD_KEY)[form]
    out = scrub_secrets(f"invalid api key {encoded} (check it)", [ODD_KEY])
    assert encoded not in out and "***" in out
    assert out.startswith("invalid api key ") and out.endswith(" (check it)")


def test_scrub_secrets_non_ascii_and_escaped_characters():
    import urllib.parse

    key = 'pass word é😀"\\%'
    for encoded in (
        urllib.parse.quote_plus(key),
        urllib.parse.quote(key),
        json.dumps(key)[1:-1],
        json.dumps(key, ensure_ascii=False)[1:-1],
    ):
        assert scrub_secrets(f"[{encoded}]", [key]) == "[***]", encoded


def test_url_encoded_key_echoed_by_the_server_never_surfaces(fake_llm):
    forms = encoded_forms(ODD_KEY)
    echo = "invalid api key " + " / ".join(forms.values())
    fake_llm.default = ("error", (401, echo))
    c = LLMClient(base_url=fake_llm.url, model="fake", api_key=ODD_KEY, max_retries=0)
    with pytest.raises(LLMError) as ei:
        c.complete_json(HI)
    # the message is cut at 300 characters: every form before the cut must be gone
    assert "invalid api key ***" in str(ei.value)
    assert not any(f in str(ei.value) for f in forms.values())
    st = LLMPSO(SPACE, population=4, seed=0, llm=c, k=2)
    st.tell(st.ask(), [0.0, 1.0, 2.0, 3.0])
    _, msgs = ask_with_fallback(st)
    assert msgs and not any(f in m for m in msgs for f in forms.values())
    # the public method scrubs the client's own key, and the generic patterns, in any text
    # (base64 keeps the characters shared with its surroundings: "YWI6***Q==")
    scrubbed = c.scrub(echo)
    assert scrubbed.count("***") == len(forms)
    assert not any(f in scrubbed for f in forms.values())
    assert c.scrub("Bearer abc.def") == "Bearer ***"


# Issue 24: a reply that never ends. The deadline must end the request itself (its thread
# and socket), and the size cap must count the bytes read off the socket.
class EndlessServer:
    """A loopback server whose reply never ends: ``endless`` sends 200 then a chunked body
    of 64 KiB chunks forever, ``trickle_body`` one body byte a second, ``trickle_headers``
    one header byte a second; ``gzip`` sends ``body`` gzip-compressed (and does end).
    ``open_handlers`` counts connections it still writes to."""

    def __init__(self, mode, body=b""):
        self.stop = threading.Event()
        self.headers = []
        self.open_handlers = 0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def chunk(self, data):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                srv.headers.append({k.lower(): v for k, v in self.headers.items()})
                srv.open_handlers += 1
                try:
                    if mode == "gzip":
                        payload = gzip.compress(body)
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Encoding", "gzip")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    if mode == "trickle_headers":
                        head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 100_000
                        for i in range(len(head)):
                            if srv.stop.is_set():
                                return
                            self.wfile.write(head[i : i + 1])
                            self.wfile.flush()
                            srv.stop.wait(1.0)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.chunk(b'{"choices":[{"message":{"content":"')
                    while not srv.stop.is_set():
                        if mode == "endless":
                            self.chunk(b"a" * 65536)
                        else:
                            self.chunk(b"a")
                            srv.stop.wait(1.0)
                except OSError:  # the client closed the connection: what we want
                    pass
                finally:
                    srv.open_handlers -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def rss_bytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")  # pragma: no cover


def request_threads():
    return [t for t in threading.enumerate() if t.name == "hgpso-llm-request" and t.is_alive()]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("endless", "byte cap"),
        ("trickle_body", "deadline"),
        ("trickle_headers", "deadline"),
    ],
)
def test_a_reply_that_never_ends_ends_with_its_request(mode, reason):
    srv = EndlessServer(mode)
    try:
        c = LLMClient(base_url=srv.url, model="fake", api_key=SECRET, timeout=1.0, max_retries=0)
        st = make_strategy("llm_pso", SPACE, population=4, seed=0, llm=c, k=2)
        before = rss_bytes()
        for _ in range(3):  # the first ask is the plain swarm, then two LLM rounds
            t0 = time.perf_counter()
            pts, msgs = ask_with_fallback(st)
            assert time.perf_counter() - t0 < 1.0 + SLACK
            st.tell(pts, [float(i) for i in range(len(pts))])
        assert st.llm_stats.fallbacks == 2 and st.llm_stats.calls == 2
        assert msgs and reason in msgs[-1], msgs
        time.sleep(1.0)
        assert request_threads() == []
        # the server sees each connection closed at its next write or two (1 s apart)
        give_up = time.monotonic() + 3.0
        while srv.open_handlers and time.monotonic() < give_up:
            time.sleep(0.1)
        assert srv.open_handlers == 0
        assert rss_bytes() - before < 50 * 2**20
    finally:
        srv.close()


def test_the_byte_cap_counts_socket_bytes_not_decoded_text(fake_llm, monkeypatch):
    # a small cap and a reply just above it: the body read stops at the cap, whatever the
    # decoded answer would have been
    monkeypatch.setattr(llm_mod, "MAX_REPLY_BYTES", 1000)
    fake_llm.default = ("ok", '{"points": []}' + " " * 2000)
    c = client(fake_llm, max_retries=0)
    with pytest.raises(LLMError, match="byte cap"):
        c.complete_json(HI)
    fake_llm.default = ("ok", '{"points": []}' + " " * 500)
    assert client(fake_llm, max_retries=0).complete_json(HI) == {"points": []}


def test_a_compressed_reply_is_refused_before_it_is_inflated():
    # 1 MB of answer in ~1 KB of gzip: counted compressed, it would pass any byte cap
    answer = json.dumps(chat_body('{"points": []}' + " " * 10**6)).encode()
    srv = EndlessServer("gzip", answer)
    try:
        c = LLMClient(base_url=srv.url, model="fake", api_key=SECRET, max_retries=0)
        with pytest.raises(LLMError, match="compressed"):
            c.complete_json(HI)
        assert srv.headers[-1]["accept-encoding"] == "identity"
    finally:
        srv.close()

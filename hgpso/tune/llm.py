"""A small, defensive client for OpenAI-compatible chat servers, and answer parsing.

The LLM is a *source of candidate points*, never of code: its answer is parsed as JSON,
each proposed point is type-checked and clipped by :meth:`SearchSpace.coerce`, and points
already tried (or repeated inside the answer) are dropped. Nothing returned by the model is
ever ``eval``-ed or executed.

Configuration (argument first, then environment):

=============  =====================================  ==============================
setting        environment variables, in order        default
=============  =====================================  ==============================
base_url       ``HGPSO_LLM_BASE_URL``, ``OPENAI_BASE_URL``   OpenAI's public endpoint
model          ``HGPSO_LLM_MODEL``, ``OPENAI_MODEL``         required
api_key        ``HGPSO_LLM_API_KEY``, ``OPENAI_API_KEY``     ``"sk-no-key"`` (local servers)
temperature    ``HGPSO_LLM_TEMPERATURE``                     0.7
=============  =====================================  ==============================

The key is kept in the underlying ``openai`` client only: it is not part of ``repr``,
:meth:`LLMClient.describe` or any stats, and so never reaches logs or result files.

Failure handling: ``timeout`` is one wall-clock deadline for the whole
:meth:`LLMClient.complete_json` call, every attempt and every wait between attempts
included. Within it a request is retried up to ``max_retries`` times on timeouts, connection
errors, HTTP 5xx, rate limits (429, honouring ``Retry-After``) and on answers that are empty,
longer than :data:`MAX_REPLY_CHARS` or not parseable JSON; a wait that would end past the
deadline is not started. A request still running at the deadline is ended (its socket shut
down), and no response body is read past :data:`MAX_REPLY_BYTES` bytes off the socket.
After that :meth:`LLMClient.complete_json` raises :class:`LLMError` (its message scrubbed
of keys and tokens by :func:`scrub_secrets`), which strategies catch to
fall back to their plain move. See docs/guides/llm.md.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .space import Float, SearchSpace

__all__ = [
    "UNITS",
    "LLMClient",
    "LLMError",
    "LLMStats",
    "extract_json",
    "parse_points",
    "points_schema",
    "scrub_secrets",
]


class LLMError(RuntimeError):
    """The LLM gave no usable answer after the allowed retries."""


@dataclass
class LLMStats:
    """Counters kept separately from objective evaluations."""

    calls: int = 0  # HTTP requests sent (including retries and format negotiation)
    negotiations: int = 0  # requests the server rejected for their response_format shape
    failures: int = 0  # requests that errored or returned unusable text
    retries: int = 0  # extra attempts after a failure
    fallbacks: int = 0  # strategy iterations that fell back (fully or partly) to plain moves
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # wall time spent waiting for the server
    proposed: int = 0  # points parsed from answers
    accepted: int = 0  # points that survived validation and de-duplication
    rejected: int = 0  # points dropped (wrong type, missing key, duplicate)
    duplicates: int = 0  # of the rejected: valid points already tried once snapped to the grid

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(d["seconds"], 3)
        d["tokens"] = self.prompt_tokens + self.completion_tokens
        return d


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)

#: Replies longer than this many characters are rejected unparsed (a counted fallback): a
#: points answer is a few hundred bytes, and a hostile megabyte reply must not cost seconds.
MAX_REPLY_CHARS = 262_144
#: Bytes of one response body read from the socket (any status), counted before decoding:
#: room for a ``MAX_REPLY_CHARS`` answer JSON-escaped in its envelope; reading stops and the
#: connection is closed beyond it, so an endless body costs at most this much memory.
MAX_REPLY_BYTES = 8 * MAX_REPLY_CHARS
#: At most this many ``{``/``[`` start positions are tried per candidate text; each try is
#: one linear-time decode from an offset (no copy of the tail), so the work is bounded by
#: ``MAX_DECODE_ATTEMPTS * len(text)``.
MAX_DECODE_ATTEMPTS = 32

_SECRET_PATTERNS = (
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+(\s+[^'\",}\s]+)?"),
    re.compile(r"(?i)\bbearer\s+[^\s'\",}]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),
)


def _char_forms(c: str) -> str:
    """A regex for one character of a secret in any of the encodings a server may echo.

    Literal; percent-encoded UTF-8 bytes in either hex case (``quote``, ``quote`` with
    ``safe=""``, ``quote_plus``: which characters get encoded differs, so each one may or
    may not be); ``+`` for a space (``quote_plus``); JSON's ``\\uXXXX`` (either case,
    surrogate pairs above the BMP) and its backslash escapes (``\\"``, ``\\\\``, ``\\/``).
    """
    forms = [re.escape(c)]
    forms.append("".join(f"%(?i:{b:02x})" for b in c.encode("utf-8")))
    if c == " ":
        forms.append(r"\+")
    units = c.encode("utf-16-be")
    forms.append(
        "".join(
            rf"\\u(?i:{int.from_bytes(units[i : i + 2], 'big'):04x})"
            for i in range(0, len(units), 2)
        )
    )
    if c in "\"'\\/":
        forms.append(re.escape("\\" + c))
    # longest first: the escaped form of ``\\`` must not stop at its first backslash
    return "(?:" + "|".join(forms[::-1]) + ")"


_B64_ALPHABETS = (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
)


def _base64_cores(secret: bytes) -> set[str]:
    """The base64 characters that depend on ``secret`` alone, at each of the 3 alignments.

    A secret encoded on its own or inside a longer value (``Basic base64(user:key)``) starts
    at a byte offset ``r`` mod 3 of its group; the characters whose 6 bits all come from the
    secret are the same whatever surrounds it, with or without ``=`` padding, so replacing
    them hides it in every such form (standard and URL-safe alphabets).
    """
    cores = set()
    bits = "".join(f"{b:08b}" for b in secret)
    for r in range(3):
        lead = (-(2 * r)) % 6  # bits to skip so that the first char starts on a 6-bit slot
        body = bits[lead:]
        body = body[: len(body) - len(body) % 6]
        for alphabet in _B64_ALPHABETS:
            core = "".join(alphabet[int(body[i : i + 6], 2)] for i in range(0, len(body), 6))
            if len(core) >= 4:
                cores.add(core)
    return cores


@functools.lru_cache(maxsize=16)  # a client scrubs every warning with the same key
def _secret_pattern(secret: str) -> re.Pattern[str]:
    forms = ["".join(_char_forms(c) for c in secret)]
    forms += sorted((re.escape(c) for c in _base64_cores(secret.encode("utf-8"))), key=len)[::-1]
    return re.compile("|".join(forms))


def scrub_secrets(text: str, secrets: Iterable[str] = (), max_chars: int | None = None) -> str:
    """``text`` with API keys, ``Bearer`` tokens and ``Authorization`` values replaced.

    The one scrubber of the project: every message built from a server's reply (the
    :class:`LLMError` text, and the warnings ``LLMPSOCallback`` re-emits) goes through it,
    since a hostile or misconfigured server may echo the request headers back in its error
    body. Each string in ``secrets`` (at least 4 characters long) is replaced wherever it
    occurs: literally, URL-encoded (``quote``, ``quote_plus``, any safe set, either hex
    case), JSON-escaped, or base64-encoded (standard or URL-safe alphabet, padded or not,
    alone or inside a longer encoded value); ``Bearer <token>``, ``Authorization: <value>``
    and ``sk-...`` keys are replaced whatever their value. With ``max_chars``, the scrubbed
    text is cut to that many characters (plus ``"..."``); the cut comes after the
    scrubbing, so it cannot leave the head of a secret behind.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = _secret_pattern(secret).sub("***", text)
    text = _SECRET_PATTERNS[0].sub(lambda m: m.group(1) + "***", text)
    text = _SECRET_PATTERNS[1].sub("Bearer ***", text)
    text = _SECRET_PATTERNS[2].sub("sk-***", text)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + "..."
    return text


def _decode_at(decoder: json.JSONDecoder, text: str, i: int) -> Any:
    try:
        return decoder.raw_decode(text, i)[0]
    except (json.JSONDecodeError, RecursionError, OverflowError, ValueError):
        return _NOTHING


_NOTHING = object()
_OPENERS = re.compile(r"[\[{]")


def extract_json(text: str, max_attempts: int = MAX_DECODE_ATTEMPTS) -> Any:
    """Parse the first JSON value in ``text`` (tolerates code fences and chatter around it).

    Raises :class:`ValueError` when no JSON object/array can be decoded, when ``text`` is
    longer than ``MAX_REPLY_CHARS`` (256 KiB), or when the value nests too deeply to decode. The
    work is linear in ``len(text)``: at most ``max_attempts`` decodes per candidate, each
    starting at an offset of the same string.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty answer")
    if len(text) > MAX_REPLY_CHARS:
        raise ValueError(f"answer of {len(text)} characters exceeds the {MAX_REPLY_CHARS} cap")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for cand in candidates:
        cand = cand.strip()
        try:
            return json.loads(cand)
        except (ValueError, RecursionError, OverflowError):
            pass
        for attempt, m in enumerate(_OPENERS.finditer(cand)):
            if attempt >= max_attempts:
                break
            value = _decode_at(decoder, cand, m.start())
            if value is not _NOTHING:
                return value
    raise ValueError("no JSON value found in answer")


#: the units of a prompt's points and of the answer: the space's own values, unit coordinates
UNITS = ("space", "unit")


def _check_units(units: str) -> None:
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")


def points_schema(space: SearchSpace, k: int, units: str = "space") -> dict[str, Any]:
    """JSON schema of the answer: ``{"points": [{name: value, ...}, ...]}`` with exactly k.

    ``units="unit"``: every value is a number (a unit coordinate, see :func:`parse_points`).
    """
    _check_units(units)
    props: dict[str, Any] = {}
    for name, p in space.items():
        if units == "unit" or p.kind == "float":
            props[name] = {"type": "number"}
        elif p.kind == "int":
            props[name] = {"type": "integer"}
        else:
            choices = list(p.choices)
            props[name] = {"enum": choices}
    point = {
        "type": "object",
        "properties": props,
        "required": list(space.names),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"points": {"type": "array", "items": point, "minItems": k, "maxItems": k}},
        "required": ["points"],
        "additionalProperties": False,
    }


def parse_points(
    answer: Any,
    space: SearchSpace,
    k: int,
    seen: Iterable[tuple] = (),
    stats: LLMStats | None = None,
    units: str = "space",
) -> list[dict[str, Any]]:
    """Turn a decoded answer into at most ``k`` valid, new points.

    Accepted shapes: ``{"points": [...]}``, a bare list, or a single point object. A point is
    an object ``{name: value}`` or a list of values in ``space.names`` order. Values are
    type-checked, clipped and snapped by :meth:`SearchSpace.coerce` (integers rounded,
    categorical spellings mapped to the choice); with ``units="unit"`` they are unit
    coordinates, clipped to ``[0, 1]`` and decoded by ``SearchSpace.decode``. Only the
    snapped point is compared: invalid points and points whose :meth:`SearchSpace.key` is in
    ``seen`` (or earlier in the answer) are dropped (``stats.rejected``; the repeated ones
    also ``stats.duplicates``). Other keys of a point object (a predicted ``"score"``) are
    ignored; nothing is evaluated.
    """
    _check_units(units)
    if isinstance(answer, str):
        answer = extract_json(answer)
    if isinstance(answer, Mapping):
        if "points" in answer:
            items = answer["points"]
        elif all(n in answer for n in space.names):
            items = [answer]
        else:
            items = next((v for v in answer.values() if isinstance(v, list)), [])
    else:
        items = answer
    if not isinstance(items, list):
        raise ValueError("answer holds no list of points")
    seen_keys = set(seen)
    out: list[dict[str, Any]] = []
    for item in items:
        if stats is not None:
            stats.proposed += 1
        try:
            if isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
                if len(item) != space.dim:
                    raise ValueError("wrong length")
                item = dict(zip(space.names, item, strict=True))
            if units == "unit":
                point = space.decode(list(_unit_space(space).coerce(item).values()))
            else:
                point = space.coerce(item)
        except (TypeError, ValueError, KeyError, OverflowError, RecursionError):
            if stats is not None:
                stats.rejected += 1
            continue
        key = space.key(point)
        if key in seen_keys:
            if stats is not None:
                stats.rejected += 1
                stats.duplicates += 1
            continue
        seen_keys.add(key)
        out.append(point)
        if stats is not None:
            stats.accepted += 1
        if len(out) >= k:
            break
    return out


def _unit_space(space: SearchSpace) -> SearchSpace:
    """The unit cube with ``space``'s names: what a ``units="unit"`` answer is checked by."""
    return SearchSpace({n: Float(0.0, 1.0) for n in space.names})


# response_format that each (base URL, model) accepted in this process, so that new clients
# do not renegotiate it with a rejected request each time. Only an error that names the
# response format (see _FORMAT_REJECTED) writes here; any other 400 leaves it alone.
_ACCEPTED_FORMAT: dict[tuple[str, str], str] = {}
_FORMAT_REJECTED = re.compile(r"response_format|json_schema|json_object|schema|grammar", re.I)
_MAX_MESSAGE = 300
# what a malformed answer may raise while being decoded: all become counted failures
_DECODE_ERRORS = (ValueError, RecursionError, OverflowError)


def _retry_after(err: Exception) -> float | None:
    """Seconds from a ``Retry-After`` header (numeric form), or ``None``."""
    resp = getattr(err, "response", None)
    value = getattr(resp, "headers", {}).get("retry-after") if resp is not None else None
    try:
        out = float(value) if value is not None else None
    except ValueError:
        return None
    return out if out is not None and math.isfinite(out) and out >= 0 else None


class _ReplyAborted(Exception):
    """The request guard stopped reading a response; the message says why."""


class _RequestGuard:
    """The limits of one request, shared by the thread that sends it and the caller.

    The caller cannot stop a thread blocked in a socket read, but it can shut the socket
    down: :meth:`cancel` does that for every socket the request opened, so the read returns
    at once and the thread ends instead of downloading on after the deadline.
    """

    def __init__(self, deadline: float, max_bytes: int) -> None:
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.cancelled = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def attach(self, sock: Any) -> None:
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sockets.append(sock)
            cancelled = self.cancelled
        if cancelled:
            _shutdown(sock)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def check(self, nbytes: int) -> None:
        """Called after each chunk read: raise once the reply must not be read further."""
        if self.cancelled:
            raise _ReplyAborted("the request was cancelled at the deadline")
        if nbytes > self.max_bytes:
            raise _ReplyAborted(f"reply body past the byte cap ({self.max_bytes} bytes)")
        if time.monotonic() > self.deadline:
            raise _ReplyAborted("reply still arriving at the deadline")


def _shutdown(sock: socket.socket) -> None:
    try:
        # the plain socket's shutdown, also for TLS: it wakes a read blocked in another
        # thread without touching the SSL object that thread is using
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed by the request's own thread
        pass


_GUARD = threading.local()  # the guard of the request this thread is sending, if any


def _current_guard() -> _RequestGuard:
    guard = getattr(_GUARD, "current", None)
    # a request sent outside _create (someone using .client directly) still gets the cap
    return guard if guard is not None else _RequestGuard(math.inf, MAX_REPLY_BYTES)


def _socket_of(stream: Any) -> Any:
    get = getattr(stream, "get_extra_info", None)
    return get("socket") if get is not None else None


def _http_module() -> Any:
    """``httpx`` or its successor ``httpx2``: whichever this ``openai`` builds on."""
    import openai

    for base in type.mro(openai.DefaultHttpxClient):
        root = base.__module__.split(".")[0]
        if root in ("httpx", "httpx2"):
            return importlib.import_module(root)
    return importlib.import_module("httpx")  # pragma: no cover - openai < 1.17


@functools.lru_cache(maxsize=2)
def _guarded_stream_class(http: Any) -> type:
    class GuardedStream(http.SyncByteStream):
        """A response body that counts the bytes read off the socket and checks the guard."""

        def __init__(self, inner: Any, guard: _RequestGuard) -> None:
            self._inner = inner
            self._guard = guard

        def __iter__(self) -> Any:
            n = 0
            for chunk in self._inner:
                n += len(chunk)
                self._guard.check(n)
                yield chunk

        def close(self) -> None:
            self._inner.close()

    return GuardedStream


def _guarded_http_client(timeout: float) -> Any:
    """An HTTP client whose every request obeys the :class:`_RequestGuard` of its thread.

    Its hooks record each socket the request opens (through httpcore's ``trace``
    extension, as it connects, so a server trickling its headers can be cut off too) and
    wrap the body so that reading stops at :data:`MAX_REPLY_BYTES` or at the deadline.
    Connections are not kept alive: each request opens its own socket, which the guard
    knows from the start (a reused one would only be known once the headers arrived).
    """
    http = _http_module()
    stream_class = _guarded_stream_class(http)

    def on_request(request: Any) -> None:
        guard = _current_guard()
        # compressed bodies would be inflated after the byte count: a small gzip bomb
        # could still fill the memory
        request.headers["Accept-Encoding"] = "identity"

        def trace(event: str, info: dict[str, Any]) -> None:
            if event.endswith((".connect_tcp.complete", ".start_tls.complete")):
                guard.attach(_socket_of(info.get("return_value")))

        request.extensions["trace"] = trace

    def on_response(response: Any) -> None:
        guard = _current_guard()
        guard.attach(_socket_of(response.extensions.get("network_stream")))
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise _ReplyAborted(f"reply compressed ({encoding}) although identity was asked")
        response.stream = stream_class(response.stream, guard)

    return http.Client(
        timeout=timeout,
        follow_redirects=True,  # as openai's own default client
        limits=http.Limits(max_keepalive_connections=0),
        event_hooks={"request": [on_request], "response": [on_response]},
    )


def _describe(err: BaseException) -> str:
    """``Type: message`` of an error, or the guard's reason when it caused the error."""
    seen: BaseException | None = err
    for _ in range(4):  # openai may wrap it (APIConnectionError from ...)
        if seen is None:
            break
        if isinstance(seen, _ReplyAborted):
            return f"reply aborted: {seen}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(err).__name__}: {err}"


def _env(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v:
            return v
    return None


class LLMClient:
    """Chat-completions client that returns parsed JSON, with bounded retries.

    Args:
        base_url, model, api_key, temperature: see the module docstring for env fallbacks.
        max_tokens: cap on generated tokens per request (keeps CPU servers fast).
        timeout: wall-clock deadline in seconds for a whole :meth:`complete_json` call:
            every attempt, from sending it to the whole answer read (a server trickling
            bytes cannot stretch it), and every back-off or ``Retry-After`` wait between
            attempts. Each attempt gets the time that is left; a request still running at
            the deadline is ended (its thread stops reading, its socket is shut down) and
            counted as a failure. With ``client=``, it is only abandoned (see ``_create``).
        max_retries: extra attempts after a failed request (0 = one attempt only).
        response_format: ``"auto"`` (try a JSON schema, then a JSON object, then plain
            text, remembering what the server accepted), ``"json_schema"``,
            ``"json_object"`` or ``"none"``.
        seed: forwarded to the server (llama.cpp and OpenAI honour it) for repeatability.
            The ``n``-th :meth:`complete_json` call of a client (from 0) sends
            ``seed + 1000 * n + attempt``: a run is repeatable call for call, and a prompt
            that comes back unchanged (a search that stalls) still gets a fresh sample
            instead of the same answer, which would be rejected as already tried.
        backoff: base of the wait before a retry, in seconds: ``backoff * 2**attempt`` after
            a 429 without ``Retry-After``, a tenth of that (at most 1 s) after a 5xx. A wait
            that would end past the deadline is not started.
        client: an existing ``openai.OpenAI`` instance, or any object with the same
            ``chat.completions.create`` method (tests, offline examples).
    """

    _FORMATS = ("json_schema", "json_object", "none")

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int = 256,
        timeout: float = 60.0,
        max_retries: int = 2,
        response_format: str = "auto",
        seed: int | None = None,
        backoff: float = 1.0,
        client: Any = None,
    ) -> None:
        self.base_url = base_url or _env("HGPSO_LLM_BASE_URL", "OPENAI_BASE_URL")
        self.model = model or _env("HGPSO_LLM_MODEL", "OPENAI_MODEL")
        if not self.model:
            raise ValueError("no LLM model given: pass model= or set HGPSO_LLM_MODEL")
        if temperature is None:
            temperature = float(_env("HGPSO_LLM_TEMPERATURE") or 0.7)
        if not 0.0 <= temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}")
        if max_tokens < 1 or timeout <= 0 or max_retries < 0:
            raise ValueError("max_tokens >= 1, timeout > 0 and max_retries >= 0 are required")
        if response_format not in ("auto", *self._FORMATS):
            raise ValueError(f"unknown response_format {response_format!r}")
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.seed = seed
        self.backoff = float(backoff)
        if response_format == "auto":
            known = _ACCEPTED_FORMAT.get((self.base_url or "", self.model))
            start = self._FORMATS.index(known) if known else 0
            self._formats = list(self._FORMATS[start:])
        else:
            self._formats = [response_format]
        self.stats = LLMStats()
        self._calls_made = 0  # complete_json calls so far: picks each call's seed
        self._client = client
        self._api_key = api_key or _env("HGPSO_LLM_API_KEY", "OPENAI_API_KEY") or "sk-no-key"

    def __repr__(self) -> str:
        return f"LLMClient({self.describe()!r})"

    def describe(self) -> dict[str, Any]:
        """Settings safe to log or store (never the key)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "response_format": self._formats[0],
        }

    def scrub(self, text: str) -> str:
        """``text`` with this client's API key (in every form ``scrub_secrets`` knows)
        and any ``Bearer``/``Authorization``/``sk-`` token replaced by ``***``.

        For code that re-emits text derived from a server's reply (warnings, logs, results)
        without reading the key itself.
        """
        return scrub_secrets(text, [self._api_key])

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import openai  # lazy: hgpso.tune works without the extra installed
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "LLM strategies need the openai package: pip install openai "
                    '(from a clone of hgpso: pip install -e ".[llm]")'
                ) from e
            self._client = openai.OpenAI(
                base_url=self.base_url,
                api_key=self._api_key,
                timeout=self.timeout,
                max_retries=0,
                http_client=_guarded_http_client(self.timeout),
            )
        return self._client

    def _create(self, kwargs: dict[str, Any], budget: float) -> Any:
        """``chat.completions.create`` under a hard wall-clock limit of ``budget`` seconds.

        httpx's timeout bounds each socket read, so a server sending one byte a second never
        trips it. The request runs on a daemon thread that we stop waiting for after
        ``budget`` seconds. With the client this class builds, the request's
        :class:`_RequestGuard` then shuts its socket down, so the thread stops reading and
        ends; the guard also ends the body read at :data:`MAX_REPLY_BYTES` or at the
        deadline. A ``client=`` passed in has no guard: its abandoned thread ends when its
        own timeouts fire or the server finishes, and its result is dropped.
        """

        box: dict[str, Any] = {}
        guard = _RequestGuard(time.monotonic() + budget, MAX_REPLY_BYTES)

        def work() -> None:
            _GUARD.current = guard
            try:
                box["resp"] = self.client.chat.completions.create(**kwargs, timeout=budget)
            except BaseException as e:  # handed to the caller's thread
                box["err"] = e
            finally:
                _GUARD.current = None

        t = threading.Thread(target=work, name="hgpso-llm-request", daemon=True)
        t.start()
        t.join(budget)
        if t.is_alive():
            guard.cancel()
            raise TimeoutError(f"no complete answer within the {self.timeout:g} s deadline")
        if "err" in box:
            raise box["err"]
        return box["resp"]

    def _downgrade(self) -> None:
        self._formats.pop(0)
        _ACCEPTED_FORMAT[(self.base_url or "", self.model or "")] = self._formats[0]
        self.stats.negotiations += 1

    def _response_format(self, schema: dict | None) -> dict | None:
        fmt = self._formats[0]
        if fmt == "none" or schema is None:
            return None
        if fmt == "json_object":
            # llama.cpp's server turns "schema" into a grammar; OpenAI ignores the extra key.
            return {"type": "json_object", "schema": schema}
        return {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        }

    def complete_json(self, messages: list[dict[str, str]], schema: dict | None = None) -> Any:
        """Send one chat request and return the decoded JSON answer.

        Retries (bounded by ``max_retries`` and by the one ``timeout`` deadline of the whole
        call) on transport errors, 5xx, 429 and unparseable answers; raises
        :class:`LLMError` when every attempt failed or the deadline left no time for another.
        """
        import openai

        deadline = time.monotonic() + self.timeout
        call_index = self._calls_made
        self._calls_made += 1
        last: Exception | None = None
        sent = 0  # requests sent in this call
        negotiations = 0  # response_format downgrades do not use up a retry
        gave_up = ""  # why the deadline ended the call early, for the error message

        def more() -> bool:
            return sent - negotiations <= self.max_retries

        def pause(seconds: float, why: str) -> bool:
            """Sleep before the next attempt, unless that attempt could not start in time."""
            nonlocal gave_up
            if not more():
                return False
            left = deadline - time.monotonic()
            if seconds >= left:
                gave_up = f"{why} of {seconds:g} s would pass the {self.timeout:g} s deadline"
                return False
            time.sleep(seconds)
            return True

        while more():
            budget = deadline - time.monotonic()
            if budget <= 0:
                gave_up = f"the {self.timeout:g} s deadline passed"
                break
            attempt = sent
            if attempt > negotiations:
                self.stats.retries += 1
            kwargs: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
            if self.seed is not None:
                kwargs["seed"] = int(self.seed) + 1000 * call_index + attempt
            rf = self._response_format(schema)
            if rf is not None:
                kwargs["response_format"] = rf
            self.stats.calls += 1
            sent += 1
            t0 = time.perf_counter()
            try:
                resp = self._create(kwargs, budget)
            except openai.RateLimitError as e:
                self.stats.seconds += time.perf_counter() - t0
                self.stats.failures += 1
                last = e
                wait = _retry_after(e)
                if wait is None:
                    wait = self.backoff * 2**attempt
                if not pause(wait, "a Retry-After wait"):
                    break
                continue
            except (openai.APITimeoutError, openai.APIConnectionError, TimeoutError) as e:
                self.stats.seconds += time.perf_counter() - t0
                self.stats.failures += 1
                last = e
                continue
            except openai.APIStatusError as e:
                self.stats.seconds += time.perf_counter() - t0
                self.stats.failures += 1
                last = e
                # Downgrade the response_format only when the server says that is what it
                # rejects (llama-cpp-python answers json_schema with a 500 naming the field);
                # an unrelated 400 (bad key, context too long) must not change the format.
                code = e.status_code or 0
                if (
                    rf is not None
                    and len(self._formats) > 1
                    and code in (400, 422, 500)
                    and _FORMAT_REJECTED.search(str(e))
                ):
                    self._downgrade()
                    negotiations += 1
                    continue
                if code < 500:
                    break
                if not pause(min(self.backoff * 2**attempt, 10.0) * 0.1, "a back-off"):
                    break
                continue
            except Exception as e:  # undecodable HTTP body and other client-side surprises
                self.stats.seconds += time.perf_counter() - t0
                self.stats.failures += 1
                last = e
                continue
            self.stats.seconds += time.perf_counter() - t0
            usage = getattr(resp, "usage", None)
            if usage is not None:
                self.stats.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.stats.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
            try:
                text = resp.choices[0].message.content
                return extract_json(text)
            except (AttributeError, IndexError, TypeError, *_DECODE_ERRORS) as e:
                self.stats.failures += 1
                last = e
                continue
        detail = _describe(last) if last is not None else "no answer"
        if gave_up:
            detail = f"{gave_up}; last error {detail}"
        detail = scrub_secrets(detail, [self._api_key], max_chars=_MAX_MESSAGE)
        raise LLMError(f"no usable LLM answer after {sent} attempt(s): {detail}")

"""A JSON-over-HTTP client for remote scoring backends: keep-alive sessions, bounded concurrency, retries.

A remote backend subclasses :class:`JsonHttpClient` and sends its requests through :meth:`~JsonHttpClient._request`
(one request) and :meth:`~JsonHttpClient._post_all` (many, at most ``max_in_flight`` at once). Idempotent requests
are retried on a connection error, a time-out, or HTTP 429/5xx with exponential backoff; every failure is raised
as :class:`~envs.lm.backends.BackendError` naming the server and the cause. A subclass that must change every
request (an auth header, say) overrides :meth:`~JsonHttpClient._session`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from envs.lm.backends import BackendError

RETRY_STATUS = (429, 500, 502, 503, 504)


class JsonHttpClient:
    """Keep-alive JSON requests to one server, from ``max_in_flight`` worker threads.

    Args:
        url: Base URL of the server, e.g. ``http://127.0.0.1:8000``.
        max_in_flight: Requests in flight at once, at most.
        timeout: Seconds to wait for one response.
        retries: Extra tries of an idempotent request.
        backoff: First retry delay in seconds (doubles every try).
    """

    server_kind = "server"
    """How errors name the server ("the vLLM server at URL ...")."""
    start_hint = "check the URL"
    """What an error about an unreachable server suggests."""

    def __init__(self, url: str, *, max_in_flight: int, timeout: float, retries: int, backoff: float) -> None:
        self.url = url.rstrip("/")
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix=f"{type(self).__name__}-client")

    def _session(self) -> requests.Session:
        """This thread's keep-alive session (created on first use)."""
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(s)
        return s

    def _request(self, method: str, path: str, payload: dict | None = None, *, idempotent: bool = True) -> Any:
        """One JSON request, retried when idempotent and the failure is transient.

        Raises:
            BackendError: When every try failed, or at once on a non-transient HTTP error.
        """
        tries = 1 + (self.retries if idempotent else 0)
        cause = ""
        for k in range(tries):
            try:
                r = self._session().request(method, self.url + path, json=payload, timeout=self.timeout)
            except requests.ConnectionError as err:
                cause = f"cannot connect ({_short(err)})"
            except requests.Timeout:
                cause = f"no answer within {self.timeout:g} s"
            else:
                if r.status_code == 200:
                    return r.json()
                cause = f"HTTP {r.status_code}: {_server_message(r)}"
                if r.status_code not in RETRY_STATUS:
                    raise BackendError(f"the {self.server_kind} at {self.url} refused {method} {path}: {cause}")
            if k + 1 < tries:
                time.sleep(self.backoff * 2**k)
        tried = f"after {tries} tries" if tries > 1 else "(not retried: not idempotent)"
        raise BackendError(
            f"the {self.server_kind} at {self.url} did not answer {method} {path} {tried}: {cause}; {self.start_hint}"
        )

    def _post_all(self, path: str, payloads: Sequence[dict], *, idempotent: bool = True) -> list[Any]:
        """POST every payload, at most ``max_in_flight`` at once; responses in payload order."""
        if len(payloads) == 1:
            return [self._request("POST", path, payloads[0], idempotent=idempotent)]
        futures = [self._pool.submit(self._request, "POST", path, p, idempotent=idempotent) for p in payloads]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the worker threads and close the keep-alive connections."""
        self._pool.shutdown(wait=True)
        with self._lock:
            for s in self._sessions:
                s.close()
            self._sessions.clear()


def request_chunks(lengths: Sequence[int], parts: int, max_tokens: int) -> list[list[int]]:
    """Indices in order, cut into at least ``min(n, parts)`` requests of similar token counts.

    A request holds at most ``max_tokens`` tokens unless one sequence alone is longer.
    """
    target = min(max_tokens, math.ceil(sum(lengths) / max(min(len(lengths), parts), 1)))
    out: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if out[-1] and used + n > target:
            out.append([])
            used = 0
        out[-1].append(i)
        used += n
    return out


def _short(err: Exception) -> str:
    """The innermost reason of a requests error (e.g. "Connection refused"), without the URL noise."""
    text = str(err)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker
    return type(err).__name__


def _server_message(r: requests.Response) -> str:
    """The error message of a vLLM/OpenAI-style error body, else the first 300 characters of the body."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    err = body.get("error", body) if isinstance(body, dict) else body
    return str(err.get("message", err) if isinstance(err, dict) else err)[:300]

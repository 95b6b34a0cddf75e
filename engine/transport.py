"""The HTTP transport that carries providers' requests: one requests.Session per thread."""

from __future__ import annotations

import threading

import requests

from providers.base import HttpRequest, HttpResponse, TransportError


class RequestsTransport:
    """Performs `HttpRequest`s with a per-thread `requests.Session`.

    `trust_env` is off: the default session re-reads proxy variables from the environment on
    every call, which costs more CPU than the call itself on loopback.
    """

    def __init__(self, pool_size: int = 32) -> None:
        self._local = threading.local()
        self._pool_size = pool_size

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=self._pool_size)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            response = self._session().request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=request.body or None,
                timeout=request.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise TransportError(f"{type(exc).__name__}: {_first_line(exc)}") from None
        return HttpResponse(response.status_code, dict(response.headers), response.content)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

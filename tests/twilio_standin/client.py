"""The real ``twilio`` REST client, pointed at another base URL (the stand-in, or any configured endpoint).

Hook: ``twilio.http.http_client.TwilioHttpClient.request(method, url, ...)``. ``twilio.rest.Client`` hands every
request - including the absolute ``next_page_url`` of list pages - as a fully qualified URL to its
``http_client`` (``Client(..., http_client=...)``, the library's supported injection point; ``HttpClient.request``
is the interface custom clients implement). :class:`RewritingHttpClient` overrides ``request`` only to swap the
origin, then defers to ``TwilioHttpClient.request`` unchanged, so the library's headers, auth, form encoding,
logging and error handling are exercised as in production.

Nothing is shared with ``token_service``: this class may be moved there as is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.request import Request as TwilioRequest
from twilio.http.response import Response
from twilio.rest import Client

CONVERSATIONS_ORIGIN = "https://conversations.twilio.com"

_REDACTED = "<redacted>"


def _split_base(url: str, what: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{what} must be an absolute http(s) URL without query or fragment, got {url!r}")
    return parts.scheme, parts.netloc.lower(), parts.path.rstrip("/")


class RewritingHttpClient(TwilioHttpClient):
    """A ``TwilioHttpClient`` that sends requests for some Twilio base URLs to other base URLs.

    ``base_urls`` maps a Twilio base URL (``https://conversations.twilio.com``, optionally with a path) to the
    replacement (``http://127.0.0.1:8080``, ``https://proxy.internal/twilio-conversations``); the rest of the
    URL (path below the base, query) is kept. A URL matching no key raises ``TwilioException`` unless
    ``passthrough=True`` - tests must never reach the real Twilio by accident.

    ``timeout`` (seconds) applies to connect and to each read. There are no automatic retries: ``requests``'
    default adapters do not retry, and the https adapter ``TwilioHttpClient`` mounts is only given retries when
    ``max_retries`` is passed, which this class never does. Credentials travel as the ``auth`` tuple, which the
    library never logs (its request log prints method, URL, query parameters and non-Authorization headers);
    the ``_test_only_last_request`` copy the library keeps is stripped of them after each request.

    ``last_response`` is the last ``twilio.http.response.Response`` received on the calling thread, e.g. to read
    ``Retry-After`` after a ``TwilioRestException`` with status 429 (the exception does not carry headers).
    """

    def __init__(
        self,
        base_urls: Mapping[str, str],
        timeout: float,
        *,
        passthrough: bool = False,
        trust_env: bool = True,
        logger: logging.Logger | None = None,
    ):
        if timeout is None or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        kwargs: dict[str, Any] = {"timeout": timeout, "pool_connections": True}
        if logger is not None:
            kwargs["logger"] = logger
        super().__init__(**kwargs)
        assert self.session is not None
        self.session.trust_env = trust_env  # False: ignore *_PROXY variables and .netrc
        rules = []
        for source, target in base_urls.items():
            rules.append((_split_base(source, "base_urls key"), _split_base(target, "base_urls value")))
        # longest source path first, so https://x/v1 wins over https://x
        rules.sort(key=lambda rule: len(rule[0][2]), reverse=True)
        self._rules = rules
        self.passthrough = passthrough
        self._local = threading.local()

    def rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        scheme, netloc, path = parts.scheme.lower(), parts.netloc.lower(), parts.path
        for (src_scheme, src_netloc, src_path), (dst_scheme, dst_netloc, dst_path) in self._rules:
            if (scheme, netloc) != (src_scheme, src_netloc):
                continue
            if path != src_path and not path.startswith(src_path + "/"):
                continue
            return urlunsplit((dst_scheme, dst_netloc, dst_path + path[len(src_path) :], parts.query, ""))
        if self.passthrough:
            return url
        raise TwilioException(f"refusing to send a request to {scheme}://{netloc}: no base URL configured for it")

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        self._local.last_response = None
        try:
            response = super().request(
                method,
                self.rewrite(url),
                params=params,
                data=data,
                headers=headers,
                auth=auth,
                timeout=timeout,
                allow_redirects=allow_redirects,
            )
        finally:
            last = self._test_only_last_request
            if isinstance(last, TwilioRequest) and last.auth:
                last.auth = (_REDACTED, _REDACTED)
        self._local.last_response = response
        return response

    @property
    def last_response(self) -> Response | None:
        return getattr(self._local, "last_response", None)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def __enter__(self) -> RewritingHttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        targets = ", ".join(f"{s[0]}://{s[1]}{s[2]} -> {d[0]}://{d[1]}{d[2]}" for s, d in self._rules)
        return f"<RewritingHttpClient {targets} timeout={self.timeout}>"


def twilio_client(
    base_url: str,
    account_sid: str,
    api_key_sid: str,
    api_key_secret: str,
    timeout: float = 5.0,
) -> Client:
    """A real ``twilio.rest.Client`` authenticating with an API key, whose Conversations traffic goes to
    ``base_url``. Close it with ``client.http_client.close()``."""
    http_client = RewritingHttpClient({CONVERSATIONS_ORIGIN: base_url}, timeout, trust_env=False)
    return Client(
        api_key_sid,
        api_key_secret,
        account_sid,
        http_client=http_client,
        # not os.environ: an ambient TWILIO_EDGE / TWILIO_REGION would rename the host before it is rewritten
        environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""},
    )

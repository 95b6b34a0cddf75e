"""The provider contract: message and result values, sans-I/O HTTP values, config schemas.

A provider never sleeps, retries or fails over; it turns one message into one `SendResult`.
HTTP providers build an `HttpRequest` and parse an `HttpResponse`; the caller's transport
performs the call, so signing and parsing are pure and testable with vendor worked examples.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from engine.jsondepth import nested_deeper_than


class Outcome(enum.Enum):
    OK = "ok"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


# What a call's outcome means whatever the vendor (failure rules match on it as `error_class`):
# ok; throttled (slow down, retry later); transient (retry); receiver (this receiver can never get it);
# content (template, signature or params wrong); account (this account cannot send now); window (not now:
# a send-time constraint); unknown (the vendor may have sent it).
ERROR_CLASSES = ("ok", "throttled", "transient", "receiver", "content", "account", "window", "unknown")
_OUTCOME_CLASS = {Outcome.OK: "ok", Outcome.RETRYABLE: "transient", Outcome.PERMANENT: "content"}
# What a class means for trying again: slow-down, passing faults and maybe-sent answers are not final; the rest are.
CLASS_OUTCOME = {"ok": Outcome.OK, "throttled": Outcome.RETRYABLE, "transient": Outcome.RETRYABLE,
                 "unknown": Outcome.RETRYABLE, "receiver": Outcome.PERMANENT, "content": Outcome.PERMANENT,
                 "account": Outcome.PERMANENT, "window": Outcome.PERMANENT}


@dataclass(frozen=True, slots=True)
class Message:
    """Everything a provider needs to deliver one attempt of one task."""

    task_id: str
    attempt: int
    receiver: str
    channel_type: str
    text: str
    subject: str = ""
    html: str | None = None
    template_code: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    sign_name: str = ""
    key_attempt: int = 0  # a resend of an attempt whose outcome is unknown carries that attempt's key

    @property
    def idempotency_key(self) -> str:
        """Stable id of this attempt, sent where the vendor accepts one."""
        return f"{self.task_id}-{self.key_attempt or self.attempt}"


@dataclass(frozen=True, slots=True)
class Account:
    """A provider account from the rule files, with `${ENV}` secrets already resolved."""

    name: str
    type: str
    config: Mapping[str, Any]
    callback: Mapping[str, Any] = field(default_factory=dict)  # token / allow_ips for unsigned reports


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one provider call.

    `final` is True when acceptance means delivered (email, chat); False when the vendor
    reports delivery later (SMS). Summaries are what gets stored: never secrets.
    """

    outcome: Outcome
    provider_message_id: str = ""
    error_code: str = ""
    error_message: str = ""
    final: bool = True
    request_summary: Mapping[str, Any] = field(default_factory=dict)
    response_summary: Mapping[str, Any] = field(default_factory=dict)
    error_class: str = ""  # one of ERROR_CLASSES; when left empty, the outcome's usual class

    def __post_init__(self) -> None:
        if not self.error_class:
            object.__setattr__(self, "error_class", _OUTCOME_CLASS[self.outcome])
        elif self.error_class not in ERROR_CLASSES:
            raise ValueError(f"unknown error class {self.error_class!r}")

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class TransportError(Exception):
    """The call did not complete: connection refused, reset, or timed out. `maybe_sent` when the request had
    left before it failed, so the vendor may have acted on it."""

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class Undeliverable(Exception):
    """A message this account can never deliver as given (bad receiver, missing setting): permanent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def result(self) -> SendResult:
        """Permanent: of class receiver when the receiver is what is wrong, else content."""
        error_class = "receiver" if self.code == "invalid_receiver" else "content"
        return SendResult(Outcome.PERMANENT, error_code=self.code, error_message=self.message, error_class=error_class)


Transport = Callable[[HttpRequest], HttpResponse]
# What a transport adds to a request's own headers: only the body's framing. It sends no header of its own choosing
# (no default Content-Type or Accept), so a signed request goes out with exactly its signed headers and these.
TRANSPORT_HEADERS = ("content-length",)


class TokenCache(Protocol):
    """Shared cache of vendor access tokens (Redis in service, a dict in tests)."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str, ttl_seconds: int) -> None: ...

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SendContext:
    """What the edge lends a provider for one call: the transport, the clock, the token cache."""

    transport: Transport
    now: datetime
    tokens: TokenCache


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """An inbound delivery report as received: method, query, headers, raw body, peer address."""

    method: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    client_host: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """One delivery report item, matched to a task by provider message id: `provider_message_id` or, where the
    vendor's report can name one message more than one way, any of `alternate_ids` (an Aliyun report names its
    call's BizId, which is a single send's id, and its number, which with the BizId is the id of one number of a
    call to several)."""

    provider_message_id: str
    status: str  # delivered | failed | rejected
    error_code: str = ""
    error_message: str = ""
    reported_at: datetime | None = None
    receiver: str = ""
    alternate_ids: tuple[str, ...] = ()

    @property
    def message_ids(self) -> tuple[str, ...]:
        """Every id the reported message's attempt may be stored under."""
        return (self.provider_message_id, *self.alternate_ids)


@dataclass(frozen=True, slots=True)
class CallbackReply:
    """What to answer the vendor, in the body it expects."""

    body: str
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class CallbackResult:
    """Parsed reports (empty when unverifiable or garbage) plus the reply and why it was refused."""

    reports: tuple[DeliveryReport, ...]
    reply: CallbackReply
    verified: bool = True
    error: str = ""


@dataclass(frozen=True, slots=True)
class ConfigField:
    """One key of a provider's config block."""

    type: type = str
    required: bool = True
    secret: bool = False
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] = ()


ConfigSchema = Mapping[str, ConfigField]


class Provider(Protocol):
    """A provider module: `TYPE`, `CHANNEL_TYPES`, `CONFIG` and `send()`.

    Modules whose vendor reports delivery also define
    `parse_callback(request, account, now) -> CallbackResult`; modules whose vendor takes many receivers of
    one message in a call define `send_batch(messages, account, ctx) -> [SendResult per message]` and
    `batch_size(config) -> int`, the most one call may carry.
    """

    TYPE: str
    CHANNEL_TYPES: frozenset[str]
    CONFIG: ConfigSchema

    def send(self, message: Message, account: Account, ctx: SendContext) -> SendResult: ...


def validate_config(schema: ConfigSchema, config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check a config block against a schema; returns (key, message) pairs, empty when valid."""
    problems: list[tuple[str, str]] = []
    for key in config:
        if key not in schema:
            problems.append((key, f"unknown key (known: {', '.join(sorted(schema))})"))
    for key, spec in schema.items():
        if key not in config:
            if spec.required:
                problems.append((key, "required"))
            continue
        value = config[key]
        expected = spec.type
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append((key, f"must be an integer, got {value!r}"))
        elif expected is bool and not isinstance(value, bool):
            problems.append((key, f"must be true or false, got {value!r}"))
        elif expected is str and not isinstance(value, str):
            problems.append((key, f"must be a string, got {type(value).__name__}"))
        elif expected is str and spec.required and value == "":
            problems.append((key, "must not be empty"))
        elif expected is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append((key, f"must be a number, got {value!r}"))
        elif expected is list and not isinstance(value, (list, tuple)):
            problems.append((key, f"must be a list, got {type(value).__name__}"))
        elif expected is dict and not isinstance(value, dict):
            problems.append((key, f"must be a mapping, got {type(value).__name__}"))
        elif spec.choices and value not in spec.choices:
            problems.append((key, f"must be one of {', '.join(map(str, spec.choices))}, got {value!r}"))
    return problems


def with_defaults(schema: ConfigSchema, config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with every optional key's default filled in."""
    merged = {key: spec.default for key, spec in schema.items() if not spec.required}
    merged.update(config)
    return merged


def secret_values(schema: ConfigSchema, config: Mapping[str, Any]) -> list[str]:
    """The secret strings of a config, for redaction from anything stored or logged."""
    return [str(config[k]) for k, spec in schema.items() if spec.secret and config.get(k)]


def classify_status(status: int) -> Outcome:
    """2xx is ok; 408, 429 and 5xx are worth retrying; any other status is permanent."""
    if 200 <= status < 300:
        return Outcome.OK
    if status in (408, 429) or status >= 500:
        return Outcome.RETRYABLE
    return Outcome.PERMANENT


def http_send(
    build: Callable[[Message, Account, datetime], HttpRequest],
    parse: Callable[[HttpResponse], SendResult],
    message: Message,
    account: Account,
    ctx: SendContext,
    summarize: Callable[[HttpRequest], Mapping[str, Any]] | None = None,
) -> SendResult:
    """Build, transport, parse: the whole of `send()` for a one-call HTTP provider.

    `summarize` turns the request into the stored, secret-free request summary.
    """
    try:
        request = build(message, account, ctx.now)
    except Undeliverable as exc:
        return exc.result()
    try:
        response = ctx.transport(request)
    except TransportError as exc:
        result = transport_failure(exc)
    else:
        result = parse(response)
    if summarize is None:
        return result
    return dataclasses.replace(result, request_summary=summarize(request))


URL_QUERY = re.compile(r"\?[^\s'\")]+")


def transport_failure(exc: TransportError) -> SendResult:
    """A call that did not complete: retryable, with any URL query (tokens, keys) cut from the message; of unknown
    outcome when the request had left, since the vendor may have sent the message."""
    return SendResult(Outcome.RETRYABLE, error_code="network", error_message=URL_QUERY.sub("?***", str(exc)),
                      error_class="unknown" if exc.maybe_sent else "transient")


def check_shared_secret(request: CallbackRequest, callback: Mapping[str, Any]) -> str:
    """Verify a report from a vendor that does not sign: `?token=` and/or source address allowlist.

    `callback` is the account's `callback:` block ({token, allow_ips}); `allow_ips` entries are
    addresses or networks (203.0.113.0/24). Returns "" when the request passes, else the reason it
    does not. With neither configured, unsigned reports are refused.
    """
    token = str(callback.get("token") or "")
    allow_ips = [str(ip) for ip in callback.get("allow_ips") or ()]
    if not token and not allow_ips:
        return "callback has no token or allow_ips configured for this account"
    if token and not hmac.compare_digest(request.query.get("token", "").encode(), token.encode()):
        return "callback token missing or wrong"
    if allow_ips and not _address_allowed(request.client_host, allow_ips):
        return f"callback from {request.client_host or 'unknown address'} is not in allow_ips"
    return ""


def _address_allowed(host: str, allowed: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(entry, strict=False) for entry in allowed)


def parse_json_reports(
    request: CallbackRequest,
    account: Account,
    item_report: Callable[[Any], DeliveryReport | None],
    reply: Callable[[int, str], CallbackReply],
    invalid: str,
) -> CallbackResult:
    """JSON delivery reports (one object or a list) behind the shared-secret check.

    `item_report` turns one item into a report or None when it is unusable (`invalid` says how);
    usable items are kept even when others are not, and the reply says how many were refused.
    """
    refused = check_shared_secret(request, account.callback)
    if refused:
        return CallbackResult((), reply(403, refused), verified=False, error=refused)
    try:
        payload = read_json(request.body)
    except ValueError:
        return CallbackResult((), reply(400, "body is not JSON"), error="body is not JSON")
    items = payload if isinstance(payload, list) else [payload]
    reports = tuple(report for item in items if (report := item_report(item)) is not None)
    if len(reports) != len(items):
        error = f"{len(items) - len(reports)} item(s) {invalid}"
        return CallbackResult(reports, reply(400, error), error=error)
    return CallbackResult(reports, reply(200, "ok"))


_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps with an option builds an encoder per call


def json_text(value: Any) -> str:
    """A request body or reply as JSON text, non-ASCII characters kept as they are."""
    return _JSON.encode(value)


MAX_JSON_DEPTH = 64  # vendors' reports nest three or four levels


def read_json(body: bytes | str) -> Any:
    """JSON text from outside (a vendor's answer or delivery report) parsed; ValueError when it is not JSON, also
    for what json.loads lets through but nothing after it expects: nesting past MAX_JSON_DEPTH (json raises
    RecursionError near 1000 levels; a 3000-deep report answered 40001) and `\\ud800`-style lone surrogates (no
    database can store them; a report id written so answered 40001)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and nested_deeper_than(raw, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    value = json.loads(body)
    escaped = b"\\u" in body if isinstance(body, bytes) else "\\u" in body
    if escaped:
        try:
            json_text(value).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("JSON text holds a lone surrogate (not valid Unicode)") from None
    return value


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body parsed as a JSON object, or None when it is not one."""
    try:
        value = read_json(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def bad_response(response: HttpResponse) -> SendResult:
    """A vendor answer that does not follow the vendor's protocol: worth retrying."""
    return SendResult(
        Outcome.RETRYABLE,
        error_code="bad_response",
        error_message=f"unreadable answer (HTTP {response.status}): {response.body[:120]!r}",
        response_summary={"status": response.status, "body": response.body[:200].decode("utf-8", "replace")},
    )


def redact_url(url: str, *params: str) -> str:
    """The URL with the values of the named query parameters replaced by `***`."""
    parts = urlsplit(url)
    query = [(k, "***" if k in params else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def redact(text: str, secrets: Iterable[str]) -> str:
    """The text with every secret value replaced by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def token_cache_key(provider_type: str, *identity: str) -> str:
    """Cache key of an access token: the provider type and a digest of the account identity, never a secret."""
    digest = hashlib.sha256("\x00".join(identity).encode()).hexdigest()[:32]
    return f"{provider_type}:{digest}"


def request_summary(request: HttpRequest, *secret_params: str) -> dict[str, Any]:
    """Method, URL (the named query values redacted) and JSON body of a request, for storing."""
    body: Any = json_object(request.body) if request.body else None
    if body is None:
        body = request.body[:200].decode("utf-8", "replace")
    return {"method": request.method, "url": redact_url(request.url, *secret_params), "body": body}


TOKEN_MARGIN_SECONDS = 300


@dataclass(frozen=True, slots=True)
class TokenSource:
    """Where a provider gets its access token: cache key, fetch request, how to read the answer."""

    cache_key: str
    request: HttpRequest
    read: Callable[[HttpResponse], tuple[str, int] | SendResult]  # (token, lifetime s) or the failure
    stale_codes: frozenset[str]  # vendor codes meaning "this token is invalid or expired"


def send_with_token(
    source: TokenSource,
    build: Callable[[str], HttpRequest],
    parse: Callable[[HttpResponse], SendResult],
    ctx: SendContext,
    summarize: Callable[[HttpRequest], Mapping[str, Any]],
) -> SendResult:
    """Send with the cached token; on a stale-token answer drop it, fetch a new one and send once more."""
    return send_many_with_token(source, build, lambda response: [parse(response)], ctx, summarize, 1)[0]


def send_many_with_token(
    source: TokenSource,
    build: Callable[[str], HttpRequest],
    parse: Callable[[HttpResponse], Sequence[SendResult]],
    ctx: SendContext,
    summarize: Callable[[HttpRequest], Mapping[str, Any]],
    count: int,
) -> list[SendResult]:
    """`send_with_token` for one call carrying `count` messages: `parse` reads a result per message from the
    answer, and what fails before there is one (the token, the transport) fails each alike. A stale-token answer
    to any of them drops the token and makes the whole call once more with a new one."""
    results = _send_with(ctx.tokens.get(source.cache_key), source, build, parse, ctx, summarize, count)
    if not any(result.error_code in source.stale_codes for result in results):
        return results
    ctx.tokens.delete(source.cache_key)
    return _send_with(None, source, build, parse, ctx, summarize, count)


def _send_with(
    token: str | None,
    source: TokenSource,
    build: Callable[[str], HttpRequest],
    parse: Callable[[HttpResponse], Sequence[SendResult]],
    ctx: SendContext,
    summarize: Callable[[HttpRequest], Mapping[str, Any]],
    count: int,
) -> list[SendResult]:
    if token is None:
        fetched = _fetch_token(source, ctx, summarize)
        if isinstance(fetched, SendResult):
            return [fetched] * count
        token = fetched
    try:
        request = build(token)
    except Undeliverable as exc:
        return [exc.result()] * count
    try:
        response = ctx.transport(request)
    except TransportError as exc:
        return [dataclasses.replace(transport_failure(exc), request_summary=summarize(request))] * count
    summary = summarize(request)
    return [dataclasses.replace(result, request_summary=summary) for result in parse(response)]


def _fetch_token(
    source: TokenSource, ctx: SendContext, summarize: Callable[[HttpRequest], Mapping[str, Any]]
) -> str | SendResult:
    answer = _call(source.request, source.read, ctx, summarize)
    if isinstance(answer, SendResult):
        return answer
    token, lifetime = answer
    ttl = lifetime - TOKEN_MARGIN_SECONDS if lifetime > 2 * TOKEN_MARGIN_SECONDS else max(lifetime // 2, 1)
    ctx.tokens.set(source.cache_key, token, ttl)
    return token


def _call(request: HttpRequest, parse: Callable[[HttpResponse], Any], ctx: SendContext,
          summarize: Callable[[HttpRequest], Mapping[str, Any]]) -> Any:
    try:
        response = ctx.transport(request)
    except TransportError as exc:
        return dataclasses.replace(transport_failure(exc), request_summary=summarize(request))
    answer = parse(response)
    if isinstance(answer, SendResult):
        return dataclasses.replace(answer, request_summary=summarize(request))
    return answer


def status_class(status: int) -> str:
    """The class of an HTTP status alone: 429 throttled; 408 and 5xx transient; any other 4xx content (the
    request as given was refused); 2xx ok."""
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "throttled"
    if status == 408 or status >= 500:
        return "transient"
    return "content"


def code_class(code: str, table: Mapping[str, str], prefixes: Iterable[tuple[str, str]] = (), *, status: int = 200,
               unlisted: str = "content") -> str:
    """A vendor code's class: from `table`, else the first matching (prefix, class), else `transient` when the
    vendor answered 5xx, else `unlisted`."""
    if code in table:
        return table[code]
    for prefix, error_class in prefixes:
        if code.startswith(prefix):
            return error_class
    return "transient" if status >= 500 else unlisted


def classified(error_class: str, code: str, message: str, **fields: Any) -> SendResult:
    """A failed call's result in one class, its outcome the one the class implies."""
    return SendResult(CLASS_OUTCOME[error_class], error_code=code, error_message=message, error_class=error_class,
                      **fields)


def status_failure(response: HttpResponse) -> SendResult | None:
    """The result of a non-2xx answer by `status_class`, or None for 2xx."""
    error_class = status_class(response.status)
    if error_class == "ok":
        return None
    return classified(error_class, f"http_{response.status}", f"HTTP {response.status}",
                      response_summary={"status": response.status})


def errcode_result(response: HttpResponse, classes: Mapping[str, str], id_key: str = "",
                   unlisted: str = "content") -> SendResult:
    """Read a `{"errcode", "errmsg"}` answer (WeCom, DingTalk): 0 is ok, others take their class from `classes`
    (`unlisted` when the code is not there)."""
    answer = json_object(response.body)
    if answer is None or "errcode" not in answer:
        return status_failure(response) or bad_response(response)
    summary = {"status": response.status, "body": {k: v for k, v in answer.items() if k != "access_token"}}
    code = str(answer["errcode"])
    if code == "0":
        return SendResult(Outcome.OK, provider_message_id=str(answer.get(id_key) or "") if id_key else "",
                          response_summary=summary)
    return classified(classes.get(code, unlisted), code, str(answer.get("errmsg") or ""), response_summary=summary)


def errcode_token(response: HttpResponse, classes: Mapping[str, str]) -> tuple[str, int] | SendResult:
    """Read an `{"errcode", "access_token", "expires_in"}` token answer: (token, lifetime s) or the failure."""
    result = errcode_result(response, classes)
    if not result.ok:
        return result
    answer = json_object(response.body) or {}
    if not answer.get("access_token"):
        return bad_response(response)
    return str(answer["access_token"]), int(answer.get("expires_in") or 7200)


MOBILE = re.compile(r"^\+?\d{6,15}$")


def receiver_names(receiver: str) -> list[str]:
    """The names in a `a|b` or `a,b` receiver, blanks dropped."""
    return [part.strip() for part in re.split(r"[|,]", receiver) if part.strip()]

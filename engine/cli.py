"""The `mpush` command: serve, worker, migrate, apps, send, rules. Signals are wired here only.

Each command imports what it needs when it runs, so `mpush rules check` loads no server, store or Redis code.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine import rules_cli
from engine.policy import RuleError
from engine.settings import Settings, SettingsError

if TYPE_CHECKING:
    import uvicorn

    from engine.services import Services

log = logging.getLogger("mpush")


class CliError(Exception):
    """A command that cannot go on: one line saying what went wrong and what to do, no traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"mpush: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"mpush: {exc}", file=sys.stderr)
        return 1
    except RuleError as exc:
        print(exc, file=sys.stderr)
        print(f"mpush: {len(exc.issues)} problem(s) in the rule files; fix them and start again", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpush", description="Message push gateway with rules as code.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the API, workers and scheduler in one process")
    serve.add_argument("--host", help="listen address (default MPUSH_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default MPUSH_PORT or 8080)")
    serve.add_argument("--no-workers", action="store_true", help="API only: no workers, no scheduler")
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run stream workers and the scheduler")
    worker.add_argument("--threads", type=int, help="send threads (default MPUSH_WORKER_THREADS or 16)")
    worker.set_defaults(func=cmd_worker)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(func=cmd_migrate)

    purge = commands.add_parser("purge", help="delete final tasks (and their attempts, reports, webhooks) older "
                                              "than a time, in small batches")
    purge.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h")
    purge.add_argument("--batch", type=int, default=500, help="tasks per transaction (default 500)")
    purge.add_argument("--pause", type=float, default=0.05, help="seconds between batches (default 0.05)")
    purge.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    purge.set_defaults(func=cmd_purge)

    rekey = commands.add_parser("rekey", help="re-encrypt every app secret under MPUSH_ENCRYPTION_KEY, reading "
                                              "those still under MPUSH_PREVIOUS_ENCRYPTION_KEY")
    rekey.set_defaults(func=cmd_rekey)

    apps = commands.add_parser("apps", help="manage client applications")
    app_commands = apps.add_subparsers(title="apps commands", metavar="ACTION", required=True)
    create = app_commands.add_parser("create", help="create an app and print its id and secret (shown once)")
    create.add_argument("name")
    create.add_argument("--webhook-url", help="where final status events are POSTed")
    create.add_argument("--daily-quota", type=int, default=10000, help="messages per day, 0 = unlimited")
    create.add_argument("--rate-limit", type=int, default=100, help="requests per second, 0 = unlimited")
    create.set_defaults(func=cmd_apps_create)
    app_commands.add_parser("list", help="list apps").set_defaults(func=cmd_apps_list)
    for action, text in (("disable", "refuse the app's requests"), ("enable", "accept the app's requests again"),
                         ("rotate-secret", "issue a new secret (printed once)")):
        sub = app_commands.add_parser(action, help=text)
        sub.add_argument("app_id")
        sub.set_defaults(func=cmd_apps_action, action=action)
    webhook = app_commands.add_parser("set-webhook", help="set or clear (empty) the app's webhook URL")
    webhook.add_argument("app_id")
    webhook.add_argument("url")
    webhook.set_defaults(func=cmd_apps_action, action="set-webhook")

    send = commands.add_parser("send", help="send a signed request to a running gateway")
    send.add_argument("--url", help="gateway base URL (default MPUSH_URL, else the configured host and port)")
    send.add_argument("--app-id", required=True)
    send.add_argument("--secret", required=True)
    send.add_argument("--channel", required=True, help="channel id or name")
    send.add_argument("--to", action="append", required=True, dest="receivers",
                      help="receiver; repeat for a batch")
    send.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="template parameter")
    send.add_argument("--signature-name", default="")
    send.add_argument("--at", dest="scheduled_at", help="RFC 3339 time to send at")
    send.add_argument("--idempotency-key", default="")
    send.add_argument("--wait", action="store_true", help="poll the task(s) until every one reaches a final status")
    send.set_defaults(func=cmd_send)

    operators = commands.add_parser("operators", help="manage the people who sign in to the console")
    operator_commands = operators.add_subparsers(title="operators commands", metavar="ACTION", required=True)
    for action, text in (("create", "create an operator (asks for the password)"),
                         ("set-password", "give an operator a new password")):
        sub = operator_commands.add_parser(action, help=text)
        sub.add_argument("name")
        sub.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        sub.set_defaults(func=cmd_operators, action=action)
    operator_commands.add_parser("list", help="list operators").set_defaults(func=cmd_operators, action="list")

    tasks = commands.add_parser("tasks", help="find messages and read their history (asks the running gateway)")
    task_commands = tasks.add_subparsers(title="tasks commands", metavar="ACTION", required=True)
    listing = task_commands.add_parser("list", help="messages, newest first")
    for name in ("task-id", "receiver", "app-id", "channel", "status", "batch-id"):
        listing.add_argument(f"--{name}", default="")
    listing.add_argument("--since", default="", help="ISO 8601 time (UTC when no offset is given)")
    listing.add_argument("--until", default="", help="ISO 8601 time (UTC when no offset is given)")
    listing.add_argument("--limit", type=int, default=20, help="at most this many (1-100)")
    listing.add_argument("--after", default="", help="the cursor printed under the previous page")
    listing.set_defaults(func=cmd_tasks_list)
    show = task_commands.add_parser("show", help="one message's timeline: routing, attempts, decisions, reports")
    show.add_argument("task_id")
    show.add_argument("--json", action="store_true", help="print the timeline as JSON")
    show.set_defaults(func=cmd_tasks_show)

    providers = commands.add_parser("providers", help="provider accounts of the running gateway")
    provider_commands = providers.add_subparsers(title="providers commands", metavar="ACTION", required=True)
    probe = provider_commands.add_parser("test", help="send a test message through one account")
    probe.add_argument("account")
    probe.add_argument("--to", required=True, help="receiver of the test message")
    probe.add_argument("--text", default="mpush test message")
    probe.add_argument("--type", default="", dest="channel_type", help="message type (sms, email, ...)")
    probe.set_defaults(func=cmd_providers_test)

    rules_cli.add_parser(commands)
    return parser


def _settings() -> Settings:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # our reload logs say what changed and why
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from engine.services import open_services

    settings = _settings()
    svc = open_services(settings)
    app = create_app(svc)
    _tune_garbage_collector()
    stop = threading.Event()
    threads = _background(svc, stop, workers=not args.no_workers)
    _on_sighup(svc)
    host, port = args.host or settings.host, args.port or settings.port
    log.info("serve.listening http://%s:%d rules=%s redis=%s database=%s", host, port, svc.rules.current.version,
             "embedded" if settings.embedded_redis else "external", settings.effective_database_url.split("://")[0])
    log.info("serve.admin_token stored in %s", settings.data_dir / "admin.token")
    server = uvicorn.Server(server_config(app, settings, host, port))
    # uvicorn stops serving on SIGTERM/SIGINT, then raises the signal again against the handler it found
    # installed: with the default one the process would die there, before the workers finish and the
    # embedded Redis is shut down. This handler lets the shutdown below run instead.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server.run()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        svc.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.services import open_services

    settings = _settings()
    svc = open_services(settings)
    _tune_garbage_collector()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    _on_sighup(svc)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr=settings.host)
    threads = _background(svc, stop, workers=True, worker_threads=args.threads)
    log.info("worker.started threads=%d rules=%s", args.threads or settings.worker_threads, svc.rules.current.version)
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(timeout=0.5)
    svc.close()
    return 0


YOUNG_COLLECTION_EVERY = 20_000  # container objects allocated between young collections (Python's default: 700)


def server_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for the gateway: X-Forwarded-For/-Proto believed only from the proxies named in
    `MPUSH_FORWARDED_ALLOW_IPS` (none by default, where uvicorn would believe any loopback peer), since a
    callback account's `allow_ips` judges the client address."""
    import uvicorn

    from api.server import BoundedHttpToolsProtocol

    trusted = settings.forwarded_allow_ips.strip()
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=10, proxy_headers=bool(trusted),
                          forwarded_allow_ips=trusted or None, http=BoundedHttpToolsProtocol)


def _tune_garbage_collector() -> None:
    """Put what start-up built (modules, the rule network, phone metadata: ~60k objects) beyond the garbage
    collector, and collect the young generation less often.

    A full collection then looks only at what messages allocate: it took 48 ms, a pause for every request
    in flight, and takes under 1 ms after the freeze. Almost everything a message allocates is freed by
    reference counting, so collecting every 700 allocations only costs: every 20,000, the API and the
    worker each spend about a tenth less CPU a message (measured end to end at 1,000 msg/s offered)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])


def _background(svc: Services, stop: threading.Event, *, workers: bool,
                worker_threads: int | None = None) -> list[threading.Thread]:
    """Start the rule watcher, the SQLite checkpointer and, with workers, the stream consumers and the scheduler."""
    from engine import scheduler
    from engine.store.db import TurnTakingSqliteDatabase, keep_checkpointing
    from engine.store.retention import keep_purging
    from engine.worker import Worker

    threads = []
    if isinstance(svc.db, TurnTakingSqliteDatabase):
        threads.append(threading.Thread(target=keep_checkpointing, args=(svc.db, stop), name="checkpointer"))
    if svc.settings.watch_rules:
        threads.append(threading.Thread(target=svc.rules.watch, args=(stop,), name="rules-watcher", daemon=True))
    if workers:
        worker = Worker(svc, threads=worker_threads)
        threads.append(threading.Thread(target=worker.run, args=(stop,), name="worker"))
        threads.append(threading.Thread(target=scheduler.run, args=(svc, stop), name="scheduler"))
        if svc.settings.retention_days > 0:
            threads.append(threading.Thread(target=keep_purging, args=(svc.settings.retention_days, stop),
                                            name="retention"))
    for thread in threads:
        thread.start()
    return [thread for thread in threads if not thread.daemon]


def _on_sighup(svc: Services) -> None:
    """SIGHUP reloads the rule set, like the watcher and the admin API."""
    rules = svc.rules
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=rules.reload, name="sighup-reload").start())


def _open_store(settings: Settings) -> bytes:
    from engine.store import db as store_db
    from engine.store.crypto import key_from_text
    from engine.store.migrations import migrate

    settings = settings.resolve_secrets()
    database = store_db.connect(settings.effective_database_url, prepare=settings.database_prepare)
    store_db.bind(database)
    migrate(database)
    return key_from_text(settings.encryption_key)


def cmd_migrate(args: argparse.Namespace) -> int:
    from engine.store import db as store_db
    from engine.store.migrations import migrate

    settings = _settings()
    database = store_db.connect(settings.effective_database_url, prepare=settings.database_prepare)
    applied = migrate(database)
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from engine.policy.schema import parse_duration
    from engine.store.retention import purge_before

    try:
        age = parse_duration(args.older_than)
    except ValueError as exc:
        print(f"mpush: --older-than: {exc}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("mpush: --batch must be at least 1", file=sys.stderr)
        return 2
    _open_store(_settings())
    cutoff = datetime.now(UTC) - timedelta(seconds=age)
    purged = purge_before(cutoff, batch=args.batch, pause=max(0.0, args.pause), dry_run=args.dry_run)
    if args.dry_run:
        print(f"would delete {purged.tasks} final tasks last changed before {cutoff:%Y-%m-%d %H:%M:%S} UTC")
    else:
        print("deleted " + (", ".join(f"{n} {table}" for table, n in purged.counts.items() if n) or "nothing"))
    return 0


def cmd_rekey(args: argparse.Namespace) -> int:
    from engine.services import retired_keys
    from engine.store import repo

    settings = _settings()
    if not settings.previous_encryption_key:
        print("mpush: set MPUSH_PREVIOUS_ENCRYPTION_KEY to the key being retired and MPUSH_ENCRYPTION_KEY to the "
              "new one", file=sys.stderr)
        return 2
    key = _open_store(settings)
    changed, unreadable = repo.reencrypt_secrets(key, retired_keys(settings))
    print(f"re-encrypted {changed} app secrets under the new key")
    if unreadable:
        print(f"mpush: {len(unreadable)} app secrets open with neither key: {', '.join(unreadable)}", file=sys.stderr)
        return 1
    return 0


def cmd_apps_create(args: argparse.Namespace) -> int:
    from engine.store import repo

    key = _open_store(_settings())
    app, secret = repo.create_app(args.name, key, webhook_url=args.webhook_url, daily_quota=args.daily_quota,
                                  rate_limit=args.rate_limit)
    print(f"app_id:     {app.app_id}\napp_secret: {secret}\n(the secret is shown only now; store it safely)")
    return 0


def cmd_apps_list(args: argparse.Namespace) -> int:
    from engine.store import repo

    _open_store(_settings())
    print(f"{'APP ID':<18} {'STATUS':<9} {'QUOTA/DAY':>9} {'RATE/S':>6}  NAME / WEBHOOK")
    for app in repo.list_apps():
        status = "enabled" if app.status == 1 else "disabled"
        print(f"{app.app_id:<18} {status:<9} {app.daily_quota:>9} {app.rate_limit:>6}  {app.name}"
              f"{'  -> ' + app.webhook_url if app.webhook_url else ''}")
    return 0


def cmd_apps_action(args: argparse.Namespace) -> int:
    from engine.store import repo

    key = _open_store(_settings())
    if repo.get_app(args.app_id) is None:
        print(f"mpush: no app {args.app_id}", file=sys.stderr)
        return 1
    if args.action == "rotate-secret":
        print(f"app_secret: {repo.rotate_secret(args.app_id, key)}\n(the old secret no longer works)")
    elif args.action == "set-webhook":
        repo.set_webhook(args.app_id, args.url or None)
        print(f"webhook: {args.url or '(none)'}")
    else:
        repo.set_app_status(args.app_id, 1 if args.action == "enable" else 2)
        print(f"{args.app_id}: {args.action}d")
    return 0


def cmd_operators(args: argparse.Namespace) -> int:
    from engine.store import queries

    _open_store(_settings())
    if args.action == "list":
        for operator in queries.list_operators():
            seen = f"{operator.signed_in_at:%Y-%m-%d %H:%M}" if operator.signed_in_at else "never"
            print(f"{operator.name:<24} created {operator.created_at:%Y-%m-%d}  last sign-in {seen}")
        return 0
    password = _new_password(args.password_stdin)
    try:
        if args.action == "create":
            queries.create_operator(args.name, password)
        else:
            queries.set_operator_password(args.name, password)
    except (ValueError, LookupError, queries.OperatorExists) as exc:
        print(f"mpush: {exc}", file=sys.stderr)
        return 1
    print(f"operator {args.name}: {'created' if args.action == 'create' else 'password changed'}; "
          f"sign in at /console")
    return 0


def _new_password(from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SettingsError("the two passwords differ")
    return first


def gateway_url(settings: Settings) -> str:
    """MPUSH_URL, else the gateway this configuration serves (a wildcard host reached on loopback)."""
    if os.environ.get("MPUSH_URL"):
        return os.environ["MPUSH_URL"].rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    return f"http://{host}:{settings.port}"


def _admin_token(settings: Settings) -> str:
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_dir / "admin.token"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        raise CliError(f"no admin token: set MPUSH_ADMIN_TOKEN, or run where the gateway keeps {path}") from None


def admin_call(method: str, path: str, *, params: dict[str, str] | None = None,
               body: dict[str, object] | None = None) -> dict[str, object]:
    """One admin API call to the running gateway; its `data`, or CliError saying what went wrong."""
    import requests

    settings = Settings.from_env()
    base = gateway_url(settings)
    try:
        answer = requests.request(method, base + path, params=params, json=body, timeout=60,
                                  headers={"Authorization": f"Bearer {_admin_token(settings)}"})
    except requests.ConnectionError:
        raise CliError(f"cannot reach the gateway at {base}: is `mpush serve` running? (MPUSH_URL names "
                       "another)") from None
    except requests.RequestException as exc:
        raise CliError(f"the call to {base} failed: {exc}") from None
    try:
        payload = answer.json()
    except ValueError:
        raise CliError(f"{base} answered HTTP {answer.status_code}, not the gateway's JSON: check MPUSH_URL") from None
    if answer.status_code == 401:
        raise CliError("the gateway refused the admin token: set MPUSH_ADMIN_TOKEN to the one in its data/admin.token")
    if not isinstance(payload, dict) or payload.get("code") != 0:
        message = payload.get("message") if isinstance(payload, dict) else payload
        raise CliError(f"the gateway refused: {message}")
    data: dict[str, object] = payload.get("data") or {}
    return data


def cmd_tasks_list(args: argparse.Namespace) -> int:
    params = {name: getattr(args, name) for name in ("task_id", "receiver", "app_id", "channel", "status",
                                                      "batch_id", "since", "until", "after")}
    params = {name: value for name, value in params.items() if value}
    params["page_size"] = str(args.limit)
    data = admin_call("GET", "/api/admin/tasks/search", params=params)
    items = data["items"]
    assert isinstance(items, list)
    print(f"{'CREATED (UTC)':<20} {'TASK ID':<36} {'STATUS':<10} {'CHANNEL':<12} {'ACCOUNT':<16} RECEIVER")
    for task in items:
        print(f"{task['created_at'][:19].replace('T', ' '):<20} {task['task_id']:<36} {task['status']:<10} "
              f"{task['channel']:<12} {task['provider'] or '-':<16} {task['receiver']}")
    if not items:
        print("(no message matches)")
    if data.get("next"):
        print(f"more: --after {data['next']}")
    return 0


def cmd_tasks_show(args: argparse.Namespace) -> int:
    data = admin_call("GET", f"/api/admin/tasks/{args.task_id}/timeline")
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    task, events = data["task"], data["events"]
    assert isinstance(task, dict) and isinstance(events, list)
    print(f"task {task['task_id']}  {task['status']}  to {task['receiver']} on {task['channel']}")
    for event in events:
        print(f"\n{(event['at'] or '')[:23].replace('T', ' ')}  {event['kind'].upper():<9} {event['title']}")
        for label, value in event["facts"].items():
            print(f"    {label + ':':<18} {value}")
        for label, value in event["blocks"].items():
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            print(f"    {label + ':':<18} {text[:300]}")
    return 0


def cmd_providers_test(args: argparse.Namespace) -> int:
    result = admin_call("POST", f"/api/admin/providers/{args.account}/test",
                        body={"to": args.to, "text": args.text, "channel_type": args.channel_type})
    print(f"{result['account']} -> {result['receiver']}: {result['outcome']} in {result['latency_ms']} ms")
    if result["provider_message_id"]:
        print(f"vendor message id: {result['provider_message_id']}")
    if result["error_code"] or result["error_message"]:
        print(f"error: {result['error_code']} {result['error_message']}".rstrip())
    return 0 if result["ok"] else 1


def cmd_send(args: argparse.Namespace) -> int:
    import requests

    params = dict(item.split("=", 1) for item in args.param if "=" in item)
    channel: int | str = int(args.channel) if args.channel.isdigit() else args.channel
    batch = len(args.receivers) > 1
    body: dict[str, object] = {"channel_id": channel, "template_params": params}
    body.update({"receivers": args.receivers} if batch else {"receiver": args.receivers[0]})
    if args.signature_name:
        body["signature_name"] = args.signature_name
    if args.scheduled_at:
        body["scheduled_at"] = args.scheduled_at
    path = "/api/v1/messages/batch" if batch else "/api/v1/messages"
    payload = json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", **_signed(args, "POST", path, payload)}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    args.url = (args.url or gateway_url(Settings.from_env())).rstrip("/")
    try:
        answer = requests.post(args.url + path, data=payload, headers=headers, timeout=10).json()
    except requests.ConnectionError:
        raise CliError(f"cannot reach the gateway at {args.url}: is `mpush serve` running?") from None
    except (requests.RequestException, ValueError) as exc:
        raise CliError(f"the send to {args.url} failed: {exc}") from None
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    if answer.get("code") != 0:
        return 1
    if args.wait:
        data = answer["data"]
        return _wait_for_batch(args, data["batch_id"]) if batch else _wait_for(args, data["task_id"])
    return 0


def _signed(args: argparse.Namespace, method: str, path: str, payload: bytes) -> dict[str, str]:
    from engine.signing import sign_headers

    return sign_headers(args.app_id, args.secret, method, path, payload, now=int(time.time()), nonce=uuid.uuid4().hex)


def _signed_get(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """The `data` of a signed GET to the gateway ({} when absent); CliError when the call fails."""
    import requests

    try:
        answer = requests.get(args.url + path, headers=_signed(args, "GET", path, b""), timeout=10).json()
    except (requests.RequestException, ValueError) as exc:
        raise CliError(f"polling {args.url}{path} failed: {exc}") from None
    data = answer.get("data") if isinstance(answer, dict) else None
    return data if isinstance(data, dict) else {}


def _wait_for(args: argparse.Namespace, task_id: str, timeout: float = 30.0) -> int:
    path = f"/api/v1/messages/{task_id}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _signed_get(args, path).get("status")
        if status in ("success", "failed", "sent"):
            print(f"task {task_id}: {status}")
            return 0 if status != "failed" else 1
        time.sleep(0.3)
    print(f"task {task_id}: still not final after {timeout:.0f} s", file=sys.stderr)
    return 1


def _wait_for_batch(args: argparse.Namespace, batch_id: str, timeout: float = 60.0) -> int:
    """Poll the batch until none of its tasks is still open (pending, scheduled or processing)."""
    path = f"/api/v1/batches/{batch_id}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = _signed_get(args, path).get("status_counts") or {}
        if counts and not any(counts.get(status) for status in ("pending", "scheduled", "processing")):
            print(f"batch {batch_id}: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n))
            return 1 if counts.get("failed") else 0
        time.sleep(0.3)
    print(f"batch {batch_id}: still not final after {timeout:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

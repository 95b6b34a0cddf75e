"""The one place that reads the environment and the optional config file; read once, frozen."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

DEFAULT_ENCRYPTION_KEY_FILE = "encryption.key"
DEFAULT_ADMIN_TOKEN_FILE = "admin.token"


class SettingsError(Exception):
    """A setting is present but unusable."""


MAX_STREAM_SHARDS = 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """Process settings. Empty `redis_url` / `database_url` mean the embedded default."""

    data_dir: Path = Path("data")
    rules_dir: Path = Path("rules")
    redis_url: str = ""
    redis_cluster: bool = False  # redis_url names one node of a Redis Cluster (the client finds the others)
    stream_shards: int = 1  # task streams (each with its group and delayed set); a cluster spreads them
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    worker_threads: int = 16
    worker_readers: int = 2
    worker_metrics_port: int = 0  # `mpush worker` serves /metrics on this port (at MPUSH_HOST); 0: not served
    database_pool_size: int = 32  # connections per process to PostgreSQL or MySQL
    database_prepare: bool = True  # PostgreSQL: hot statements prepared per connection (off behind a transaction pooler)
    visibility_timeout: float = 60.0
    sweep_interval: float = 10.0  # seconds between sweeps for open tasks whose job Redis never got or lost
    outbox_grace: float = 60.0  # an open task untouched this long with no delayed job is queued again
    attempt_lease: float = 20.0  # a provider call's claim, renewed while it runs; expired, the attempt is lost
    max_failure_decisions: int = 20  # a task whose failures were decided this often fails, whatever the rules say
    callback_timeout: float = 600.0
    encryption_key: str = ""
    previous_encryption_key: str = ""  # during a key rotation: secrets not yet re-encrypted still open
    retention_days: int = 0  # final tasks older than this are purged by the scheduler; 0 keeps them all
    admin_token: str = ""
    alert_webhook: str = ""
    public_url: str = ""
    watch_rules: bool = True
    log_level: str = "INFO"
    rule_env: Mapping[str, str] | None = None
    outbound_allow: str = ""  # CIDRs and host names customer webhooks and alerts may reach besides public addresses
    max_body_bytes: int = 4 * 1024 * 1024  # any request body; larger ones are refused with 413 before buffering
    forwarded_allow_ips: str = ""  # proxies whose X-Forwarded-For is believed (comma-separated, "*" for any)
    max_send_bytes: int = 256 * 1024  # a single send's body (a batch's: four times); far above any valid send
    max_param_chars: int = 2000  # each template parameter of a send request
    max_schedule_days: int = 90  # how far ahead `scheduled_at` may be
    webhook_threads: int = 8
    webhook_per_app: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.stream_shards <= MAX_STREAM_SHARDS:
            raise SettingsError(f"setting stream_shards must be between 1 and {MAX_STREAM_SHARDS}, "
                                f"got {self.stream_shards}")
        if self.redis_cluster and not self.redis_url:
            raise SettingsError("setting redis_cluster needs redis_url (a node of the cluster); "
                                "the embedded Redis is a single server")

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'mpush.db'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `MPUSH_*` variables, over an optional YAML file named by `MPUSH_CONFIG`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_file = environ.get("MPUSH_CONFIG")
        if config_file:
            values.update(_read_config_file(Path(config_file)))
        for field in fields(cls):
            name = "MPUSH_" + field.name.upper()
            if name in environ and field.name != "rule_env":
                values[field.name] = environ[name]
        if "encryption_key" not in values and environ.get("APP_ENCRYPTION_KEY"):
            values["encryption_key"] = environ["APP_ENCRYPTION_KEY"]  # the reference service's name
        values["rule_env"] = dict(environ)
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def resolve_secrets(self) -> Settings:
        """Fill the encryption key and admin token, creating them under `data_dir` on first start."""
        from engine.store.crypto import key_from_text

        key = self.encryption_key or _read_or_create(self.data_dir / DEFAULT_ENCRYPTION_KEY_FILE, 32)
        token = self.admin_token or _read_or_create(self.data_dir / DEFAULT_ADMIN_TOKEN_FILE, 40)
        try:
            key_from_text(key)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return _replace(self, encryption_key=key, admin_token=token)


def _replace(settings: Settings, **changes: Any) -> Settings:
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    values.update(changes)
    return Settings(**values)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping")
    known = {f.name for f in fields(Settings)} - {"rule_env"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"config file {path}: unknown keys {', '.join(unknown)}")
    return data


def _coerce(name: str, value: Any) -> Any:
    kind = Settings.__dataclass_fields__[name].type
    try:
        if kind == "Path":
            return Path(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else _boolean(str(value))
    except (TypeError, ValueError):
        raise SettingsError(f"setting {name} has an invalid value {value!r}") from None
    return value


def _boolean(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (empty: false); anything else, a typo that would silently mean false
    (`MPUSH_WATCH_RULES=ture`), is refused."""
    spelled = text.strip().lower()
    if spelled in ("1", "true", "yes", "on"):
        return True
    if spelled in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _read_or_create(path: Path, length: int) -> str:
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(length // 2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value

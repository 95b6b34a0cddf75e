"""The tables: applications, tasks, batches, attempts, callbacks, customer webhook deliveries and console operators."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import peewee

database = peewee.DatabaseProxy()

APP_ENABLED = 1
APP_DISABLED = 2
APP_STATUSES = (APP_ENABLED, APP_DISABLED)

TASK_STATUSES = ("pending", "scheduled", "processing", "sent", "success", "failed")
OPEN_TASK_STATUSES = ("pending", "scheduled", "processing")
UNFINISHED_TASK_STATUSES = (*OPEN_TASK_STATUSES, "sent")  # a sent task still awaits its delivery report
CALLBACK_STATUSES = ("", "delivered", "failed", "rejected", "timeout")
ATTEMPT_STATUSES = ("sending", "ok", "retryable", "permanent", "unknown")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTimeField(peewee.DateTimeField):
    """Stored as naive UTC (portable across the three databases); read and written as aware datetimes."""

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise TypeError(f"{self.name}: expected a timezone-aware datetime, got {value!r}")
        return value.astimezone(UTC).replace(tzinfo=None)

    def python_value(self, value: Any) -> Any:
        value = super().python_value(value)
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC)
        return value


class JSONTextField(peewee.TextField):
    """A JSON document kept and read back as text; writes take either JSON text (checked) or a value to encode."""

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                json.loads(value)
            except ValueError as exc:
                raise ValueError(f"{self.name}: not valid JSON text: {value[:80]!r}") from exc
            return value
        return _COMPACT_JSON.encode(value)


_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps would build one per call


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Application(BaseModel):
    app_id = peewee.CharField(max_length=32, unique=True)
    name = peewee.CharField(max_length=100)
    secret = peewee.TextField()
    status = peewee.SmallIntegerField(default=APP_ENABLED)
    webhook_url = peewee.CharField(max_length=500, null=True)
    daily_quota = peewee.IntegerField(default=10000)
    rate_limit = peewee.IntegerField(default=100)
    created_at = UtcDateTimeField(default=utcnow)
    updated_at = UtcDateTimeField(default=utcnow)

    class Meta:
        table_name = "applications"


class Task(BaseModel):
    task_id = peewee.CharField(max_length=36, unique=True)
    app_id = peewee.CharField(max_length=32)
    batch_id = peewee.CharField(max_length=36, null=True)
    channel_id = peewee.IntegerField(default=0)
    channel = peewee.CharField(max_length=100, default="")
    message_type = peewee.CharField(max_length=20, default="")
    receiver = peewee.CharField(max_length=255)
    title = peewee.CharField(max_length=255, default="")
    content = peewee.TextField(default="")
    template = peewee.CharField(max_length=100, default="")
    template_params = JSONTextField(default="{}")
    signature = peewee.CharField(max_length=100, default="")
    status = peewee.CharField(max_length=16, default="pending")
    callback_status = peewee.CharField(max_length=16, default="")
    callback_time = UtcDateTimeField(null=True)
    retry_count = peewee.IntegerField(default=0)
    max_retry = peewee.IntegerField(default=3)
    exclude_providers = JSONTextField(default="[]")
    scheduled_at = UtcDateTimeField(null=True)
    provider = peewee.CharField(max_length=100, default="")
    provider_message_id = peewee.CharField(max_length=128, default="")
    error_code = peewee.CharField(max_length=100, default="")
    error_message = peewee.TextField(default="")
    rule = peewee.CharField(max_length=100, default="")
    rule_version = peewee.CharField(max_length=64, default="")
    idempotency_key = peewee.CharField(max_length=255, null=True)
    tags = JSONTextField(default="[]")
    created_at = UtcDateTimeField(default=utcnow, index=True)
    updated_at = UtcDateTimeField(default=utcnow)  # indexed only while the task is unfinished (migration 006)
    resend_of = peewee.IntegerField(null=True)  # the unknown-outcome attempt the next one resends under its key
    not_before = UtcDateTimeField(null=True)  # a pending task's next attempt waits for its retry delay until then
    receiver_as_sent = peewee.CharField(max_length=255, null=True)  # when the client wrote `receiver` otherwise
    trace_id = peewee.CharField(max_length=36, null=True)  # the `trace-id` of the API answer that accepted it

    @property
    def due(self) -> datetime | None:
        """When an open task may be sent: a scheduled one at its time, a pending one after its retry delay."""
        return self.scheduled_at if self.status == "scheduled" else self.not_before

    class Meta:
        table_name = "tasks"
        # Every index costs each of a task's three row writes (insert, claim, record) an entry: few, and none
        # on what only unfinished tasks are looked up by (migration 006).
        indexes = (
            # NULL keys never collide on any of the three databases, so tasks without a key are unconstrained.
            (("app_id", "idempotency_key"), True),
            # The console's message search: newest first by receiver, by app or by batch.
            (("receiver", "created_at"), False),
            (("app_id", "created_at"), False),
            (("batch_id", "created_at"), False),
        )


class Batch(BaseModel):
    batch_id = peewee.CharField(max_length=36, unique=True)
    app_id = peewee.CharField(max_length=32, index=True)
    total = peewee.IntegerField()
    created_at = UtcDateTimeField(default=utcnow)

    class Meta:
        table_name = "batches"


class Attempt(BaseModel):
    task_id = peewee.CharField(max_length=36)
    number = peewee.IntegerField()
    provider = peewee.CharField(max_length=100)
    status = peewee.CharField(max_length=16, default="sending")
    final = peewee.BooleanField(default=False)
    provider_message_id = peewee.CharField(max_length=128, default="", index=True)
    error_code = peewee.CharField(max_length=100, default="")
    error_message = peewee.TextField(default="")
    request = JSONTextField(null=True)
    response = JSONTextField(null=True)
    latency_ms = peewee.IntegerField(null=True)
    rule = peewee.CharField(max_length=100, default="")
    rule_version = peewee.CharField(max_length=64, default="")
    created_at = UtcDateTimeField(default=utcnow)
    finished_at = UtcDateTimeField(null=True)
    # Who is making the call and until when that claim holds; the worker renews it while the call is in
    # flight, so only an expired lease makes a `sending` attempt lost.
    owner = peewee.CharField(max_length=100, default="")
    lease_until = UtcDateTimeField(null=True)
    key_number = peewee.IntegerField(null=True)  # resent under attempt key_number's idempotency key

    class Meta:
        table_name = "attempts"
        # The unique pair is the per-attempt lock: a second worker cannot claim an attempt already begun.
        # created_at: the console dashboard's attempts of the last hours.
        indexes = ((("task_id", "number"), True), (("created_at",), False))


class Decision(BaseModel):
    """A failure decision the rule set made for a task: the scene, the rule, what it decided and why."""

    task_id = peewee.CharField(max_length=36)
    number = peewee.IntegerField()  # the attempt it was about
    scene = peewee.CharField(max_length=32)
    action = peewee.CharField(max_length=32)
    rule = peewee.CharField(max_length=100, default="")
    rule_version = peewee.CharField(max_length=64, default="")
    delay_seconds = peewee.FloatField(default=0.0)
    provider = peewee.CharField(max_length=100, default="")
    error_class = peewee.CharField(max_length=16, default="")
    error_code = peewee.CharField(max_length=100, default="")
    error_message = peewee.TextField(default="")
    created_at = UtcDateTimeField(default=utcnow)

    class Meta:
        table_name = "decisions"
        indexes = ((("task_id", "created_at"), False),)


class Callback(BaseModel):
    provider = peewee.CharField(max_length=100)
    provider_message_id = peewee.CharField(max_length=128, default="", index=True)
    task_id = peewee.CharField(max_length=36, null=True)
    status = peewee.CharField(max_length=16, default="")
    error_code = peewee.CharField(max_length=100, default="")
    error_message = peewee.TextField(default="")
    raw = peewee.TextField(default="")
    verified = peewee.BooleanField(default=False)
    applied = peewee.BooleanField(default=False)
    note = peewee.CharField(max_length=255, default="")
    created_at = UtcDateTimeField(default=utcnow)

    class Meta:
        table_name = "callbacks"


class WebhookDelivery(BaseModel):
    task_id = peewee.CharField(max_length=36, index=True)
    app_id = peewee.CharField(max_length=32)
    event = peewee.CharField(max_length=32)
    url = peewee.CharField(max_length=500)
    body = peewee.TextField()
    status = peewee.CharField(max_length=16, default="pending")
    tries = peewee.IntegerField(default=0)
    next_at = UtcDateTimeField(null=True)
    last_status = peewee.IntegerField(null=True)
    last_error = peewee.TextField(default="")
    created_at = UtcDateTimeField(default=utcnow)
    updated_at = UtcDateTimeField(default=utcnow)

    class Meta:
        table_name = "webhook_deliveries"
        indexes = ((("status", "next_at"), False),)


class WebhookTry(BaseModel):
    delivery = peewee.ForeignKeyField(WebhookDelivery, backref="tries_log", on_delete="CASCADE")
    number = peewee.IntegerField()
    status_code = peewee.IntegerField(null=True)
    error = peewee.TextField(default="")
    latency_ms = peewee.IntegerField(null=True)
    created_at = UtcDateTimeField(default=utcnow)

    class Meta:
        table_name = "webhook_tries"
        indexes = ((("delivery", "number"), True),)


class Operator(BaseModel):
    """A person who signs in to the console; the password is kept as an argon2 hash only."""

    name = peewee.CharField(max_length=64, unique=True)
    password_hash = peewee.CharField(max_length=255)
    created_at = UtcDateTimeField(default=utcnow)
    signed_in_at = UtcDateTimeField(null=True)

    class Meta:
        table_name = "operators"


MODELS: tuple[type[BaseModel], ...] = (Application, Task, Batch, Attempt, Decision, Callback, WebhookDelivery,
                                       WebhookTry, Operator)

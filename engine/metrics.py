"""Prometheus metrics of the gateway, registered once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ACCEPTED = Counter("mpush_messages_accepted_total", "Messages accepted by the API", ["channel"])
REJECTED = Counter("mpush_requests_rejected_total", "API requests refused", ["code"])
SENDS = Counter("mpush_provider_sends_total", "Provider calls by outcome", ["provider", "outcome"])
SEND_SECONDS = Histogram(
    "mpush_provider_send_seconds", "Provider call latency", ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UNKNOWN_OUTCOMES = Counter("mpush_unknown_outcomes_total", "Attempts whose outcome is unknown (the vendor may have "
                           "the message): lost with their worker, or cut off after the request left",
                           ["provider", "error_code"])
LOST_ATTEMPTS = Counter("mpush_lost_attempts_total", "Attempts found `sending` after their lease expired",
                        ["provider"])
TAKEN_OVER = Counter("mpush_entries_taken_over_total", "Stream entries taken over from workers whose heartbeat ran "
                     "out, without waiting for the visibility timeout")
GROUP_RECREATED = Counter("mpush_queue_group_recreated_total", "Times a worker found the stream's consumer group "
                          "gone (Redis lost its data) and created it again")
REQUEUED = Counter("mpush_tasks_requeued_total", "Open tasks queued again by a sweep: `stranded` (no job after the "
                   "outbox grace, e.g. the API died before enqueuing), `lost_data` (Redis lost its data) or `restart` (Redis "
                   "restarted and may have lost its last writes)", ["reason"])
FINAL = Counter("mpush_tasks_final_total", "Tasks reaching a final status", ["status"])
DECISIONS = Counter("mpush_failure_decisions_total", "Failure decisions carried out", ["scene", "action", "rule"])
QUOTA_MATCHES = Counter("mpush_quota_rule_matches_total", "Messages each quota rule counted", ["rule"])
CALLBACKS = Counter("mpush_callbacks_total", "Provider delivery reports", ["provider", "result"])
CALLBACKS_REFUSED = Counter("mpush_callbacks_refused_total", "Provider callback requests refused (unverified, or "
                            "holding no report); only a sample is stored", ["provider", "reason"])
WEBHOOKS = Counter("mpush_webhook_tries_total", "Customer webhook tries", ["result"])
RULES_RELOADS = Counter("mpush_rules_reloads_total", "Rule set reloads", ["result"])
RULES_OK = Gauge("mpush_rules_last_reload_ok", "1 when the last rule reload succeeded")

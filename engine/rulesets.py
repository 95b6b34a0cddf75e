"""The live rule set: load aside, verify, swap one reference; the watcher, SIGHUP and the admin API call reload()."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine import metrics
from engine.policy import RuleError, RuleIssue, RuleSet, load_dir
from engine.policy.cases import load_cases, run_cases
from engine.policy.loader import git_state

log = logging.getLogger("mpush.rules")
GIT_CHECK_SECONDS = 5.0


def build(path: Path, *, env: Mapping[str, str], provider_types: Mapping[str, Any], backend: str) -> RuleSet:
    """Load, validate, compile (canary first) and run `path/tests` cases; raises RuleError."""
    ruleset = load_dir(path, env=env, provider_types=provider_types, backend=backend)
    try:
        mismatches = run_cases(ruleset, load_cases(path / "tests"))
    except RuleError:
        ruleset.close()
        raise
    if mismatches:
        ruleset.close()
        raise RuleError([mismatch.issue() for mismatch in mismatches])
    return ruleset


class RuleSetHolder:
    """Holds the current RuleSet. A failed reload keeps the running one and records the error.

    Callers read `current` once per message and keep that object: evaluations in progress
    finish on the version they started with, even after a swap.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        env: Mapping[str, str],
        provider_types: Mapping[str, Any] | None = None,
        backend: str = "network",
    ) -> None:
        self.path = Path(path)
        self._env = dict(env)
        self._provider_types = provider_types
        self._backend = backend
        self._reload_lock = threading.Lock()
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self.current: RuleSet = build(self.path, env=self._env, provider_types=self.provider_types, backend=backend)
        self.loaded_at = datetime.now(UTC)
        metrics.RULES_OK.set(1)

    @property
    def provider_types(self) -> Mapping[str, Any]:
        if self._provider_types is None:
            from providers import registry  # the registry imports every provider module; only the live service needs it

            self._provider_types = registry.config_schemas()
        return self._provider_types

    def reload(self) -> RuleSet | RuleError:
        """Load the directory again and swap it in if everything passes; never raises."""
        with self._reload_lock:
            try:
                fresh = build(self.path, env=self._env, provider_types=self.provider_types, backend=self._backend)
            except RuleError as exc:
                return self._failed(exc)
            except Exception as exc:  # an unreadable file, a crashed canary: still not allowed to take the service down
                return self._failed(RuleError([RuleIssue(str(self.path), 1, "", f"reload failed: {exc!r}")]))
            old, self.current = self.current, fresh
            self.loaded_at = datetime.now(UTC)
            self.reloads += 1
            self.last_error = None
            old.close()
            metrics.RULES_RELOADS.labels("ok").inc()
            metrics.RULES_OK.set(1)
            log.info("rules.reloaded version=%s previous=%s", fresh.version, old.version)
            return fresh

    def _failed(self, error: RuleError) -> RuleError:
        self.failures += 1
        self.last_error = str(error)
        metrics.RULES_RELOADS.labels("failed").inc()
        metrics.RULES_OK.set(0)
        log.error("rules.reload_failed version_kept=%s\n%s", self.current.version, error)
        return error

    def watch(self, stop: threading.Event, git_every: float = GIT_CHECK_SECONDS) -> None:
        """Reload whenever a rule file under the directory changes, or the git commit (or clean/dirty state) of
        its work tree moves without one (a commit of what was already on disk), until `stop` is set."""
        from watchfiles import watch

        seen = (self.current.version.commit, self.current.version.dirty)  # a commit made before the watch began counts
        for changes in watch(self.path, watch_filter=_rule_files, stop_event=stop, debounce=300,
                             rust_timeout=round(git_every * 1000), yield_on_timeout=True):
            if changes or git_state(self.path) != seen:
                self.reload()
                seen = git_state(self.path)

    def status(self) -> dict[str, Any]:
        """What /health and the admin API show about the live rule set."""
        return {
            "version": str(self.current.version),
            "backend": self.current.backend,
            "loaded_at": self.loaded_at.isoformat(),
            "last_error": self.last_error,
            "reloads": self.reloads,
            "failures": self.failures,
        }


def _rule_files(_change: Any, path: str) -> bool:
    return path.endswith((".yaml", ".yml"))

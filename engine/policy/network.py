"""Runs a compiled program on the durable-rules C engine: canary compile, sid pool, all-matches, close.

Pattern (reference/durable-rules.md): no `durable.lang`, no `Host`; assert_fact, drain every
action, retract_fact, on sids primed once at creation. Each evaluation borrows a sid from a
pool, so no two threads ever share one. `close()` frees the engine state once no evaluation is
in flight; later evaluations on a closed network return None and the caller falls back to the
reference evaluator, which decides identically.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

import durable_rules_engine as dre

from .compiler import PRIME, EngineError, Program

MAX_SIDS = 256  # the engine allows 1024 live sids per ruleset; every sid costs memory per rule
CANARY_TIMEOUT = 20.0

_CANARY = """
import json, sys
import durable_rules_engine as dre
handle = dre.create_ruleset("canary", sys.stdin.read())
code, offset = dre.assert_event(handle, json.dumps({"sid": "canary", "__prime__": 1}))
result = dre.start_action_for_state(handle, offset)
while result:
    result = dre.complete_and_start_action(handle, offset)
dre.delete_state(handle, "canary")
dre.delete_ruleset(handle)
print("ok")
"""
_proven: set[str] = set()
_proven_lock = threading.Lock()
_names = iter(range(1, 1 << 62))


def canary(definition_text: str, timeout: float = CANARY_TIMEOUT) -> None:
    """Compile in a throw-away child first: a shape that hangs or crashes C must not reach this process."""
    digest = hashlib.sha256(definition_text.encode()).hexdigest()
    with _proven_lock:
        if digest in _proven:
            return
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _CANARY],
            input=definition_text,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise EngineError(f"the rule engine did not finish compiling within {timeout:g}s") from None
    if done.returncode != 0 or done.stdout.strip() != "ok":
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise EngineError(f"the rule engine failed to compile the rule set: {detail[0]}")
    with _proven_lock:
        _proven.add(digest)


class Network:
    """One compiled ruleset in the C engine."""

    def __init__(self, program: Program, *, canary_timeout: float = CANARY_TIMEOUT) -> None:
        text = program.digest_text()
        canary(text, canary_timeout)
        self.name = f"mpush-{next(_names)}"
        self._handle: int | None = dre.create_ruleset(self.name, text)
        self._lock = threading.Condition()
        self._free: list[str] = []
        self._sids: list[str] = []
        self._busy = 0
        self._closing = False

    def matches(self, message: Mapping[str, Any]) -> list[str] | None:
        """Names of every engine rule the message satisfies; None when the network is closed."""
        sid = self._acquire()
        if sid is None:
            return None
        try:
            return self._all_matches(dict(message, sid=sid))
        finally:
            self._release(sid)

    def close(self) -> None:
        """Free the engine state now, or when the last in-flight evaluation ends."""
        with self._lock:
            self._closing = True
            if self._busy == 0:
                self._destroy()

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _all_matches(self, message: dict[str, Any]) -> list[str]:
        text = json.dumps(message)
        code, offset = dre.assert_fact(self._handle, text)
        if code != 0:
            return []
        try:
            return self._drain(offset)
        finally:
            dre.retract_fact(self._handle, text)

    def _drain(self, offset: int) -> list[str]:
        names: list[str] = []
        result = dre.start_action_for_state(self._handle, offset)
        if result:
            names.extend(json.loads(result[1]))
            result = dre.complete_and_start_action(self._handle, offset)
            while result:  # an action left unfinished would lock the sid for a minute
                names.extend(json.loads(result))
                result = dre.complete_and_start_action(self._handle, offset)
        return names

    def _acquire(self) -> str | None:
        with self._lock:
            while not self._free and len(self._sids) >= MAX_SIDS and not self._closing:
                self._lock.wait()
            if self._closing:
                return None
            self._busy += 1
            if self._free:
                return self._free.pop()
            sid = f"s{len(self._sids)}"
            self._sids.append(sid)
            # Priming runs one action on the sid, so the engine initialises its state fully
            # (deleting a never-primed state frees an uninitialised pointer).
            code, offset = dre.assert_event(self._handle, json.dumps({"sid": sid, PRIME: 1}))
            if code == 0:
                self._drain(offset)
            return sid

    def _release(self, sid: str) -> None:
        with self._lock:
            self._busy -= 1
            self._free.append(sid)
            if self._closing and self._busy == 0:
                self._destroy()
            self._lock.notify()

    def _destroy(self) -> None:
        if self._handle is None:
            return
        for sid in self._sids:
            dre.delete_state(self._handle, sid)
        dre.delete_ruleset(self._handle)
        self._handle = None
        self._lock.notify_all()

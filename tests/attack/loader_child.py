"""A child process that runs `mpush rules check|test DIR` for each line of stdin under an address-space limit.

Run as `python -m tests.attack.loader_child LIMIT_BYTES`; it answers each request line `check DIR` with one
JSON line holding the exit status, what the command printed, and the traceback of anything that escaped it.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import traceback
from typing import Any


def run_command(command: str, directory: str) -> dict[str, Any]:
    """The real CLI entry point on `directory`, its output captured; an escaped exception is recorded."""
    from engine.cli import main

    out, err = io.StringIO(), io.StringIO()
    escaped = None
    status: int | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(["rules", command, directory])
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - anything escaping the CLI is the defect being looked for
            escaped = traceback.format_exc()
    return {"status": status, "out": out.getvalue(), "err": err.getvalue(), "escaped": escaped}


def insane_numbers(value: Any, where: str = "ruleset", seen: set[int] | None = None) -> list[str]:
    """Every number inside a loaded rule set that delivery could not use: not finite, or past int64."""
    import dataclasses
    import math

    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, bool):
        return []
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{where} = {value}"]
    if isinstance(value, int):
        return [] if -(2**63) <= value < 2**63 else [f"{where} = {value}"]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [p for f in dataclasses.fields(value) for p in insane_numbers(getattr(value, f.name), f"{where}.{f.name}", seen)]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in insane_numbers(v, f"{where}[{k!r}]", seen)]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in insane_numbers(v, f"{where}[{i}]", seen)]
    return []


def insane_delays(ruleset: Any) -> list[str]:
    """Retry and switch delays of every failure rule outside 0..MAX_DELAY, for every attempt it allows."""
    from engine.policy.schema import MAX_DELAY

    problems = []
    for kind, rules in ruleset._rules.items():
        for rule in rules:
            retry, switch = getattr(rule, "retry", None), getattr(rule, "switch", None)
            if retry is not None:
                for attempt in range(1, min(retry.max, 2000) + 2):
                    delay = retry.delay_for(attempt)
                    if not 0 <= delay <= MAX_DELAY:
                        problems.append(f"{kind} {rule.name}: retry delay {delay} at attempt {attempt}")
                        break
            if switch is not None and not 0 <= switch.delay <= MAX_DELAY:
                problems.append(f"{kind} {rule.name}: switch delay {switch.delay}")
    return problems


def sanity(directory: str) -> list[str]:
    """What a rule set that loaded holds that delivery could not use."""
    from engine.policy.loader import load_dir
    from providers import registry

    ruleset = load_dir(directory, env={}, provider_types=registry.config_schemas())
    rules = [ruleset.settings, ruleset.channels, ruleset.templates, ruleset.providers, ruleset._rules]
    return insane_numbers(rules) + insane_delays(ruleset)


def serve(limit: int) -> None:
    import engine.cli  # noqa: F401 - imported before the limit so the budget measures loading, not imports
    import providers.registry

    providers.registry.config_schemas()
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, _, directory = line.rstrip("\n").partition(" ")
        answer = run_command(command, directory)
        if answer["status"] == 0 and answer["escaped"] is None:
            try:
                answer["insane"] = sanity(directory)
            except BaseException:  # noqa: BLE001 - a check that passed but a load that fails is a finding too
                answer["escaped"] = traceback.format_exc()
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]))

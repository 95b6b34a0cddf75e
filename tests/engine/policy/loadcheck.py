"""Run the rule loader on one directory in a child process and report how it ended, how long and how much memory.

`python -m tests.engine.policy.loadcheck DIR` prints "ready" to stderr once imported, then one JSON line to stdout:
{"outcome": "loaded" | "refused" | "crashed", "lines": [...], "seconds": s, "max_rss": bytes}.
The fuzz tests start it under an address-space limit and a timeout, so a hang or a blow-up is seen, not suffered.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

from tests.engine.policy.rulekit import TYPES

from engine.policy import RuleError
from engine.policy.cases import load_cases
from engine.policy.loader import load_dir


def main(directory: str) -> None:
    print("ready", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        load_dir(directory, env={"HOME": "/root"}, provider_types=TYPES, backend="reference").close()
        load_cases(f"{directory}/tests")
        outcome, lines = "loaded", []
    except RuleError as exc:
        outcome, lines = "refused", str(exc).splitlines()
    except BaseException:  # what the tests exist to catch: report it rather than die with it
        outcome, lines = "crashed", traceback.format_exc().splitlines()
    seconds = time.perf_counter() - started
    max_rss = _peak_rss()
    print(json.dumps({"outcome": outcome, "lines": lines, "seconds": seconds, "max_rss": max_rss}))


def _peak_rss() -> int:
    """This process's own peak resident size (VmHWM; ru_maxrss would carry the parent's over fork and exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


if __name__ == "__main__":
    main(sys.argv[1])

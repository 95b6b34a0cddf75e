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


def serve(limit: int) -> None:
    import engine.cli  # noqa: F401 - imported before the limit so the budget measures loading, not imports
    import providers.registry

    providers.registry.config_schemas()
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, _, directory = line.rstrip("\n").partition(" ")
        print(json.dumps(run_command(command, directory)), flush=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]))

"""`mpush rules check | test | explain | diff | schema`: the production loader and evaluator, from a shell."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from engine.policy import RuleError, RuleSet, load_dir, load_git
from engine.policy.cases import (
    FactError,
    failure_summary,
    fact_from_mapping,
    load_cases,
    quota_summary,
    routing_summary,
    run_cases,
)
from engine.policy.decisions import SCENES
from engine.policy.schema import json_schema

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def add_parser(subparsers: Any) -> None:
    """Register `rules` and its subcommands on the `mpush` parser."""
    rules = subparsers.add_parser("rules", help="check, test, explain and diff rule files")
    commands = rules.add_subparsers(title="rules commands", metavar="ACTION", required=True)

    check = commands.add_parser("check", help="validate a rules directory and summarise it")
    check.add_argument("dir", nargs="?", help="rules directory (default MPUSH_RULES_DIR or rules)")
    check.set_defaults(func=cmd_check)

    test = commands.add_parser("test", help="run DIR/tests/*.yaml cases against the rules")
    test.add_argument("dir", nargs="?", help="rules directory (default MPUSH_RULES_DIR or rules)")
    test.set_defaults(func=cmd_test)

    explain = commands.add_parser("explain", help="show the decisions for one fact and why")
    explain.add_argument("fact", help='fact as JSON text or @file, e.g. \'{"channel": "verify-sms", "receiver": "13800138000"}\'')
    explain.add_argument("--rules", dest="dir", help="rules directory (default MPUSH_RULES_DIR or rules)")
    explain.add_argument("--scene", choices=SCENES, help="also decide this failure scene")
    explain.set_defaults(func=cmd_explain)

    diff = commands.add_parser("diff", help="replay facts through two rule versions and show what changed")
    diff.add_argument("old", help="directory or git:REV")
    diff.add_argument("new", help="directory or git:REV")
    diff.add_argument("--facts", required=True, type=Path, help="JSON lines, one fact per line (optional scene)")
    diff.add_argument("--dir", dest="subdir", default="rules", help="rules directory inside the repo for git:REV")
    diff.add_argument("--show", type=int, default=20, help="changed facts to print (default 20)")
    diff.set_defaults(func=cmd_diff)

    schema = commands.add_parser("schema", help="print the JSON Schema of rule files")
    schema.set_defaults(func=cmd_schema)


def cmd_check(args: argparse.Namespace) -> int:
    ruleset = _load(args.dir)
    if ruleset is None:
        return EXIT_FAILED
    print(summary(ruleset))
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    ruleset = _load(args.dir)
    if ruleset is None:
        return EXIT_FAILED
    try:
        cases = load_cases(_rules_dir(args.dir) / "tests")
    except RuleError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    mismatches = run_cases(ruleset, cases)
    for mismatch in mismatches:
        print(f"FAIL {mismatch}")
    failed = len({m.case.where for m in mismatches})
    print(f"{len(cases)} case(s), {len(cases) - failed} passed, {failed} failed (rule set {ruleset.version})")
    return EXIT_FAILED if mismatches or not cases else EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    ruleset = _load(args.dir)
    if ruleset is None:
        return EXIT_ERROR
    try:
        data = json.loads(_read_argument(args.fact))
        if not isinstance(data, dict):
            raise FactError("a fact is a JSON object")
        scene = args.scene or data.get("scene")
        if scene is not None and scene not in SCENES:
            raise FactError(f"scene must be one of {', '.join(SCENES)}")
        fact = fact_from_mapping(ruleset, data, datetime.now(UTC))
    except (OSError, ValueError) as exc:
        print(f"mpush rules explain: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(ruleset.explain(fact, scene))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """Replay every fact through both versions. A bad line is reported on one line and skipped (counted, exit 2);
    the changed facts past --show are counted."""
    env = _env()
    try:
        old, new = (_load_ref(ref, args.subdir, env) for ref in (args.old, args.new))
        lines = args.facts.read_text(encoding="utf-8").splitlines()
    except RuleError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"mpush rules diff: cannot read the facts: {exc.strerror or exc}: {args.facts}", file=sys.stderr)
        return EXIT_ERROR
    except BadRevision as exc:
        print(f"mpush rules diff: {exc}", file=sys.stderr)
        return EXIT_ERROR
    now = datetime.now(UTC)
    changes: Counter[tuple[str, str, str]] = Counter()
    total = bad = changed_facts = 0
    for number, data in _facts(lines, sys.stderr, str(args.facts)):
        where = f"{args.facts}:{number}"
        try:
            before, after = (_decide(ruleset, data, now, where) for ruleset in (old, new))
        except FactError as exc:
            bad += 1
            print(f"{exc} (line skipped)", file=sys.stderr)
            continue
        total += 1
        changed = [kind for kind in after if before[kind] != after[kind]]
        for kind in changed:
            changes[(kind, _rule_of(before[kind]), _rule_of(after[kind]))] += 1
        if changed:
            changed_facts += 1
            if changed_facts <= args.show:
                for kind in changed:
                    print(f"{where}: {kind}\n  old: {json.dumps(before[kind], ensure_ascii=False)}\n"
                          f"  new: {json.dumps(after[kind], ensure_ascii=False)}")
    if changed_facts > args.show:
        print(f"... and {changed_facts - args.show} more changed fact(s) not printed (--show {changed_facts} "
              "prints them all)")
    print(f"{total} fact(s) replayed: {old.version} -> {new.version}")
    for (kind, before_rule, after_rule), count in sorted(changes.items()):
        print(f"  {count:6d}  {kind}: {before_rule} -> {after_rule}")
    print(f"{sum(changes.values())} decision(s) changed" if changes else "no decision changed")
    if bad:
        print(f"{bad} bad line(s) in {args.facts} skipped", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_FAILED if changes else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


def summary(ruleset: RuleSet) -> str:
    """One screen about a loaded rule set."""
    notes = f", {len(ruleset.notes)} note(s)" if ruleset.notes else ""
    lines = [
        f"rule set {ruleset.version} OK ({ruleset.backend} backend, time zone {ruleset.timezone.key}{notes})",
        f"  channels   {len(ruleset.channels):4d}  " + ", ".join(f"{c.id}:{c.name}" for c in ruleset.channels.values()),
        f"  templates  {len(ruleset.templates):4d}  " + ", ".join(ruleset.templates),
        f"  providers  {len(ruleset.providers):4d}  enabled: " + ", ".join(ruleset.providers),
        f"  routing    {len(ruleset.rules('routing')):4d}  " + ", ".join(r.name for r in ruleset.rules("routing")),
        f"  quotas     {len(ruleset.rules('quotas')):4d}  " + ", ".join(r.name for r in ruleset.rules("quotas")),
    ]
    for scene in SCENES:
        rules = ruleset.rules(scene)
        lines.append(f"  {scene:17s}{len(rules):2d}  " + (", ".join(r.name for r in rules) or "(built-in default)"))
    lines += [f"note: {note}" for note in ruleset.notes]
    return "\n".join(lines)


class _NotJson(str):
    """A facts line that did not parse, carried to the replay loop to be reported and skipped there."""


def _decide(ruleset: RuleSet, data: Any, now: datetime, where: str) -> dict[str, Any]:
    if isinstance(data, _NotJson):
        raise FactError(str(data))
    if not isinstance(data, dict):
        raise FactError(f"{where}: a fact is a JSON object")
    try:
        fact = fact_from_mapping(ruleset, data, now)
    except FactError as exc:
        raise FactError(f"{where}: {exc}") from None
    out: dict[str, Any] = {"routing": routing_summary(ruleset.route(fact)), "quotas": quota_summary(ruleset.quotas(fact))}
    scene = data.get("scene")
    if scene is not None and scene not in SCENES:
        raise FactError(f"{where}: scene must be one of {', '.join(SCENES)}")
    if scene is not None:
        out[scene] = failure_summary(ruleset.on_failure(scene, fact))
    return out


def _rule_of(summary: Any) -> str:
    if isinstance(summary, list):
        return "+".join(item["rule"] for item in summary) or "(none)"
    return str(summary["rule"])


def _facts(lines: list[str], progress: TextIO, name: str) -> Iterator[tuple[int, Any]]:
    """(line number, fact) for every non-blank line; a progress bar on a terminal for large files."""
    bar = progress.isatty() and len(lines) >= 1000
    for number, line in enumerate(lines, 1):
        if bar and number % max(len(lines) // 50, 1) == 0:
            done = number * 40 // len(lines)
            progress.write(f"\r[{'#' * done}{'.' * (40 - done)}] {number}/{len(lines)}")
            progress.flush()
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            data = _NotJson(f"{name}:{number}: not JSON: {exc}")
        yield number, data
    if bar:
        progress.write("\n")


def _load_ref(ref: str, subdir: str, env: Mapping[str, str]) -> RuleSet:
    types = _provider_types()
    if ref.startswith("git:"):
        _check_revision(ref[4:])
        return load_git(Path.cwd(), ref[4:], subdir, env=env, provider_types=types, backend="reference")
    return load_dir(ref, env=env, provider_types=types, backend="reference")


class BadRevision(Exception):
    """A git:REV argument naming no commit."""


def _check_revision(rev: str) -> None:
    """BadRevision, on one clear line, when `rev` names no commit of the repository here."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], capture_output=True,
                           text=True, cwd=Path.cwd(), timeout=30)
    if found.returncode != 0:
        raise BadRevision(f"no commit {rev!r} in the git repository at {Path.cwd()} (give a branch, tag or commit "
                          "id; `git log --oneline` lists them)")


def _load(directory: str | None) -> RuleSet | None:
    try:
        return load_dir(_rules_dir(directory), env=_env(), provider_types=_provider_types())
    except RuleError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s)", file=sys.stderr)
        return None


def _rules_dir(directory: str | None) -> Path:
    if directory:
        return Path(directory)
    from engine.settings import Settings

    return Settings.from_env().rules_dir


def _env() -> Mapping[str, str]:
    from engine.settings import Settings

    return Settings.from_env().rule_env or {}


def _provider_types() -> Mapping[str, Any]:
    from providers import registry

    return registry.config_schemas()


def _read_argument(text: str) -> str:
    return Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text

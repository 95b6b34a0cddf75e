"""Read a rules directory (or a git revision of it) into a RuleSet, reporting every problem at once."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._yaml import Document, parse
from .building import Context, resolve_env
from .catalogue import ConfigSchema, build_channels, build_providers, build_settings, build_templates
from .compiler import EngineError, LimitError
from .issues import RuleError, RuleIssue
from .model import RuleSetVersion
from .policies import build_failures, build_quotas, build_routing, known_names
from .ruleset import RuleSet
from .schema import ITEMS, SECTIONS, Located

__all__ = ["RuleError", "RuleIssue", "load_dir", "load_git", "load_texts", "read_dir"]


def load_dir(
    path: str | Path, *, env: Mapping[str, str], provider_types: Mapping[str, ConfigSchema], backend: str = "network"
) -> RuleSet:
    """Load every *.yaml / *.yml file of a directory (not its tests/); raises RuleError."""
    files = read_dir(path)
    commit, dirty = git_state(Path(path))
    return load_texts(files, env=env, provider_types=provider_types, commit=commit, dirty=dirty, backend=backend)


def load_git(
    repo_dir: str | Path,
    rev: str,
    subdir: str,
    *,
    env: Mapping[str, str],
    provider_types: Mapping[str, ConfigSchema],
    backend: str = "network",
) -> RuleSet:
    """Load the rules directory `subdir` as of git revision `rev`; raises RuleError."""
    prefix = subdir.strip("/")
    commit = _git(repo_dir, "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    listing = _git(repo_dir, "ls-tree", "--name-only", commit, f"{prefix}/")
    files = {
        f"git:{rev}:{name}": _git(repo_dir, "show", f"{commit}:{name}")
        for name in sorted(listing.splitlines())
        if name.endswith((".yaml", ".yml"))
    }
    if not files:
        raise RuleError([RuleIssue(f"git:{rev}:{prefix}", 1, "", "no *.yaml rule files at this revision")])
    return load_texts(files, env=env, provider_types=provider_types, commit=commit, backend=backend)


def read_dir(path: str | Path) -> dict[str, str]:
    """File name -> text of the rule files of a directory, in name order."""
    root = Path(path)
    if not root.is_dir():
        raise RuleError([RuleIssue(str(root), 1, "", "not a directory")])
    names = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not names:
        raise RuleError([RuleIssue(str(root), 1, "", "no *.yaml rule files")])
    files: dict[str, str] = {}
    for file in names:
        try:
            files[str(file)] = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuleError([RuleIssue(str(file), 1, "", f"cannot read: {exc}")]) from None
    return files


def load_texts(
    files: Mapping[str, str],
    *,
    env: Mapping[str, str],
    provider_types: Mapping[str, ConfigSchema],
    commit: str = "",
    dirty: bool = False,
    backend: str = "network",
) -> RuleSet:
    """Load rule files given as name -> text; raises RuleError with every problem found."""
    ctx = Context(env=env)
    docs = _parse_all(files, ctx)
    _collect(docs, ctx)
    settings = build_settings(ctx)
    templates = build_templates(ctx)
    channels = build_channels(ctx, templates)
    accounts, disabled = build_providers(ctx, templates, provider_types)
    known = known_names(ctx, channels)
    routing = build_routing(ctx, known, accounts, disabled)
    quotas = build_quotas(ctx, known)
    failures = build_failures(ctx, known)
    if ctx.issues:
        raise RuleError(sorted(ctx.issues, key=lambda i: (i.file, i.line)))
    version = RuleSetVersion(_digest(docs, accounts), commit, dirty)
    try:
        return RuleSet(
            version=version,
            settings=settings,
            channels=channels,
            templates=templates,
            providers=accounts,
            routing=routing,
            quotas=quotas,
            failures=failures,
            notes=ctx.notes,
            backend=backend,
        )
    except LimitError as exc:
        origin = exc.origin
        raise RuleError([RuleIssue(origin.file, origin.line, origin.path, exc.message)]) from None
    except EngineError as exc:
        raise RuleError([RuleIssue(next(iter(files)), 1, "", str(exc))]) from None


def _parse_all(files: Mapping[str, str], ctx: Context) -> list[Document]:
    docs = []
    for name, text in files.items():
        doc, issues = parse(name, text)
        ctx.issues.extend(issues)
        if doc is not None:
            docs.append(doc)
    return docs


def _collect(docs: list[Document], ctx: Context) -> None:
    """Split documents into section items: env resolved (except provider accounts), shape checked."""
    for doc in docs:
        if not isinstance(doc.data, dict):
            ctx.issues.append(doc.issue((), f"a rule file must be a mapping of sections ({', '.join(SECTIONS)})"))
            continue
        for section, value in doc.data.items():
            if section not in SECTIONS:
                ctx.issues.append(doc.issue((section,), f"unknown section (sections: {', '.join(SECTIONS)})"))
                continue
            entries = [(-1, value)] if section == "settings" else _entries(doc, section, value, ctx)
            for index, entry in entries:
                _accept(Located(section, index, entry, doc), ctx)


def _entries(doc: Document, section: str, value: Any, ctx: Context) -> list[tuple[int, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        ctx.issues.append(doc.issue((section,), "must be a list"))
        return []
    return list(enumerate(value))


def _accept(item: Located, ctx: Context) -> None:
    if isinstance(item.value, dict) and isinstance(item.value.get("name"), str):
        ctx.declared.setdefault(item.section, set()).add(item.value["name"])
    if item.section != "providers":  # accounts resolve their ${ENV} only when enabled
        problems: list[tuple[Any, str]] = []
        item = Located(item.section, item.index, resolve_env(item.value, item.path, ctx.env, problems, set()), item.doc)
        if ctx.problems(item, problems):
            return
    if not ctx.problems(item, list(ITEMS[item.section].check(item.value, item.path))):
        ctx.items.setdefault(item.section, []).append(item)


def _digest(docs: list[Document], accounts: Mapping[str, Any]) -> str:
    """Short hash of the canonical content (before ${ENV}) and of which accounts are enabled."""
    content = {doc.file.rsplit("/", 1)[-1]: doc.data for doc in docs}
    canonical = json.dumps([content, sorted(accounts)], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def git_state(path: Path) -> tuple[str, bool]:
    """(commit, dirty) of the work tree holding `path`; ("", False) outside git."""
    try:
        commit = _git(path, "rev-parse", "--verify", "HEAD").strip()
        dirty = bool(_git(path, "status", "--porcelain", "--", ".").strip())
    except RuleError:
        return "", False
    return commit, dirty


def _git(repo_dir: str | Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuleError([RuleIssue(str(repo_dir), 1, "", f"git {args[0]} failed: {exc}")]) from None
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise RuleError([RuleIssue(str(repo_dir), 1, "", f"git {args[0]}: {message[0]}")])
    return done.stdout

"""Read a rules directory (or a git revision of it) into a RuleSet, reporting every problem at once."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._yaml import MAX_DIR_BYTES, MAX_FILE_BYTES, Document, decode, parse
from .building import Context, misplaced_env
from .catalogue import ConfigSchema, build_channels, build_providers, build_settings, build_templates
from .compiler import EngineError, LimitError
from .issues import RuleError, RuleIssue, suggest
from .model import RuleSetVersion
from .policies import build_failures, build_quotas, build_routing, known_names
from .ruleset import RuleSet
from .schema import ITEMS, SECTIONS, Located

__all__ = ["RuleError", "RuleIssue", "load_dir", "load_git", "load_texts", "read_dir"]


def load_dir(
    path: str | Path, *, env: Mapping[str, str], provider_types: Mapping[str, ConfigSchema], backend: str = "network"
) -> RuleSet:
    """Load every *.yaml / *.yml file of a directory (not its tests/); raises RuleError."""
    files, unreadable = read_dir(path)
    commit, dirty = git_state(Path(path))
    return load_texts(
        files, env=env, provider_types=provider_types, commit=commit, dirty=dirty, backend=backend, unreadable=unreadable
    )


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
    files: dict[str, str] = {}
    unreadable: list[RuleIssue] = []
    for name in sorted(listing.splitlines()):
        if name.endswith((".yaml", ".yml")):
            text, issues = decode(f"git:{rev}:{name}", _git_bytes(repo_dir, "show", f"{commit}:{name}"))
            unreadable += issues
            if text is not None:
                files[f"git:{rev}:{name}"] = text
    if not files and not unreadable:
        raise RuleError([RuleIssue(f"git:{rev}:{prefix}", 1, "", "no *.yaml rule files at this revision")])
    return load_texts(files, env=env, provider_types=provider_types, commit=commit, backend=backend, unreadable=unreadable)


def read_dir(path: str | Path) -> tuple[dict[str, str], list[RuleIssue]]:
    """File name -> text of the rule files of a directory, in name order, and the files that cannot be read."""
    root = Path(path)
    if not root.is_dir():
        raise RuleError([RuleIssue(str(root), 1, "", "not a directory")])
    files, issues = _read_settled(root)
    if not files and not issues:
        raise RuleError([RuleIssue(str(root), 1, "", "no *.yaml rule files")])
    return files, issues


SETTLE_SECONDS = 0.02
SETTLE_READS = 25


def _read_settled(root: Path) -> tuple[dict[str, str], list[RuleIssue]]:
    """`read_yaml_files` once two reads SETTLE_SECONDS apart agree. A file caught half-written (rewritten in
    place by an editor or a deploy while a reload reads it) is often valid YAML and a valid rule set, only
    shorter: without its routes or failure rules every message would fail until the next reload. (File
    times cannot tell: a truncation does not always move the modification time.)"""
    read = read_yaml_files(root)
    for _ in range(SETTLE_READS):
        time.sleep(SETTLE_SECONDS)
        again = read_yaml_files(root)
        if again == read:
            return read
        read = again
    raise RuleError([RuleIssue(str(root), 1, "", f"the rule files kept changing while read (for "
                                                  f"{SETTLE_READS * SETTLE_SECONDS:g} s): not loaded")])


def read_yaml_files(root: Path) -> tuple[dict[str, str], list[RuleIssue]]:
    """Every *.yaml / *.yml entry of `root`: its text, or an issue when it is not a readable UTF-8 regular file.

    Links are followed; a dangling link, a link loop, a directory, a FIFO or a device is reported,
    never skipped, and never opened in a way that could block. Hidden names (editors' lock files,
    `.#rules.yaml`) are not rule files.
    """
    files: dict[str, str] = {}
    issues: list[RuleIssue] = []
    total = 0
    for entry in sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")):
        if total > MAX_DIR_BYTES:
            issues.append(RuleIssue(str(entry), 1, "", f"not read: the directory holds more than {MAX_DIR_BYTES} bytes of rule files"))
            continue
        text, problems = _read_file(entry)
        issues += problems
        if text is not None and not text.strip():
            issues.append(RuleIssue(str(entry), 1, "", "the file is empty: refused, as a file caught being rewritten "
                                                     "in place reads (remove it, or give it a comment)"))
        elif text is not None:
            files[str(entry)] = text
            total += len(text)
    return files, issues


def _read_file(file: Path) -> tuple[str | None, list[RuleIssue]]:
    def problem(message: str) -> tuple[None, list[RuleIssue]]:
        return None, [RuleIssue(str(file), 1, "", message)]

    try:
        kind = file.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return problem("symbolic link loop")
        if file.is_symlink() and exc.errno == errno.ENOENT:
            return problem(f"dangling symbolic link (to {os.readlink(file)})")
        return problem(f"cannot read: {exc.strerror}")
    if stat.S_ISDIR(kind):
        return problem("is a directory, not a rule file")
    if not stat.S_ISREG(kind):
        return problem("is not a regular file (a FIFO, socket or device)")
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped since the stat above
                return problem("is not a regular file")
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return problem(f"cannot read: {exc.strerror}")
    return decode(str(file), data)


def load_texts(
    files: Mapping[str, str],
    *,
    env: Mapping[str, str],
    provider_types: Mapping[str, ConfigSchema],
    commit: str = "",
    dirty: bool = False,
    backend: str = "network",
    unreadable: Sequence[RuleIssue] = (),
) -> RuleSet:
    """Load rule files given as name -> text; raises RuleError with every problem found.

    `unreadable` are the issues of files that could not be read, reported with the others.
    """
    ctx = Context(env=env, issues=list(unreadable))
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
            disabled=disabled,
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
    """Split documents into section items, shape checked; `${NAME}` only where it may be (resolved later)."""
    for doc in docs:
        if not isinstance(doc.data, dict):
            ctx.issues.append(doc.issue((), f"a rule file must be a mapping of sections ({', '.join(SECTIONS)})"))
            continue
        for section, value in doc.data.items():
            if section not in SECTIONS:
                hint = suggest(section, SECTIONS)
                ctx.issues.append(doc.issue((section,), f"unknown section{hint} (sections: {', '.join(SECTIONS)})"))
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
    if ctx.problems(item, misplaced_env(item)):
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
    return _git_bytes(repo_dir, *args).decode("utf-8", errors="replace")


def _git_bytes(repo_dir: str | Path, *args: str) -> bytes:
    try:
        # no optional locks: the watcher's `git status` must never make an operator's own commit fail
        done = subprocess.run(["git", "--no-optional-locks", "-C", str(repo_dir), *args], capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuleError([RuleIssue(str(repo_dir), 1, "", f"git {args[0]} failed: {exc}")]) from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise RuleError([RuleIssue(str(repo_dir), 1, "", f"git {args[0]}: {message[0]}")])
    return done.stdout

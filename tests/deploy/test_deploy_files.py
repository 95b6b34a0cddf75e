"""The deployment guide and its files stay true: compose and systemd validated, every setting and command real."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.settings import Settings

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
GUIDE = ROOT / "docs" / "deploy.md"
SETTING_NAMES = {"MPUSH_" + f.name.upper() for f in fields(Settings) if f.name != "rule_env"} | {"MPUSH_CONFIG"}
MPUSH = Path(sys.executable).parent / "mpush"


def needed(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is needed to check the deployment files (.ci/run installs it)", pytrace=False)
    return path


def deploy_texts() -> dict[str, str]:
    files = [*DEPLOY.rglob("*"), GUIDE]
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in files if path.is_file()}


def test_the_compose_file_is_valid_compose() -> None:
    """docker-compose accepts deploy/compose.yaml as written, with the variables env.example names."""
    names = re.findall(r"^([A-Z_]+)=", (DEPLOY / "env.example").read_text(), re.M)
    env = {"PATH": "/usr/bin:/bin", **{name: "x" for name in names}}
    result = subprocess.run([needed("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr


def test_the_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about either unit, run against this checkout's mpush."""
    units = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        name = unit.name.replace("@.service", "@1.service")
        text = unit.read_text().replace("/opt/mpush/bin/mpush", str(MPUSH))
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    assert len(units) == 2
    result = subprocess.run([needed("systemd-analyze"), "verify", *units], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_every_mpush_variable_in_the_deployment_files_is_a_setting() -> None:
    """No file of deploy/ nor the guide names an MPUSH_ variable the gateway does not read."""
    used = {(name, file) for file, text in deploy_texts().items() for name in re.findall(r"\bMPUSH_[A-Z_]+", text)}
    assert sorted((name, file) for name, file in used if name not in SETTING_NAMES and name != "MPUSH_DOMAIN") == []


def test_the_guide_lists_every_setting() -> None:
    """Each setting the gateway reads has its row in the guide's settings table."""
    table = GUIDE.read_text(encoding="utf-8").split("## 4. Settings", 1)[1].split("\n## ", 1)[0]
    assert sorted(name for name in SETTING_NAMES - {"MPUSH_CONFIG"} if f"`{name}`" not in table) == []


def guide_shell_blocks() -> list[str]:
    """The text of each ```sh block of the guide."""
    return re.findall(r"```sh\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


def guide_commands() -> list[str]:
    """Every mpush command of the guide's shell blocks: the words after `mpush` (or a path ending in
    /bin/mpush) that names a command rather than a file, a database or a user."""
    commands = []
    for line in "\n".join(guide_shell_blocks()).splitlines():
        words = [word for word in re.split(r"[\s;']+", line.split(" #", 1)[0]) if word]
        for at, word in enumerate(words[:-1]):
            program = word.endswith("/bin/mpush") or (word == "mpush" and words[at - 1:at] != ["-u"])  # not sudo's user
            if program and re.fullmatch(r"[a-z]+", words[at + 1]):
                commands.append(" ".join(words[at + 1:]))
    return commands


@pytest.mark.parametrize("command", guide_commands())
def test_every_mpush_command_in_the_guide_parses(command: str) -> None:
    """The guide's mpush commands are ones the CLI takes, with the options it knows."""
    args = build_parser().parse_args(command.split())
    assert callable(args.func)


def test_the_guide_has_the_commands_an_operator_needs() -> None:
    """Migrate, purge, rekey and both ways to run appear, so the parse test above covers them."""
    found = {command.split()[0] for command in guide_commands()}
    assert {"migrate", "purge", "rekey", "apps"} <= found


def test_the_image_copies_what_exists_and_runs_a_real_command() -> None:
    """Every COPY source of the Dockerfile is in the repository, and its CMD is an mpush command."""
    text = (DEPLOY / "Dockerfile").read_text()
    sources = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY") and "--from" not in line]
    assert sources and all((ROOT / src).exists() for group in sources for src in group)
    cmd = re.search(r'^CMD \["mpush", (.+)\]$', text, re.M)
    assert cmd is not None
    build_parser().parse_args([part.strip().strip('"') for part in cmd.group(1).split(",")])

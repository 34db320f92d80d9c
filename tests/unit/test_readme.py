"""The README is what operators and CI follow: keep it true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from server.settings import SETTINGS_TABLE

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced_block_after(heading: str) -> list[str]:
    section = README.split(f"## {heading}\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, f"no sh block under '{heading}'"
    return [line for line in block[1].splitlines() if line.strip()]


def test_quick_start_is_two_commands_of_this_repository() -> None:
    commands = fenced_block_after("Quick start")
    assert commands == ["scripts/serve", "scripts/test"]
    for command in commands:
        script = ROOT / command
        assert script.is_file() and script.stat().st_mode & 0o111, command


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line for line in ci if line and not line.startswith(("#", "set ", "cd ", "rm "))]
    assert commands == [fenced_block_after("Quick start")[1]]


def test_installs_use_the_pinned_constraints() -> None:
    install = (ROOT / "scripts" / "install").read_text(encoding="utf-8")
    assert "-c constraints.txt" in install
    pins = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pinned = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() for line in pins if "==" in line}
    for package in ("litestar", "msgspec", "llama-cpp-python", "torch", "pytest"):
        assert package in pinned, package


def test_every_setting_is_documented() -> None:
    for env, key, _default in SETTINGS_TABLE:
        assert f"| `{env}` | `{key}` |" in README, env

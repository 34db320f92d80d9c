"""Which CPU kernels llama.cpp runs here, and loading them where the build leaves that to run time.

llama-cpp-python can be built two ways (see docs/inference.md, "Portable builds"):

- **native** (llama.cpp's default, ``GGML_NATIVE=ON``): one CPU backend compiled for
  the build host's CPU and linked into libggml. It is there as soon as the library
  is; on a CPU older than the build host it dies of SIGILL.
- **portable** (``GGML_NATIVE=OFF GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON``):
  one ``libggml-cpu-<variant>.so`` per micro-architecture level (x64, sse42,
  haswell, skylakex, icelake, zen4, sapphirerapids, ...), none of them linked.
  Until one is loaded no backend is registered and llama.cpp refuses every model
  ("no backends are loaded"). `load_cpu_backend` loads them with
  ``ggml_backend_load_all_from_path``, which asks each variant for its score on
  the running CPU and keeps the best.

ggml's default search path is the executable's directory (Python's ``bin/``) and the
working directory, neither of which holds the libraries, so the directory is passed
explicitly. llama-cpp-python 0.3.36 copies only the targets it names into
``llama_cpp/lib`` (``ggml-cpu``, not ``ggml-cpu-<variant>``); the variants land where
ggml's own install rule puts them, in the wheel's root ``bin/``, so in
``<site-packages>/bin``. That is searched after ``llama_cpp/lib`` (and ``lib/``).

A native build is left exactly as it was: nothing is loaded, only described.
`main` prints the description as JSON; `companion doctor` runs it in a child process,
so a build that cannot run on this CPU is reported (killed by SIGILL) instead of taking
the doctor with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inference.engines.exits import exit_text
from inference.errors import EngineUnavailable

VARIANT_PREFIX = "libggml-cpu-"
PROBE_TIMEOUT_S = 60.0
_CHILD = "from inference.engines.llamacpp.backends import main; main()"
_VERSIONED = re.compile(r"libggml\.so\.\d+|libggml\.\d+\.dylib")  # the names libllama links

_lock = threading.Lock()
_loaded: CpuBackend | None = None


@dataclass(frozen=True, slots=True)
class CpuBackend:
    """The CPU backend this process runs llama.cpp on."""

    build: str  # "portable" (variants loaded at run time), "native", or "unknown"
    variant: str | None  # the variant ggml chose, e.g. "zen4" (portable builds only)
    library: str | None  # the file the CPU kernels come from
    features: tuple[str, ...]  # what those kernels were compiled for (ggml's own list)
    variants: tuple[str, ...] = ()  # every variant the build carries (portable builds)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> CpuBackend:
        """Back from `dataclasses.asdict` through JSON (lists become tuples again)."""
        return cls(
            build=str(fields["build"]),
            variant=fields.get("variant"),
            library=fields.get("library"),
            features=tuple(fields.get("features", ())),
            variants=tuple(fields.get("variants", ())),
        )

    def describe(self) -> str:
        """One line for the log and `companion doctor`."""
        features = " ".join(self.features) or "no SIMD features reported"
        if self.build == "portable":
            return (
                f"{self.variant} (portable build, the best of {len(self.variants)} CPU"
                f" variants here; {features})"
            )
        if self.build == "native":
            return f"native build (compiled for the build host's CPU; {features})"
        return "not known (libggml's backend registry could not be read here)"


def load_cpu_backend() -> CpuBackend:
    """Load the CPU backend if the build leaves that to run time; say which one runs.

    Idempotent and thread-safe; the first call of a process does the work.
    Raises `EngineUnavailable` when a portable build finds no variant to load.
    """
    global _loaded
    with _lock:
        if _loaded is None:
            ggml = _open_ggml()
            _loaded = _load(ggml) if ggml is not None else CpuBackend("unknown", None, None, ())
        return _loaded


def library_dir() -> Path:
    """Where llama-cpp-python loads libllama and libggml from (its own rule)."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def variant_dir(lib_dir: Path) -> Path | None:
    """The directory holding this build's CPU variants, or None for a native build."""
    site = lib_dir.parent.parent
    for candidate in (lib_dir, site / "bin", site / "lib"):
        if any(candidate.glob(f"{VARIANT_PREFIX}*.so")):
            return candidate
    return None


def probe_cpu_backend(
    timeout_s: float = PROBE_TIMEOUT_S, command: Sequence[str] | None = None
) -> CpuBackend | str:
    """`load_cpu_backend` in a child process: the description, or how the child failed.

    ``command`` replaces the child's command line (tests: a child that dies).
    """
    try:
        done = subprocess.run(
            command or [sys.executable, "-c", _CHILD],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or [""]
        return f"{exit_text(done.returncode)} {last[0]}".strip()
    return CpuBackend.from_dict(json.loads(done.stdout))


def _open_ggml() -> _Ggml | None:
    """libggml's registry, or None where this layout is not one this module knows."""
    lib_dir = library_dir()
    path = _linked_libggml(lib_dir)
    if path is None:
        return None
    try:
        return _Ggml(lib_dir, path)
    except (OSError, AttributeError):  # not loadable, or a libggml without these functions
        return None


def _load(ggml: _Ggml) -> CpuBackend:
    if ggml.reg_count() > 0:  # linked in: a native build (or an older binding)
        return _describe(ggml, "native", ())
    where = variant_dir(ggml.lib_dir)
    if where is None:
        raise EngineUnavailable(
            f"this llama.cpp build loads its CPU backend at run time (GGML_BACKEND_DL),"
            f" but no {VARIANT_PREFIX}*.so was found in {ggml.lib_dir} or next to it"
        )
    variants = tuple(sorted(_variant_name(p) for p in where.glob(f"{VARIANT_PREFIX}*.so")))
    ggml.load_all_from_path(where)
    if ggml.cpu_reg() is None:
        raise EngineUnavailable(
            f"none of the {len(variants)} llama.cpp CPU variants in {where} loads on this CPU"
        )
    return _describe(ggml, "portable", variants)


def _describe(ggml: _Ggml, build: str, variants: tuple[str, ...]) -> CpuBackend:
    reg = ggml.cpu_reg()
    library = ggml.library_of(reg) if reg is not None else None
    variant = _variant_name(Path(library)) if library and build == "portable" else None
    features = ggml.features(reg) if reg is not None else ()
    return CpuBackend(build, variant, library, features, variants)


def _variant_name(path: Path) -> str:
    return path.name.removeprefix(VARIANT_PREFIX).removesuffix(".so")


class _DlInfo(ctypes.Structure):
    _fields_ = (
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    )


class _Feature(ctypes.Structure):
    _fields_ = (("name", ctypes.c_char_p), ("value", ctypes.c_char_p))


_GetFeatures = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)

# what ggml lists besides instruction sets: not worth a place in the log line
_NOT_ISA = frozenset({"OPENMP", "REPACK", "LLAMAFILE", "CPU_HBM", "ACCELERATE", "KLEIDIAI"})


class _Ggml:
    """The few registry functions of libggml that llama-cpp-python does not bind."""

    def __init__(self, lib_dir: Path, path: Path) -> None:
        self.lib_dir = lib_dir
        lib = ctypes.CDLL(str(path))
        lib.ggml_backend_reg_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_count.argtypes = []
        lib.ggml_backend_reg_by_name.restype = ctypes.c_void_p
        lib.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
        lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.ggml_backend_load_all_from_path.restype = None
        lib.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        self._lib = lib

    def reg_count(self) -> int:
        return int(self._lib.ggml_backend_reg_count())

    def load_all_from_path(self, directory: Path) -> None:
        self._lib.ggml_backend_load_all_from_path(os.fsencode(directory))

    def cpu_reg(self) -> int | None:
        reg: int | None = self._lib.ggml_backend_reg_by_name(b"CPU")
        return reg or None

    def features(self, reg: int) -> tuple[str, ...]:
        address = self._lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
        if not address:
            return ()
        table = _GetFeatures(address)(reg)
        names = []
        for i in range(64):  # ggml's list ends with a NULL name; 64 bounds a malformed one
            if not table[i].name:
                break
            name = table[i].name.decode()
            if name not in _NOT_ISA:
                names.append(name)
        return tuple(names)

    def library_of(self, reg: int) -> str | None:
        """The shared object the CPU backend's code lives in (dladdr on one of its functions)."""
        address = self._lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
        if not address:
            return None
        info = _DlInfo()
        try:
            found = _dladdr()(ctypes.c_void_p(address), ctypes.byref(info))
        except (OSError, AttributeError):  # no dladdr (Windows)
            return None
        if not found or not info.dli_fname:
            return None
        return str(Path(os.fsdecode(info.dli_fname)).resolve())


def _linked_libggml(lib_dir: Path) -> Path | None:
    """The libggml file libllama is linked against (``libggml.so.0``), loaded already.

    Wheels hold no symlinks: ``libggml.so`` and ``libggml.so.0`` are two copies, and
    opening the unversioned one would load a second libggml with a registry of its own,
    which llama.cpp never reads. The versioned name is the one libllama asked for
    (importing llama_cpp loaded it), so the loader hands back that same instance.
    """
    import llama_cpp  # noqa: F401  (loads libllama, and with it the libggml it uses)

    versioned = [p for p in lib_dir.glob("libggml.*") if _VERSIONED.fullmatch(p.name)]
    plain = [lib_dir / name for name in ("libggml.so", "libggml.dylib", "ggml.dll")]
    return next((p for p in (*sorted(versioned), *plain) if p.exists()), None)


def _dladdr() -> Any:
    try:
        dladdr = ctypes.CDLL(None).dladdr  # glibc 2.34+ and macOS: in the C library itself
    except AttributeError:
        dladdr = ctypes.CDLL("libdl.so.2").dladdr  # older glibc
    dladdr.restype = ctypes.c_int
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    return dladdr


def main() -> None:
    """Print `load_cpu_backend`'s answer as JSON (the child of `probe_cpu_backend`)."""
    print(json.dumps(asdict(load_cpu_backend())))

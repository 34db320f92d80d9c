#!/usr/bin/env bash
# Build llama.cpp's own C++ `llama-server` for side-by-side benchmarks
# (scripts/bench_engine.py --backend llama-server).
#
# The source is the llama.cpp copy vendored in the llama-cpp-python sdist, the
# same version our in-process engine links against, so both run identical
# kernels. CPU only, Release, no network at build or run time: no HTTPS/curl
# (the vendored version has dropped LLAMA_CURL; OpenSSL is switched off
# instead) and no web UI download.
#
# Usage: scripts/build_llama_server.sh      (from anywhere; outputs under build/)
# Env:   JOBS (default: nproc), PYTHON (default: .venv/bin/python, else python3)
#
# Idempotent: each step is skipped when its output already exists. Delete
# build/llama.cpp to reconfigure from scratch.

set -euo pipefail

VERSION=0.3.36
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SDIST_DIR="$ROOT/build/sdist"
SRC_DIR="$SDIST_DIR/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD_DIR="$ROOT/build/llama.cpp"
BINARY="$BUILD_DIR/bin/llama-server"
JOBS="${JOBS:-$(nproc)}"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

step() { printf '==> %s\n' "$*" >&2; }

fetch_sdist() {
    local archive="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
    if [[ -f "$archive" ]]; then
        step "sdist present: $archive"
        return
    fi
    step "downloading llama-cpp-python $VERSION sdist"
    mkdir -p "$SDIST_DIR"
    "$PYTHON" -m pip download --no-binary :all: --no-deps \
        "llama-cpp-python==$VERSION" -d "$SDIST_DIR"
}

extract_sdist() {
    if [[ -f "$SRC_DIR/CMakeLists.txt" ]]; then
        step "source present: $SRC_DIR"
        return
    fi
    step "extracting sdist"
    tar -xzf "$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz" -C "$SDIST_DIR"
}

configure() {
    if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then
        step "already configured: $BUILD_DIR"
        return
    fi
    step "configuring"
    # LLAMA_OPENSSL=OFF: no HTTPS model downloads (there is no network anyway).
    # LLAMA_USE_PREBUILT_UI=OFF: the build would otherwise fetch the web UI.
    cmake -S "$SRC_DIR" -B "$BUILD_DIR" \
        -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF
}

compile() {
    if [[ -x "$BINARY" ]]; then
        step "already built: $BINARY"
        return
    fi
    step "building llama-server with $JOBS jobs (several minutes on a small CPU)"
    cmake --build "$BUILD_DIR" --target llama-server -j "$JOBS"
}

fetch_sdist
extract_sdist
configure
compile
"$BINARY" --version >&2 || true
echo "$BINARY"

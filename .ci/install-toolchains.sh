#!/usr/bin/env bash
# Install the Debian packages the compile and runtime stages need:
#   g++ make                                       build the C runtime (runtime/c) for the host
#   gcc-aarch64-linux-gnu / g++-aarch64-linux-gnu  cross compiler + sysroot (/usr/aarch64-linux-gnu)
#                                                  used to link aarch64 TVM libraries and the C runtime
#   qemu-user-static                               runs the aarch64 artifacts here:
#                                                  qemu-aarch64-static -L /usr/aarch64-linux-gnu ./prog
#   clang-16 libclang-rt-16-dev (best effort)      libFuzzer + ASan/UBSan for tools/fuzz
#
# Building for aarch64 needs none of this after `pip install -e .` (zig cc from the ziglang wheel links when
# aarch64-linux-gnu-gcc is absent: ssmc/toolchain.py); running aarch64 code here does. Not installed here:
# nvcc (the CUDA 13 toolkit), which the jetson-orin target needs; .ci/run checks that it is on PATH.
#
# Idempotent: when every package is already installed it does nothing (no apt-get update).
# Run as root (CI) or with sudo available. Exit status is non-zero if installation fails.
set -euo pipefail

PACKAGES=(g++ make gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-toolchains: all present (${PACKAGES[*]})"
else
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo)
        else
            echo "install-toolchains: need root (or sudo) to install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    echo "install-toolchains: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Sanity checks: the tools compile/ and runtime/ call by name.
for tool in g++ make aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64-static; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install-toolchains: $tool not on PATH after installation" >&2
        exit 1
    fi
done
if [[ ! -d /usr/aarch64-linux-gnu/lib ]]; then
    echo "install-toolchains: aarch64 sysroot /usr/aarch64-linux-gnu/lib missing" >&2
    exit 1
fi
echo "install-toolchains: ok ($(aarch64-linux-gnu-gcc -dumpversion), $(qemu-aarch64-static --version | head -n1))"

# clang with libFuzzer and the sanitizer runtimes, for tools/fuzz (the slow fuzz test skips, saying so, without it).
# Best effort: Debian 12's clang-16 (what the fuzz figures in docs/security.md used), else the distribution's clang.
if ! command -v clang++-16 >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=(); [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && SUDO=(sudo)
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends clang-16 libclang-rt-16-dev \
        || { "${SUDO[@]}" apt-get update -q && "${SUDO[@]}" apt-get install -y -q --no-install-recommends clang-16 libclang-rt-16-dev; } \
        || "${SUDO[@]}" apt-get install -y -q --no-install-recommends clang \
        || echo "install-toolchains: no clang installed; the fuzz test will skip" >&2
fi

#!/usr/bin/env bash
# Build the libFuzzer harnesses (clang, -fsanitize=fuzzer,address,undefined) into OUT (default build/fuzz):
#   OUT/fuzz_manifest   manifest.json's text through libssmc's parser, schema and rules
#   OUT/fuzz_act        ssmc_act / ssmc_reset on a static artifact (SSMC_FUZZ_ARTIFACT)
# CLANG / CLANGXX override the compilers (default: clang or clang-NN on PATH). Debian: apt-get install clang.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-build/fuzz}
pick() { for c in "$@"; do command -v "$c" >/dev/null 2>&1 && { echo "$c"; return; }; done; }
CLANG=${CLANG:-$(pick clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14)}
CLANGXX=${CLANGXX:-$(pick clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14)}
if [[ -z "$CLANG" || -z "$CLANGXX" ]]; then
    echo "build.sh: no clang on PATH (Debian: apt-get install clang; .ci/install-toolchains.sh does it)" >&2
    exit 3
fi
mkdir -p "$OUT"
SAN="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
{ printf 'R"SSMC_SCHEMA('; cat runtime/c/manifest.schema.json; printf ')SSMC_SCHEMA"\n'; } > "$OUT/ssmc_schema.inc"
M=runtime/c/vendor/monocypher
"$CLANG" -std=c99 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -c -o "$OUT/monocypher.o" "$M/monocypher.c"
"$CLANG" -std=c99 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -I"$M" -c -o "$OUT/monocypher-ed25519.o" "$M/monocypher-ed25519.c"
for h in fuzz_manifest fuzz_act; do
    "$CLANGXX" -std=c++17 -O1 -g $SAN -Iruntime/c -I"$OUT" -o "$OUT/$h" "tools/fuzz/$h.cc" \
        "$OUT/monocypher.o" "$OUT/monocypher-ed25519.o" -ldl
done
echo "$OUT/fuzz_manifest $OUT/fuzz_act ($("$CLANGXX" --version | head -n1))"

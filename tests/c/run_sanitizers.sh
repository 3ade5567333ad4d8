#!/usr/bin/env bash
# Build tests/c/test_ring.c against csrc/ring.c three times, optimised as
# released (-O3, no sanitizer: what the tests' own checks catch), under
# AddressSanitizer + UndefinedBehaviorSanitizer and under ThreadSanitizer, and
# run all three.  Exits non-zero on any compiler warning, sanitizer report or
# test failure.
#
#   bash tests/c/run_sanitizers.sh            # from anywhere in the repo
#   CC=clang ITEMS_ASAN=200000 bash tests/c/run_sanitizers.sh
#
# ITEMS_PLAIN / ITEMS_ASAN / ITEMS_TSAN: items per producer thread in the MPMC
# test of each build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cc="${CC:-gcc}"
items_plain="${ITEMS_PLAIN:-1000000}"
items_asan="${ITEMS_ASAN:-500000}"
items_tsan="${ITEMS_TSAN:-150000}"
out="$(mktemp -d "${TMPDIR:-/tmp}/wm_sanitizers.XXXXXX")"
trap 'rm -rf "$out"' EXIT

sources=(-std=c11 -Wall -Wextra -Werror -g -I"$root/csrc" "$root/csrc/ring.c" "$here/test_ring.c" -pthread)
common=("${sources[@]}" -O1 -fno-omit-frame-pointer)

echo "== build: -O3, no sanitizer ($cc)"
"$cc" "${sources[@]}" -O3 -o "$out/test_ring_plain"
echo "== build: ASan + UBSan ($cc)"
"$cc" "${common[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all \
    -o "$out/test_ring_asan"
echo "== build: TSan ($cc)"
"$cc" "${common[@]}" -fsanitize=thread -o "$out/test_ring_tsan"

# TSan's shadow memory needs a fixed address-space layout; kernels with many
# mmap randomisation bits (6.5+ with vm.mmap_rnd_bits = 32) make it abort with
# "unexpected memory mapping".  Run without randomisation when we can.
norand=()
if command -v setarch >/dev/null 2>&1 && setarch "$(uname -m)" -R true 2>/dev/null; then
    norand=(setarch "$(uname -m)" -R)
fi

run() {
    local name="$1"; shift
    local t0=$EPOCHREALTIME
    echo "== run: $name"
    "$@"
    printf '== %s passed in %s s\n' "$name" "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}')"
}

export ASAN_OPTIONS="abort_on_error=0:halt_on_error=1:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"

run "-O3" "$out/test_ring_plain" "$items_plain"
run "ASan+UBSan" "$out/test_ring_asan" "$items_asan"
run "TSan" "${norand[@]}" "$out/test_ring_tsan" "$items_tsan"
echo "== sanitizers: all passed"

#!/usr/bin/env bash
# wemap's CUDA path end to end on a machine with an NVIDIA GPU, printed as one table.
#
#   bash bench/gpu_check.sh            # from the repository root: about 5 minutes on an H200
#   bash bench/gpu_check.sh --platform CPU --quick --no-install --python .venv/bin/python   # CPU dry run
#   bash bench/gpu_check.sh --dropin   # instead of the checks: bench/gpu_wepy_dropin.py at 100,000 atoms
#
# Without a network it installs the wheels in .whl/ (openmm, openmm_cuda_13, wepy and what they
# import) into /tmp/site, geomm from its sdist into /tmp/geomm (wepy's runner does not import it:
# a failure is tolerated) and wemap, built from this checkout, into /tmp/wemap; then runs
# bench/gpu_check.py (platform, one Context per worker, wemap's runner against wepy's at 100,000
# atoms). Every step is timed and bounded by `timeout`, all within --budget seconds (default 420);
# the table prints even when a step fails or runs out of time; the logs and the JSON go to $OUT
# when it is set. Exit code 0 when every check passed. --dropin runs bench/gpu_wepy_dropin.py (a
# wepy script with its imports switched to wemap, against wepy's runner; 5 cycles x 500 steps, or
# tiny with --quick) in place of the checks, and prints its table and the steps'.
set -u
cd "$(dirname "$0")/.." || exit 2

platform=CUDA quick="" dropin="" install=1 python=python3 budget=${GPU_CHECK_BUDGET:-420}
while [ $# -gt 0 ]; do
    case "$1" in
        --platform) platform=$2; shift 2 ;;
        --quick) quick=--quick; shift ;;
        --dropin) dropin=1; shift ;;
        --no-install) install=""; shift ;;
        --python) python=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
export PYTHONUNBUFFERED=1
work=${GPU_CHECK_DIR:-/tmp/wemap-gpu-check}
rm -rf "$work" && mkdir -p "$work" || exit 2
steps=$work/steps.tsv
: > "$steps"
deadline=$(( $(date +%s) + budget ))

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$steps"; }

# step NAME CAP_S TOLERATED COMMAND...: COMMAND under `timeout` (CAP_S, or less when the budget is
# short, keeping 40 s for the checks' table), its output in $work/NAME.log, a line in $steps.
step() {
    local name=$1 cap=$2 tolerated=$3 left limit t0 rc detail
    shift 3
    left=$(( deadline - $(date +%s) - 40 ))
    limit=$(( cap < left ? cap : left ))
    if [ "$limit" -lt 5 ]; then
        record "$name" 124 0 "not started: the time budget is spent"
        return 124
    fi
    echo "=== $name (at most $limit s)"
    t0=$(now)
    timeout --kill-after=10 "$limit" "$@" > "$work/$name.log" 2>&1
    rc=$?
    detail=""
    if [ "$rc" -ne 0 ]; then
        detail=$(tail -n 3 "$work/$name.log" | tr '\t\n' '  ' | cut -c1-300)
        [ -n "$tolerated" ] && detail="tolerated: $detail"
        echo "    $name: exit $rc: $detail"
    fi
    record "$name" "$rc" "$(elapsed "$t0" "$(now)")" "$detail"
    return "$rc"
}

if [ -n "$install" ]; then
    pip=("$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir)
    step wheels 150 "" "${pip[@]}" --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    # OpenMM's CUDA plugin needs libcufft and libnvrtc: from the system (ldconfig), else from the
    # nvidia-* wheels this Python already has (its RUNPATH looks beside /tmp/site, where they are not)
    if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.13 '; then
        libs=$("$python" - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    for pattern in ("libnvrtc.so.13*", "libcufft.so.12*"):
        for f in glob.glob(os.path.join(sp, "nvidia", "**", pattern), recursive=True):
            if os.path.dirname(f) not in dirs:
                dirs.append(os.path.dirname(f))
print(":".join(dirs))
PY
)
        if [ -n "$libs" ]; then
            export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
            record cuda-libs 0 0 "from this Python's nvidia wheels: $libs"
        else
            record cuda-libs 0 0 "libnvrtc.so.13 neither in ldconfig nor in this Python's nvidia wheels"
        fi
    fi
    # geomm builds beside wemap; wepy's runner does not import it
    geomm=$(ls .whl/geomm-*.tar.gz 2>/dev/null | head -n 1)
    if [ -n "$geomm" ]; then
        step geomm 100 tolerated "${pip[@]}" --no-build-isolation --target /tmp/geomm "$geomm" &
        geomm_pid=$!
    fi
    export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 4)}
    step wemap-build 240 "" "${pip[@]}" --no-build-isolation --target /tmp/wemap \
        -C build-dir=/tmp/wemap-build .
    [ -n "${geomm_pid:-}" ] && wait "$geomm_pid"
    export PYTHONPATH=/tmp/wemap:/tmp/geomm:$PYTHONPATH
fi
step import 60 "" "$python" -c "import openmm, wemap, wemap._ring, wemap.openmm; print(wemap.__file__, openmm.__version__)"

if [ -n "$dropin" ]; then
    args=(--platform "$platform" --atoms 100000 --cycles 5 --steps 500 --devices 0,0)
    [ -n "$quick" ] && args+=(--atoms 900 --cycles 2 --steps 20)
    case "$platform" in CPU|Reference) args+=(--worker cpu) ;; esac
    case "$platform" in CUDA|OpenCL|HIP) step gpu 30 tolerated nvidia-smi \
        --query-gpu=index,name,driver_version,compute_mode,memory.total --format=csv,noheader ;; esac
    step dropin 300 "" "$python" bench/gpu_wepy_dropin.py "${args[@]}" --out "$work"
    rc=$?
    cat "$work/gpu.log" "$work/dropin.log" 2>/dev/null | grep -v -e 'Warning' -e 'warn('
    "$python" bench/gpu_check.py --report --platform "$platform" --out "$work" --steps "$steps" || rc=1
    echo "logs: $work"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp "$work/gpu-wepy-dropin.json" "$work/dropin.log" "$OUT/" 2>/dev/null
        tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$work" . 2>/dev/null
    fi
    exit "$rc"
fi

# the checks print the table themselves (with the steps above); if they are killed, the JSON they
# wrote so far is printed instead
left=$(( deadline - $(date +%s) ))
[ "$left" -lt 20 ] && left=20
echo "=== checks (at most $left s)"
timeout --kill-after=10 "$left" "$python" bench/gpu_check.py --platform "$platform" $quick --out "$work" \
    --steps "$steps" --deadline "$deadline" > "$work/check.log" 2>&1
rc=$?
if grep -q '^wemap GPU check:' "$work/check.log"; then
    sed -n '/^wemap GPU check:/,$p' "$work/check.log"
else
    tail -n 20 "$work/check.log"
    echo "(the checks ended with exit $rc before their table: what they recorded)"
    "$python" bench/gpu_check.py --report --platform "$platform" --out "$work" --steps "$steps"
    [ "$rc" -eq 0 ] && rc=1
fi
echo "logs: $work"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$work/gpu_check.json" "$work/check.log" "$OUT/" 2>/dev/null
    cp "$work"/gpu-check-bench.json "$OUT/" 2>/dev/null
    tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$work" . 2>/dev/null
fi
exit "$rc"

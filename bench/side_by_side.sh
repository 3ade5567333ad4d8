#!/usr/bin/env bash
# Two commits side by side, in turns, on one machine: each cloned and installed with
# pip install '.[bench]' in a venv of its own, then per round, for each commit in turn, the transport
# matrix at 8 walkers x 1M atoms (no-op, new arrays, WE loop), the per-task cost at 10,000 and 1,000
# atoms (each commit's bench/per_task.py) and CPU per task (this tree's bench/cpu_per_task.py).
#
#   bash bench/side_by_side.sh BEFORE AFTER [ROUNDS] [WORKDIR]
#
# ROUNDS defaults to 3, WORKDIR to a fresh temporary folder (kept, with each round's JSON in out/).
# ATOMS="1000" leaves out the 10,000-atom run; SKIP_MATRIX=1 the matrix (for extra per-task rounds).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,10p' "$0"; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${3:-3}
work=${4:-$(mktemp -d -t wemap-ab-XXXX)}
mkdir -p "$work/out"
revs=("$1" "$2")
for rev in "${revs[@]}"; do
  if [ ! -x "$work/v-$rev/bin/python" ]; then
    git clone -q "$here" "$work/s-$rev" && git -C "$work/s-$rev" checkout -q "$rev"
    python3 -m venv "$work/v-$rev"
    (cd "$work/s-$rev" && "$work/v-$rev/bin/pip" install -q '.[bench]')
  fi
done
for round in $(seq 1 "$rounds"); do
  for rev in "${revs[@]}"; do
    py="$work/v-$rev/bin/python"
    cd "$work/s-$rev"
    echo "### round $round: $rev $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    if [ -z "${SKIP_MATRIX:-}" ]; then
      "$py" -m wemap.benchmarks --atoms 1M --walkers 8 --workers 2 --workload noop fresh loop \
        --mappers SharedMemWorkerMapper --no-openmm --repeats 10 --no-plot --no-progress \
        --out "$work/out" --name "ab-$rev-$round" 2>&1 | grep -E "SharedMemWorkerMapper \|"
    fi
    for atoms in ${ATOMS:-10000 1000}; do
      "$py" bench/per_task.py --atoms "$atoms" --walkers 8 --workers 2 --cycles 150 \
        --out "$work/out/pt-$rev-$atoms-$round.json" 2>&1 | grep -E "\| alone" | sed "s/^/$atoms atoms: /"
    done
    "$py" "$here/bench/cpu_per_task.py" --atoms 1000 --seconds 3 | sed "s/^/cpu: /"
  done
done
echo "results in $work/out"

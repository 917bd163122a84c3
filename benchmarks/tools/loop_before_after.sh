#!/usr/bin/env bash
# The loop's speed on `tiny` with two trees of mixerlab on one GPU, in one call (a before/after that compares):
#   bash benchmarks/tools/loop_before_after.sh BEFORE_SRC LABEL_BEFORE LABEL_AFTER [ITERATIONS]
# BEFORE_SRC is the `src` folder of the older tree (e.g. `git archive REV src | tar -x -C bench_before`); the
# working tree is the after. Writes benchmarks/results/loop_speed.{json,md} and each run's database and log
# under ${OUT:-/tmp/loop_runs}.
set -euo pipefail
before_src=$1; label_before=$2; label_after=$3; iterations=${4:-6}
out=${OUT:-/tmp/loop_runs}; mkdir -p "$out"
device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
command="mixerlab discover --device cuda --profile tiny --proposer catalog --iterations $iterations --promote-to none --proposals-ahead 1"
base_path=${PYTHONPATH:-}
for side in before after; do
  if [ "$side" = before ]; then src=$before_src; label=$label_before; else src=$PWD/src; label=$label_after; fi
  run=$(mktemp -d)
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 > "$out/util_$side.txt" &
  sampler=$!
  PYTHONPATH="$src:$base_path" python3 -m mixerlab.cli discover --device cuda --profile tiny --proposer catalog \
    --iterations "$iterations" --promote-to none --proposals-ahead 1 --run-dir "$run" > "$out/discover_$side.log" 2>&1
  kill $sampler
  cp "$run/mixerlab.db" "$out/loop_$side.db"
  python3 benchmarks/speed/loop_speed.py --label "$label" --db "$run/mixerlab.db" --util "$out/util_$side.txt" \
    --device "$device" --command "$command" > /dev/null
  python3 -c "import json,sys; r=json.load(open('benchmarks/results/loop_speed.json'))[sys.argv[1]]; print(sys.argv[1], r['seconds_per_candidate'], 's/candidate', r['stage_seconds_mean'], r['check_seconds_mean'])" "$label"
done
cp benchmarks/results/loop_speed.json benchmarks/results/loop_speed.md "$out/"

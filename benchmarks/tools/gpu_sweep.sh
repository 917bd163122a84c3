#!/usr/bin/env bash
# Continue the baselines' `full` sweep on a GPU machine reached by short commands (a lent or remote GPU):
# the sweep runs detached in the background, and each call returns the results so far.
#
#   bash benchmarks/tools/gpu_sweep.sh wheels         # here, once: wheels of what the GPU image lacks -> .whl/
#   bash benchmarks/tools/gpu_sweep.sh cycle SECONDS [JOB...]
#                                               # there, every call: start the sweep unless it runs, then poll
#   bash benchmarks/tools/gpu_sweep.sh start [JOB...] # there: start (or find running) the sweep; JOB = mixer:task[:flags]
#                                               # flags comma-separated, e.g. delta_net:memorize:--init-seed=run;
#                                               # mixer variant/NAME: a probe from benchmarks/probes/gdn_variants.py
#   bash benchmarks/tools/gpu_sweep.sh poll SECONDS   # there: wait, copy results to $OUT, return within ~SECONDS
#   bash benchmarks/tools/gpu_sweep.sh home DIR       # here: merge DIR's results into the committed file, DIR -> .carry
#
# Every finished training is written to the cache the moment it finishes, and unfinished groups are
# checkpointed every 60 s: `start` on a fresh machine imports the committed results (and
# .carry/results.jsonl.gz and .carry/checkpoints/*.pt, what earlier polls brought back, if carried) and
# continues. A lent machine goes back after ~30 s idle, so a `poll` in the next call usually finds a fresh
# machine: `cycle` (start, then poll) is the command for every call. A lent GPU returns at most 8 files of
# 16 MiB, 64 MiB in all, and carries 64 MiB, so `poll` packs
# the unfinished trainings member by member (`mixerlab cache pack-checkpoints`) into CHECKPOINT_BYTES
# (default 44 MB), most-trained first; those that do not fit start over on the next machine. Groups are capped at
# MAX_GROUP trainings (default 6, ~40 MB of state) so that a whole group's checkpoint fits. `home DIR` puts the
# returned checkpoints/*.pt into .carry/checkpoints/, replacing the previous poll's; `poll` first asks the running eval
# for a fresh checkpoint (SIGUSR1) and waits up to SAVE_WAIT seconds for it. PROFILE and DEVICE (default full,
# cuda) are settings. `home DIR` also merges DIR/results.jsonl.gz into
# benchmarks/results/cache/gpu_results.jsonl.gz (COMMITTED) and prints where the sweeps of HOME_MIXERS (default the
# two baselines; HOME_MIXERS="delta_net gated_delta_net gdn_no_gate" adds the probe being swept) stand and what
# .carry's checkpoints hold (`mixerlab cache info --checkpoints --mixer`); then `python benchmarks/reproduction/baselines.py` and
# commit it.
# Run `home` after every call, before the next, also when sending calls back to back: a warm machine keeps its sweep
# running, but one that went cold in between starts from .carry, and a stale .carry repeats the last call's work.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${SWEEP_DIR:-/tmp/mixerlab-sweep}
CACHE=$WORK/cache.sqlite
OUT=${OUT:-$WORK/out}
PROFILE=${PROFILE:-full}
DEVICE=${DEVICE:-cuda}
CHECKPOINT_BYTES=${CHECKPOINT_BYTES:-44000000}
MAX_GROUP=${MAX_GROUP:-6}
SAVE_WAIT=${SAVE_WAIT:-45}  # seconds `poll` waits for the fresh checkpoint it asks for (a compile can take ~50)
# `poll SECONDS` stops waiting this much before SECONDS, for the checkpoint, the export and the packing: measured
# up to ~20 s for those two, plus SAVE_WAIT (a `poll 540` that waited the full 540 s overran a 600 s call limit)
POLL_RESERVE=${POLL_RESERVE:-$(( SAVE_WAIT + 30 ))}
# The two baselines' `full` sweeps are complete (DeltaNet's in the twenty-fourth session, Gated DeltaNet's in the
# thirty-third), 792 trainings. What is left is `full` Fuzzy Recall of the gate-off probe: on the baseline setting it
# scores 0.5775 where Gated DeltaNet scores 0.1698, and it leads on all four training-set sizes too (docs/reproduction.md); does it reach the seed row? The settings up to 256 tokens run in groups of 6, as Gated
# DeltaNet's ran (six vocabulary trainings were packed into the thirty-third session's .carry); the 512- and 1,024-token
# ones run in pairs, about 1.0 and 1.9 s per member-epoch, so 400 and 750 s a pair. .carry is not committed and a new
# checkout may not keep it (the twenty-eighth and thirty-fifth sessions' did not, the others since did), so a group
# should finish inside one session's device time.
DEFAULT_JOBS="variant/gdn_no_gate:fuzzy_recall:--max-seq-len=256 variant/gdn_no_gate:fuzzy_recall:--max-group-members=2"
COMMITTED=${COMMITTED:-benchmarks/results/cache/gpu_results.jsonl.gz}
HOME_MIXERS=${HOME_MIXERS:-delta_net gated_delta_net}  # whose standing `home` prints (`cache info --mixer`; all: " ")
CARRY=${CARRY:-.carry}

python_env() {
    # the modules the GPU image lacks, from the carried .whl (benchmarks/tools/gpu_env.sh), once per machine
    if [ -d .whl ] && [ ! -d "$WORK/site" ]; then source benchmarks/tools/gpu_env.sh install "$WORK/site"; fi
    export PYTHONPATH="$WORK/site:$PWD/src" PYTHONUNBUFFERED=1
}

start_sweep() {  # JOB...: start the sweep in the background unless it runs
    mkdir -p "$WORK"
    python_env
    if pgrep -f "mixerlab-sweep-runner" >/dev/null; then echo "sweep already running"; tail -n 3 "$WORK/log"; return 0; fi
    if [ ! -f "$CACHE" ]; then
        python3 -m mixerlab.cli cache import "$COMMITTED" --cache "$CACHE"
        if [ -f "$CARRY/results.jsonl.gz" ]; then python3 -m mixerlab.cli cache import "$CARRY/results.jsonl.gz" --cache "$CACHE"; fi
        if compgen -G "$CARRY/checkpoints/*.pt" >/dev/null; then  # each file resumes its trainings
            mkdir -p "$CACHE.checkpoints"; cp "$CARRY"/checkpoints/*.pt "$CACHE.checkpoints/"
        fi
    fi
    python3 benchmarks/probes/gdn_variants.py "$WORK/variants" >/dev/null
    jobs="${*:-$DEFAULT_JOBS}"
    # the runner's name is in its command line, so a second `start` finds it
    compile=""; [ "$DEVICE" = cuda ] && compile="--compile"
    # every GPU of the host: one worker each (`eval --devices all`, evaluate/devices.py)
    where="--device $DEVICE"
    if [ "$DEVICE" = cuda ] && [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" -gt 1 ]; then where="--devices all"; fi
    setsid nohup bash -c '
        for job in $1; do
            IFS=: read -r mixer task extra <<< "$job"
            [[ $mixer == variant/* ]] && mixer="$7/${mixer#variant/}.py"
            # the job'"'"'s own flags come last, so that they win (e.g. --max-group-members=2 for long groups)
            python3 -m mixerlab.cli eval --mixer "$mixer" --profile "$3" --tasks "$task" $4 $5 \
                --cache "$2" --checkpoint-every 60 --max-group-members "$6" ${extra//,/ } || echo "FAILED $job"
        done; echo SWEEP-DONE' mixerlab-sweep-runner "$jobs" "$CACHE" "$PROFILE" "$where" "$compile" "$MAX_GROUP" "$WORK/variants" \
        > "$WORK/log" 2>&1 < /dev/null &
    sleep 5; tail -n 5 "$WORK/log"
}

poll_sweep() {  # SECONDS: wait for the sweep, then copy its results and checkpoints to $OUT
    # a fresh machine (the lent one went cold between calls) has no sweep: say what to do before waiting or
    # creating $OUT (an empty cache made here would make the next `start` skip importing the committed results)
    if [ ! -f "$CACHE" ]; then echo "no sweep on this machine (it is fresh): run start first, or cycle SECONDS, which starts it"; exit 1; fi
    python_env
    deadline=$(( $(date +%s) + ${1:-500} - POLL_RESERVE ))
    while [ "$(date +%s)" -lt "$deadline" ] && pgrep -f "mixerlab-sweep-runner" >/dev/null; do sleep 10; done
    # SIGUSR1 makes the eval checkpoint its group at the next sync point: the packed state is seconds old, not
    # up to --checkpoint-every, and a group that has not saved yet is not lost (SIGTERM would save and stop)
    asked=""
    for pid in $(pgrep -f '^python3 -m mixerlab.cli eval' || true); do
        # only once its handler is in (SigCgt mask 0x200, signal 10): SIGUSR1 kills a process still importing
        mask=$(awk '/^SigCgt:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        if (( 0x${mask:-0} & 0x200 )) && kill -USR1 "$pid" 2>/dev/null; then asked=$(date +%s); fi
    done
    if [ -n "$asked" ]; then
        for _ in $(seq "$SAVE_WAIT"); do
            [ -n "$(find "$CACHE.checkpoints" -name '*.pt' -newermt "@$asked" 2>/dev/null | head -n 1)" ] && break
            sleep 1
        done
    fi
    mkdir -p "$OUT"
    python3 -m mixerlab.cli cache export "$OUT/results.jsonl.gz" --cache "$CACHE"
    rm -rf "$OUT/checkpoints"
    python3 -m mixerlab.cli cache pack-checkpoints "$OUT/checkpoints" --cache "$CACHE" \
        --max-file-bytes 16000000 --max-total-bytes "$CHECKPOINT_BYTES"
    grep -a -E "trainings|FAILED|SWEEP-DONE|Error" "$WORK/log" | tail -n 20 || true
    tail -c 1500 "$WORK/log"
}

bring_home() {  # DIR: what a poll returned -> the committed results file and .carry/ for the next call
    local dir=$1
    if [ -z "$dir" ] || [ ! -f "$dir/results.jsonl.gz" ]; then
        echo "no results.jsonl.gz in '${dir}': pass the folder a poll returned (e.g. the device tool's files_at)"; exit 2
    fi
    local py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
    local merged; merged=$(mktemp -d)
    if [ -f "$COMMITTED" ]; then "$py" -m mixerlab.cli cache import "$COMMITTED" --cache "$merged/cache.sqlite"; fi
    "$py" -m mixerlab.cli cache import "$dir/results.jsonl.gz" --cache "$merged/cache.sqlite"
    mkdir -p "$(dirname "$COMMITTED")"
    "$py" -m mixerlab.cli cache export "$COMMITTED" --cache "$merged/cache.sqlite"
    rm -rf "$CARRY/checkpoints"; mkdir -p "$CARRY/checkpoints"
    if [[ $CARRY != /* ]] && [ -d .git/info ]; then  # a folder in the checkout travels with it, never committed
        grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    fi
    cp -f "$dir/results.jsonl.gz" "$CARRY/results.jsonl.gz"; chmod u+w "$CARRY/results.jsonl.gz"
    if compgen -G "$dir/checkpoints/*.pt" >/dev/null; then cp "$dir"/checkpoints/*.pt "$CARRY/checkpoints/"; fi
    # where every sweep of HOME_MIXERS stands and what the carried checkpoints hold (trainings, epochs, score so
    # far); the probes' one-setting sweeps would only add empty tables
    local only=() name
    for name in $HOME_MIXERS; do only+=(--mixer "$name"); done
    COLUMNS=${COLUMNS:-160} "$py" -m mixerlab.cli cache info --cache "$merged/cache.sqlite" --profile "$PROFILE" \
        --checkpoints "$CARRY/checkpoints" "${only[@]}"
    rm -rf "$merged"
    echo "$CARRY: results and $(find "$CARRY/checkpoints" -name '*.pt' | wc -l) checkpoint file(s) for the next call (carry it)"
}

case "${1:-}" in
wheels) bash benchmarks/tools/gpu_env.sh wheels ;;  # here, once: what the GPU image lacks -> .whl/
start) shift; start_sweep "$@" ;;
poll) poll_sweep "${2:-500}" ;;
cycle)  # SECONDS counts from here: the start's imports and the poll share it
    began=$(date +%s); seconds=${2:-500}; shift $(( $# < 2 ? $# : 2 ))
    start_sweep "$@"
    poll_sweep $(( seconds - ($(date +%s) - began) )) ;;
home) bring_home "${2:-}" ;;
*)
    sed -n 2,26p "$0"; exit 2 ;;
esac

#!/bin/sh
# Chaos soak of the training loop. One training run of a tiny model (Fashion-MNIST, the flags
# of tests/cli_faults.sh) is interrupted again and again at seeded random points: SIGKILL,
# SIGTERM, SIGINT, a file-size limit hit while a checkpoint is written, and (between runs) a
# bit flipped in the newest intact checkpoint. Each time it is resumed from its folder with the
# same command, until its planned updates are done. Then:
#   - the final parameters and optimizer state equal an uninterrupted run's, bit for bit;
#   - no run loaded a damaged file: each run's "resuming FILE" line names the newest
#     checkpoint the soak knows to be intact, and each damaged newer one has its "skipping"
#     line;
#   - the same under `mpirun -np 2` with one rank killed at a time (the job ends with mpirun's
#     message, and the resume is exact); skipped with a line when mpirun or MPI is missing.
# usage: sh tests/soak.sh    (tests/cli_soak.sh runs a short one as part of the suite)
#   SOAK_FAULTS=N (default 10)  faults injected into the one-process run
#   SOAK_MPI_FAULTS=M (2)       ranks killed in the 2-rank run (0: skip that part)
#   SOAK_SEED=S (1)             the seed of every random choice
#   SOAK_KEEP=DIR               keep the folders and logs there instead of a temp folder
. "$(dirname "$0")/lib.sh"
[ -n "$SOAK_KEEP" ] && { mkdir -p "$SOAK_KEEP" && tmp=$SOAK_KEEP; }
FAULTS=${SOAK_FAULTS:-10}
MPI_FAULTS=${SOAK_MPI_FAULTS:-2}
rng=${SOAK_SEED:-1}
CK=ViT-Ti_4-ckpt
[ -d "$FM" ] || { echo "soak: skipped (no Fashion-MNIST at $FM)"; finish soak; exit; }

rand() {  # rand N: R in 0..N-1 (a 31-bit LCG, exact in the shell's 64-bit arithmetic)
    rng=$(((rng * 1103515245 + 12345) % 2147483648))
    R=$((rng / 65536 % $1))
}
msleep() { sleep "$(($1 / 1000)).$(printf %03d $(($1 % 1000)))"; }

# Checkpoints newest first, in vit's order (modification time, then name, both descending).
by_age() { find "$1" -maxdepth 1 -name "*-ckpt-*.safetensors" -printf '%T@ %p\n' 2>/dev/null | sort -k1,1gr -k2,2r | cut -d' ' -f2-; }
damaged() { [ -f "$1" ] && grep -qxF "$(cksum <"$1") $1" "$tmp/damaged"; }  # still holds the bytes we broke
newest_good() {
    for f in $(by_age "$1"); do damaged "$f" || { echo "$f"; return; }; done
}
good_count() {
    n=0
    for f in $(by_age "$1"); do damaged "$f" || n=$((n + 1)); done
    echo $n
}
: >"$tmp/damaged"

# corrupt DIR: one seeded bit of the newest intact checkpoint flipped in place (a quarter of
# the time inside the header), remembered by its damaged content.
corrupt() {
    f=$(newest_good "$1")
    rand 32768; r1=$R; rand 32768
    where=$(python3 - "$f" $((r1 * 32768 + R)) <<'PY'
import os, struct, sys
path, r = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(path)
with open(path, "r+b") as f:
    head = 8 + struct.unpack("<Q", f.read(8))[0]
    off = r % head if r % 4 == 0 else head + r % (size - head)
    f.seek(off)
    b = f.read(1)[0] ^ (1 << (r // 4 % 8))
    f.seek(off)
    f.write(bytes([b]))
print(f"byte {off} ({'header' if off < head else 'data'})")
PY
    ) || return 1
    echo "$(cksum <"$f") $f" >>"$tmp/damaged"
    echo "  corrupted $(basename "$f") at $where" >>"$tmp/soak.log"
}

# check_load ERR ORDER_FILE: the run loaded the first intact file of ORDER_FILE (the folder
# before the run, newest first, "D " marking damaged files) and named every damaged one before it.
bad_loads=0
check_load() {
    loaded=$(sed -n 's/^resuming \(.*\): epoch [0-9]*, step .*/\1/p' "$1" | head -1)
    [ -n "$loaded" ] || return 0  # stopped before it loaded anything
    want=$(sed -n 's/^ok //p' "$2" | head -1)
    ok=1
    [ "$loaded" = "$want" ] || ok=0
    for f in $(sed -n '/^ok /q; s/^D //p' "$2"); do
        grep -qF "skipping a checkpoint that does not verify: $f: " "$1" || ok=0
    done
    n_skip=$(grep -c "^skipping a checkpoint" "$1")
    [ "$n_skip" = "$(sed -n '/^ok /q; /^D /p' "$2" | wc -l)" ] || ok=0
    if [ $ok = 0 ]; then
        bad_loads=$((bad_loads + 1))
        echo "FAIL a run loaded $loaded, expected $want (the newest intact one); its skip lines:"
        grep "^skipping" "$1" | sed 's/^/    /'
    fi
}
snapshot() {  # snapshot DIR > ORDER_FILE
    for f in $(by_age "$1"); do if damaged "$f"; then echo "D $f"; else echo "ok $f"; fi; done
}

# ---------------------------------------------------------------------------------------
# One process
# ---------------------------------------------------------------------------------------
UPDATES=$((40 * FAULTS + 100))
EPOCHS=$(((UPDATES + 39) / 40))
RUN="--run_name . --from_scratch --dataset_dir $FM --model ViT-Ti_4 --hidden_size 32 --num_layers 2 --num_heads 2 --mlp_dim 64
     --dropout 0.1 --optimizer adamw --initial_lr 1e-3 --warmup_steps 5 --epochs $EPOCHS --steps_per_epoch 80
     --grad_accum_steps 2 --validation_steps 2 --seed 5 --threads 1 --batch_size 16 --json --log_dir=
     --checkpoint_every_steps 1 --keep_checkpoints 3"
dir=$tmp/soak
mkdir -p "$dir"
ms() { echo $(($(date +%s%N) / 1000000)); }
t0=$(ms)
"$VIT" train $RUN --epochs 1 --steps_per_epoch 2 --save_dir= >/dev/null 2>&1
t1=$(ms)
"$VIT" train $RUN --save_dir "$tmp/ref" >"$tmp/ref.json" 2>"$tmp/ref.err"
check "uninterrupted reference run ($EPOCHS epochs, $((EPOCHS * 40)) updates)" $?
t2=$(ms)
# Most signals wait for the run's first update of its own (its first new checkpoint), then a
# uniform 0..WINDOW ms, about 20 updates on average: a slow start-up cannot stretch a run, so
# the planned faults fit in the run with room to spare. A quarter land during start-up.
STARTUP=$((t1 - t0))
PER_UPDATE=$(((t2 - t1 - STARTUP) / (EPOCHS * 40)))
[ $PER_UPDATE -ge 1 ] || PER_UPDATE=1
WINDOW=$((40 * PER_UPDATE))
updates_of() {  # updates_of FILE: the updates a checkpoint holds, from its name (40 an epoch)
    case $1 in
    *-ckpt-step-*) echo "$1" | sed 's/.*-ckpt-step-0*\([0-9][0-9]*\)\.safetensors$/\1/' ;;
    *-ckpt-final.safetensors) echo $UPDATES ;;
    *-ckpt-*) echo $(($(echo "$1" | sed 's/.*-ckpt-0*\([0-9][0-9]*\)\.safetensors$/\1/') * 40)) ;;
    *) echo 0 ;;
    esac
}

# The command every run uses; while the folder holds no checkpoint it starts afresh.
cmd() {
    if [ -n "$(by_age "$dir")" ]; then echo "$RUN --save_dir $dir --resume_from_checkpoint_path $dir"
    else echo "$RUN --save_dir $dir"; fi
}
kills=0 terms=0 ints=0 fsizes=0 corrupts=0 mid_write=0 early=0 unexpected=0 runs=0
faults() { echo $((kills + terms + ints + fsizes + corrupts)); }
: >"$tmp/soak.log"
while [ ! -f "$dir/$CK-final.safetensors" ]; do
    runs=$((runs + 1))
    if [ $runs -gt $((4 * FAULTS + 20)) ]; then
        echo "FAIL no end after $runs runs"
        unexpected=$((unexpected + 1))
        break
    fi
    kind=finish
    if [ "$(faults)" -lt "$FAULTS" ]; then
        # The first four runs take each kind once (in a seeded order), later ones any; a quarter
        # of the runs (and the first chance) also find their newest checkpoint corrupted.
        if [ $runs = 1 ]; then rand 4; first=$R; fi
        if [ $runs -le 4 ]; then R=$(((first + runs) % 4)); else rand 4; fi
        kind=$(echo "kill term int fsize" | cut -d' ' -f$((R + 1)))
        rand 4
        if { [ $R = 0 ] || [ $corrupts = 0 ]; } && [ "$(good_count "$dir")" -ge 2 ]; then
            corrupt "$dir" && corrupts=$((corrupts + 1))
        fi
    fi
    snapshot "$dir" >"$tmp/order"
    c=$(cmd)
    tmps=$(ls "$dir" | grep -c '\.tmp\.')
    before=$(by_age "$dir" | head -1)
    case $kind in
    finish)
        "$VIT" train $c >"$tmp/run.json" 2>"$tmp/run.err"
        rc=$?
        [ $rc = 0 ] || { echo "FAIL the last run exits $rc"; tail -3 "$tmp/run.err"; unexpected=$((unexpected + 1)); }
        ;;
    fsize)
        # Below one checkpoint's size (512- or 1024-byte blocks), so the first write fails at a
        # random point; the output goes through a pipe, which the limit does not cover.
        rand 200
        (trap '' XFSZ; ulimit -f $((R + 1)); "$VIT" train $c 2>&1; echo "exit $?") | cat >"$tmp/run.err"
        rc=$(sed -n 's/^exit //p' "$tmp/run.err")
        rc=${rc:-999}
        if [ "$rc" -ge 1 ] && [ "$rc" -lt 128 ] && grep -q "^vit train: .*$CK-.*File too large" "$tmp/run.err" &&
            [ "$(ls "$dir" | grep -c '\.tmp\.')" = "$tmps" ]; then
            fsizes=$((fsizes + 1))
        else
            echo "FAIL a write past the size limit: exit $rc, no one-line error or a temporary file left"
            tail -3 "$tmp/run.err" | sed 's/^/    /'
            unexpected=$((unexpected + 1))
        fi
        ;;
    *)
        sig=$(echo "$kind" | sed 's/kill/KILL/; s/term/TERM/; s/int/INT/')
        env --default-signal=INT "$VIT" train $c >"$tmp/run.json" 2>"$tmp/run.err" &
        pid=$!
        rand 4
        if [ $R = 0 ]; then
            rand $((2 * STARTUP + 1))  # before the handler is installed, while loading, ...
        else
            w=0
            while [ $w -lt 3000 ] && [ "$(by_age "$dir" | head -1)" = "$before" ] && kill -0 $pid 2>/dev/null; do
                sleep 0.01
                w=$((w + 1))
            done
            rand $((WINDOW + 1))
        fi
        msleep "$R"
        if kill -"$sig" $pid 2>/dev/null; then delivered=1; else delivered=0; fi
        wait $pid 2>/dev/null  # (dash reports "Killed" otherwise)
        rc=$?
        # A stop signal ends a run cleanly with a checkpoint and the command that continues it,
        # or (before the handler is installed) kills it.
        stopped=0
        grep -q "to continue:" "$tmp/run.err" && stopped=1
        case $kind:$rc:$stopped in
        kill:137:*) kills=$((kills + 1)) ;;
        term:0:1 | term:143:*) terms=$((terms + 1)) ;;
        int:0:1 | int:130:*) ints=$((ints + 1)) ;;
        *:0:*) [ $delivered = 0 ] || echo "  $kind landed as the run ended" >>"$tmp/soak.log" ;;
        *)
            echo "FAIL SIG$sig after $R ms: exit $rc"
            tail -3 "$tmp/run.err" | sed 's/^/    /'
            unexpected=$((unexpected + 1))
            ;;
        esac
        [ $kind = kill ] && [ "$(ls "$dir" | grep -c '\.tmp\.')" -gt "$tmps" ] && mid_write=$((mid_write + 1))
        # A run that went much further than planned (the machine sped up): a narrower window.
        after=$(by_age "$dir" | head -1)
        [ "$after" = "$before" ] && early=$((early + 1))
        if [ $(($(updates_of "$after") - $(updates_of "$before"))) -gt 60 ] && [ $WINDOW -gt 20 ]; then
            WINDOW=$((WINDOW / 2))
        fi
        ;;
    esac
    check_load "$tmp/run.err" "$tmp/order"
    echo "run $runs: $kind, exit $rc, $(grep -c '^skipping' "$tmp/run.err") skipped," \
        "$(sed -n 's/^resuming .*: \(epoch .*\)/from \1/p' "$tmp/run.err" | head -1)" >>"$tmp/soak.log"
done
python3 tools/compare_checkpoints.py "$tmp/ref/$CK-final.safetensors" "$dir/$CK-final.safetensors" >"$tmp/cmp" 2>&1
check "after $(faults) faults in $runs runs the final state equals the uninterrupted run's ($(tail -1 "$tmp/cmp"))" $?
grep FAIL "$tmp/cmp" | head -3
a=$(json_field "$tmp/ref.json" val_loss)
b=$(json_field "$tmp/run.json" val_loss)
[ -n "$a" ] && [ "$a" = "$b" ]
check "the same final validation loss ($a vs $b)" $?
[ $unexpected = 0 ]
check "every run ended as its fault says ($unexpected did not)" $?
[ $bad_loads = 0 ]
check "no run loaded a damaged checkpoint, each skipped one was named ($bad_loads runs failed that)" $?
[ "$(faults)" -ge "$FAULTS" ] && [ $kills -ge 1 ] && [ $terms -ge 1 ] && [ $ints -ge 1 ] && [ $fsizes -ge 1 ] &&
    [ $corrupts -ge 1 ]
check "$FAULTS faults of every kind were injected" $?
echo "soak: $(faults) faults survived in $runs runs: $kills SIGKILL ($mid_write during a checkpoint write)," \
    "$terms SIGTERM, $ints SIGINT, $fsizes file-size limit, $corrupts corrupted checkpoints;" \
    "$early runs stopped before their first update (start-up ${STARTUP} ms, ${PER_UPDATE} ms an update)"

# ---------------------------------------------------------------------------------------
# Two ranks under mpirun, one of them killed
# ---------------------------------------------------------------------------------------
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # CI runs as root
export OMPI_MCA_btl_vader_single_copy_mechanism=none             # containers forbid CMA
MPIRUN="mpirun --oversubscribe -np 2"
if [ "$MPI_FAULTS" -le 0 ]; then
    echo "soak: the mpirun part skipped (SOAK_MPI_FAULTS=0)"
elif ! command -v mpirun >/dev/null 2>&1 || "$VIT" train --distributed --model nonsense 2>&1 | grep -q "built without MPI"; then
    echo "soak: the mpirun part skipped (vit built without MPI, or mpirun missing)"
else
    MRUN=$(echo "$RUN" | sed "s/--epochs $EPOCHS/--epochs $((5 * MPI_FAULTS + 5))/") # 40 updates an epoch
    MRUN="$MRUN --distributed"
    mdir=$tmp/msoak
    mkdir -p "$mdir"
    timeout 600 $MPIRUN "$VIT" train $MRUN --save_dir "$tmp/mref" >"$tmp/mref.json" 2>"$tmp/mref.err"
    check "2 ranks: uninterrupted reference run" $?
    mkills=0 mcorrupts=0 mbad=0 bad_loads=0
    i=0
    while [ $i -lt "$MPI_FAULTS" ]; do
        i=$((i + 1))
        if [ $((i % 2)) = 0 ] && [ "$(good_count "$mdir")" -ge 2 ]; then corrupt "$mdir" && mcorrupts=$((mcorrupts + 1)); fi
        snapshot "$mdir" >"$tmp/order"
        resume=
        [ -n "$(by_age "$mdir")" ] && resume="--resume_from_checkpoint_path $mdir"
        before=$(by_age "$mdir" | head -1)
        $MPIRUN "$VIT" train $MRUN --save_dir "$mdir" $resume >"$tmp/mrun.json" 2>"$tmp/mrun.err" &
        mp=$!
        # Once the run has written a checkpoint of its own, a random rank at a random moment.
        w=0
        while [ $w -lt 1200 ] && [ "$(by_age "$mdir" | head -1)" = "$before" ] && kill -0 $mp 2>/dev/null; do
            sleep 0.05
            w=$((w + 1))
        done
        rand 400
        msleep "$R"
        rand 2
        victim=$(ps -o pid= --ppid $mp | sed -n "$((R + 1))p")
        [ -n "$victim" ] && kill -KILL $victim
        w=0
        while [ $w -lt 1200 ] && kill -0 $mp 2>/dev/null; do
            sleep 0.05
            w=$((w + 1))
        done
        kill -0 $mp 2>/dev/null && { kill -KILL $mp; echo "FAIL mpirun still running 60 s after a rank was killed"; }
        wait $mp 2>/dev/null
        rc=$?
        if [ -n "$victim" ] && [ $rc != 0 ] && grep -q "exited on signal 9" "$tmp/mrun.err"; then
            mkills=$((mkills + 1))
        else
            mbad=$((mbad + 1))
            echo "FAIL 2 ranks, rank process $victim killed: mpirun exit $rc without its message"
            tail -3 "$tmp/mrun.err" | sed 's/^/    /'
        fi
        check_load "$tmp/mrun.err" "$tmp/order"
    done
    snapshot "$mdir" >"$tmp/order"
    timeout 600 $MPIRUN "$VIT" train $MRUN --save_dir "$mdir" --resume_from_checkpoint_path "$mdir" \
        >"$tmp/mrun.json" 2>"$tmp/mrun.err"
    check "2 ranks: the resumed run finishes" $?
    check_load "$tmp/mrun.err" "$tmp/order"
    [ $mbad = 0 ] && [ $mkills = "$MPI_FAULTS" ]
    check "2 ranks: each of $MPI_FAULTS rank kills ended the job with mpirun's message ($mkills did)" $?
    python3 tools/compare_checkpoints.py "$tmp/mref/$CK-final.safetensors" "$mdir/$CK-final.safetensors" >"$tmp/cmp" 2>&1
    check "2 ranks: after $mkills rank kills and $mcorrupts corrupted checkpoints the final state equals the uninterrupted run's ($(tail -1 "$tmp/cmp"))" $?
    grep FAIL "$tmp/cmp" | head -3
    [ $bad_loads = 0 ]
    check "2 ranks: no run loaded a damaged checkpoint" $?
    echo "soak: 2 ranks survived $mkills rank kills and $mcorrupts corrupted checkpoints"
fi
[ -n "$SOAK_KEEP" ] && trap - EXIT
finish soak

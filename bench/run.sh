#!/usr/bin/env bash
# The benchmark: pullthrough (S3 store) against CNCF distribution 2.8 in proxy mode (S3 storage
# driver), side by side in one run, on the same upstream (distribution 2.8, filesystem), the same
# S3-compatible server (s3s-fs) and the same fixtures (tests/e2e/make_fixtures.py, plus a 1 GiB
# single-layer image from bench/make_huge.py). Everything on 127.0.0.1. See bench/README.md.
# pullthrough runs with its default settings (cold blobs streamed from a spill file while the S3
# upload runs behind) except for the stages labelled otherwise: "pt-redirect" ([s3]
# stream_misses = false), "pt-fs" (the filesystem store) and the MALLOC_MMAP_THRESHOLD_ run.
#
#   bash bench/run.sh            # from the repository root, as root on Debian 12
#
# Environment:
#   BENCH_REPS=3                 cold repetitions, each on a fresh store (medians are reported)
#   BENCH_WARM_REPS=5            warm repetitions (median)
#   BENCH_REQUESTS=5000          manifest GETs per latency run (by tag, by digest)
#   BENCH_CONCURRENCY=16         concurrent manifest GETs
#   BENCH_HUGE_MIB=1024          size of the big-blob fixture (peak RSS while filling it)
#   BENCH_READERS=8              concurrent GETs of the big blob for the peak-RSS-under-readers row
#   BENCH_MAX_SECONDS=1500       the whole run is stopped after this (a watchdog)
#   BENCH_KEEP=1                 keep the work directory (every log)
#   BENCH_TMPDIR=/var/tmp        where the work directory is made
#   BENCH_REPORT=bench/last-run.md  where the report (markdown) is written (also printed)
#   CARGO_TARGET_DIR             as for cargo
#
# Not part of CI: the numbers are printed and written to BENCH_REPORT; a missed target is
# reported, never an exit status. The exit status is non-zero only if the run itself failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD
E2E_DIR=$REPO_ROOT/tests/e2e
BENCH_DIR=$REPO_ROOT/bench
REPS=${BENCH_REPS:-3}
WARM_REPS=${BENCH_WARM_REPS:-5}
REQUESTS=${BENCH_REQUESTS:-5000}
CONCURRENCY=${BENCH_CONCURRENCY:-16}
HUGE_MIB=${BENCH_HUGE_MIB:-1024}
READERS=${BENCH_READERS:-8}
MAX_SECONDS=${BENCH_MAX_SECONDS:-1500}
KEEP=${BENCH_KEEP:-0}
REPORT=${BENCH_REPORT:-$BENCH_DIR/last-run.md}
CLIENT_TIMEOUT=600 # one skopeo copy
STARTED_AT=$SECONDS
STARTED_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')

log() { echo "-- [$((SECONDS - STARTED_AT))s] $*"; }
# shellcheck source=tests/e2e/lib.sh
source "$E2E_DIR/lib.sh"

# write_report [NOTE]: the markdown report of $WORK/res (bench/report.py) to BENCH_REPORT and stdout.
write_report() {
    {
        echo "# pullthrough benchmark"
        echo
        [[ -z ${1:-} ]] || { echo "**$1**"; echo; }
        echo "- date: $STARTED_DATE; took $((SECONDS - STARTED_AT)) s"
        echo "- command: \`bash bench/run.sh\` (BENCH_REPS=$REPS BENCH_WARM_REPS=$WARM_REPS BENCH_REQUESTS=$REQUESTS BENCH_CONCURRENCY=$CONCURRENCY BENCH_HUGE_MIB=$HUGE_MIB BENCH_READERS=$READERS)"
        echo "- commit: $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_ROOT" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
        echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(free -h | awk '/^Mem:/ {print $2}') memory ($(free -h | awk '/^Mem:/ {print $7}') available); $(uname -sr)"
        echo "- versions: pullthrough $(git -C "$REPO_ROOT" describe --always 2>/dev/null), $(docker-registry --version 2>/dev/null | awk '{print $2, $3}'), s3s-fs $S3FS_VERSION, skopeo $(skopeo --version 2>/dev/null | awk '{print $3}')"
        echo
        python3 "$BENCH_DIR/report.py" "$WORK/res" --huge-mib "$HUGE_MIB" --requests "$REQUESTS" \
            --concurrency "$CONCURRENCY" --readers "$READERS"
    } >"$WORK/report.md"
    cp "$WORK/report.md" "$REPORT"
    cat "$WORK/report.md"
    log "report written to $REPORT"
}

WORK=""
WATCHDOG=""
POLICY_RC_GUARD=0
VLC_EXISTED=1
[[ -e /var/lib/containers ]] || VLC_EXISTED=0
STAGE=start

teardown() {
    [[ -z $WATCHDOG ]] || { kill "$WATCHDOG" 2>/dev/null || true; wait "$WATCHDOG" 2>/dev/null || true; }
    WATCHDOG=""
    stop_all
    [[ $POLICY_RC_GUARD == 0 ]] || rm -f /usr/sbin/policy-rc.d
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    if [[ $VLC_EXISTED == 0 && -d /var/lib/containers ]]; then rm -rf /var/lib/containers || true; fi
    return 0
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if ((rc != 0)); then
        echo "bench: FAILED during: $STAGE (exit status $rc)" >&2
        # What was measured before the failure (or the watchdog) is still reported, marked partial.
        if [[ $STAGE != report && -n $WORK && -d $WORK/res ]] && [[ -n $(ls -A "$WORK/res") ]]; then
            [[ -z $WATCHDOG ]] || { kill "$WATCHDOG" 2>/dev/null || true; wait "$WATCHDOG" 2>/dev/null || true; }
            WATCHDOG=""
            stop_all
            write_report "PARTIAL: stopped during \"$STAGE\" (exit status $rc); missing figures are n/a" || true
        fi
    fi
    teardown
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

WORK=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/pullthrough-bench.XXXXXX")
mkdir -p "$WORK/res" "$WORK/out"
RES=$WORK/res # one file per figure: $RES/<proxy>.<name>
log "work directory $WORK"
# The watchdog: the whole run is bounded; the TERM runs the EXIT trap (everything stopped).
# Its own sleep is stopped with it (a TERM to the subshell alone would leave the sleep behind).
(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$MAX_SECONDS" &
    sp=$!
    wait "$sp"
    echo "bench: stopped after ${MAX_SECONDS}s (BENCH_MAX_SECONDS)" >&2
    kill -TERM $$
    # bash runs the TERM trap only once its foreground command has ended: stop the script's own
    # children and their children (by parent PID: a client, the load generator, the `timeout`
    # of a client in a command substitution) so that it does at once, not after up to
    # CLIENT_TIMEOUT. The servers among them are stopped anyway by the EXIT trap.
    for c in $(pgrep -P $$ || true); do pkill -TERM -P "$c" 2>/dev/null || true; done
    pkill -TERM -P $$ 2>/dev/null || true
) &
WATCHDOG=$!

# ---------------------------------------------------------------------------------------------
# Packages, builds, s3s-fs, fixtures
# ---------------------------------------------------------------------------------------------
STAGE="packages"
missing=()
for p in docker-registry skopeo curl python3; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then # apt must not start a registry service on :5000
        POLICY_RC_GUARD=1
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1 || {
        apt-get update -q >>"$WORK/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$WORK/apt.log" 2>&1
    }
fi

STAGE="cargo build --release (pullthrough, examples/manifest_load)"
log "$STAGE"
if ! cargo build --release --bin pullthrough --example manifest_load >"$WORK/cargo-build.log" 2>&1; then
    tail -n 30 "$WORK/cargo-build.log" >&2
    false
fi
TARGET=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
BIN=$TARGET/release/pullthrough
LOAD=$TARGET/release/examples/manifest_load

STAGE="s3s-fs"
ensure_s3s_fs "$TARGET/s3s-fs-install" >"$WORK/s3s-fs-install.log" 2>&1 || {
    tail -n 20 "$WORK/s3s-fs-install.log" >&2
    false
}

STAGE="fixtures"
log "fixtures (tests/e2e/make_fixtures.py, bench/make_huge.py $HUGE_MIB MiB)"
python3 "$E2E_DIR/make_fixtures.py" "$WORK/fixtures"
# shellcheck disable=SC1091
source "$WORK/fixtures/fixtures.env"
python3 "$BENCH_DIR/make_huge.py" "$WORK/huge" "$HUGE_MIB" >"$WORK/huge.env"
# shellcheck disable=SC1091
source "$WORK/huge.env"
HUGE_REPO=e2e/huge

# ---------------------------------------------------------------------------------------------
# Upstream, S3 server
# ---------------------------------------------------------------------------------------------
STAGE="upstream registry and s3s-fs"
read -r P_UP P_S3 P_PT P_DIST < <(free_ports 4)
UP=127.0.0.1:$P_UP
UP_LOG=$WORK/upstream.log
S3_LOG=$WORK/s3s-fs.log
touch "$UP_LOG" "$S3_LOG"
registry_config "$WORK/upstream.yml" "$P_UP" "$WORK/upstream-data"
start_bg "upstream registry on $UP" "$UP_LOG" docker-registry serve "$WORK/upstream.yml"
wait_http "http://$UP/v2/" "$LAST_PID" "upstream registry"

# One "resolved route, op: <Op>" line per S3 request (s3s's debug log): the store request counts.
S3FS_RUST_LOG="s3s::ops=debug,s3s::ops::signature=info,s3s_fs=info" \
    start_s3s_fs "$WORK/s3" "$P_S3" "$S3_LOG"
DIST_BUCKET=dst # pullthrough uses $S3_BUCKET; short names (3 to 63 characters): s3s-fs 0.14 limits key length
mkdir -p "$WORK/s3/$DIST_BUCKET"
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_REGION=$S3_REGION
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3

echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$WORK/policy.json"
sk() { timeout "$CLIENT_TIMEOUT" skopeo --policy "$WORK/policy.json" "$@"; }

STAGE="pushing fixtures to the upstream"
log "$STAGE"
sk copy -q --preserve-digests --dest-tls-verify=false "oci:$MANYLAYERS_PATH:$MANYLAYERS_REF" "docker://$UP/$MANYLAYERS_REPO:$MANYLAYERS_TAG"
sk copy -q --preserve-digests --dest-tls-verify=false "oci:$BIG_PATH:$BIG_REF" "docker://$UP/$BIG_REPO:$BIG_TAG"
sk copy -q --preserve-digests --dest-tls-verify=false "oci:$HUGE_PATH:v1" "docker://$UP/$HUGE_REPO:v1"
rm -rf "$WORK/huge" # 1 GiB less on disk; the upstream has it

# ---------------------------------------------------------------------------------------------
# The two proxies. Each run gets a fresh store (a new key prefix / root directory) and process.
# ---------------------------------------------------------------------------------------------
RUN_N=0

# pt_start: a fresh pullthrough process on a fresh store. Default: the S3 store
# (s3://$S3_BUCKET/p<N>) with the default [s3] settings plus PT_S3_EXTRA (lines for [s3]), and the
# spill directory in the work directory (its default is the system's temporary directory: a
# location, not a setting that changes what is measured; default max_size). PT_STORE=fs: the
# filesystem store in a new directory $WORK/fs<N> (it spills into that directory). PT_ENV: extra
# environment (the allocator experiment below).
pt_start() {
    RUN_N=$((RUN_N + 1))
    PROXY=127.0.0.1:$P_PT
    PROXY_LOG=$WORK/pullthrough.log
    local store="s3://$S3_BUCKET/p$RUN_N"
    cat >"$WORK/pullthrough.toml" <<EOF
default_upstream = "docker.io"
tag_ttl = "10m"

[[upstream]]
alias = "docker.io"
url = "http://$UP"
insecure = true
EOF
    if [[ ${PT_STORE:-s3} == fs ]]; then
        store=$WORK/fs$RUN_N
    else
        cat >>"$WORK/pullthrough.toml" <<EOF

[s3]
endpoint = "http://127.0.0.1:$P_S3"
force_path_style = true
region = "$S3_REGION"
${PT_S3_EXTRA:-}

[spill]
dir = "$WORK/spill"
EOF
    fi
    echo "==== run $RUN_N ====" >>"$PROXY_LOG"
    # shellcheck disable=SC2086
    NO_COLOR=1 RUST_LOG=info start_bg "pullthrough on $PROXY (store $store) ${PT_S3_EXTRA:-} ${PT_ENV:-}" "$PROXY_LOG" \
        env ${PT_ENV:-} "$BIN" serve --listen "$PROXY" --store "$store" --config "$WORK/pullthrough.toml"
    PROXY_PID=$LAST_PID
    wait_http "http://$PROXY/v2/" "$PROXY_PID" pullthrough
}

dist_start() {
    RUN_N=$((RUN_N + 1))
    PROXY=127.0.0.1:$P_DIST
    PROXY_LOG=$WORK/distribution.log
    # distribution 2.8's s3 driver has no `forcepathstyle` parameter (added in 3.0); a
    # `regionendpoint` makes it use path-style requests, which s3s-fs needs.
    cat >"$WORK/distribution.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  s3:
    accesskey: $S3_ACCESS_KEY
    secretkey: $S3_SECRET_KEY
    region: $S3_REGION
    regionendpoint: http://127.0.0.1:$P_S3
    bucket: $DIST_BUCKET
    rootdirectory: /r$RUN_N
    secure: false
    v4auth: true
  redirect:
    disable: false
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $PROXY
  secret: pullthrough-bench-not-a-secret
proxy:
  remoteurl: http://$UP
EOF
    echo "==== run $RUN_N ====" >>"$PROXY_LOG"
    # aws-sdk-go (v1) in distribution 2.8 panics at start-up on AWS_CA_BUNDLE ("unable to load
    # custom CA bundle, HTTPClient's transport unsupported type"): not for it (plain HTTP anyway).
    start_bg "distribution proxy on $PROXY (s3://$DIST_BUCKET/r$RUN_N)" "$PROXY_LOG" \
        env -u AWS_CA_BUNDLE docker-registry serve "$WORK/distribution.yml"
    PROXY_PID=$LAST_PID
    wait_http "http://$PROXY/v2/" "$PROXY_PID" "distribution proxy"
}

proxy_stop() {
    stop_pid "$PROXY_PID"
    PROXY_PID=""
}

lines() { wc -l <"$1"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$(now)"; } # since T0: seconds

# pull NAME REF OUTDIR: skopeo copy through the proxy to a dir:, verified; prints the seconds.
pull() {
    local ref=$1 out=$2 t0 t
    rm -rf "$out"
    t0=$(now)
    sk copy -q --src-tls-verify=false "docker://$ref" "dir:$out" >"$out.log" 2>&1 || {
        cat "$out.log" >&2
        return 1
    }
    t=$(since "$t0")
    rm -rf "$out" "$out.log"
    echo "$t"
}

# Log windows: line counts of the upstream, s3s-fs and proxy logs at a point in time.
mark() { M_UP=$(lines "$UP_LOG"); M_S3=$(lines "$S3_LOG"); M_PX=$(lines "$PROXY_LOG"); }
# window_stats PROXYKIND: JSON counts of what happened since `mark` (bench/logstats.py).
window_stats() {
    python3 "$BENCH_DIR/logstats.py" --kind "$1" \
        --upstream "$UP_LOG" "$M_UP" --s3 "$S3_LOG" "$M_S3" --proxy "$PROXY_LOG" "$M_PX"
}
put() { echo "$2" >"$RES/$1"; } # put KEY VALUE

# settle: waits until the upstream, s3s-fs and proxy logs have not grown for 2 s and no multipart
# upload is open in s3s-fs (its `.upload*` files; an UploadPartCopy logs nothing while it copies),
# at most 180 s. distribution answers a cold blob while still writing it to S3 in the background
# (fetched again, uploaded, then moved with UploadPartCopy): that work belongs to the cold pull,
# not to what is measured next.
settle() {
    local i cur last="" quiet=0
    for i in $(seq 360); do
        cur="$(lines "$UP_LOG") $(lines "$S3_LOG") $(lines "$PROXY_LOG")"
        if [[ -n $(find "$WORK/s3" -maxdepth 1 \( -name '.upload*' -o -name '*.upload-*' \) -print -quit) ]]; then
            quiet=0
        elif [[ $cur == "$last" ]]; then
            quiet=$((quiet + 1))
            ((quiet < 4)) || return 0
        else
            quiet=0
        fi
        last=$cur
        sleep 0.5
    done
    log "warning: still busy (logs growing or uploads open) after 180 s"
}

vmhwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; } # KiB

# bench_proxy KIND (pt | dist)
bench_proxy() {
    local k=$1 start=${1}_start rep i t
    STAGE="$k: cold and warm pulls"
    for rep in $(seq "$REPS"); do
        "$start"
        mark
        t=$(pull "$PROXY/$MANYLAYERS_REPO:$MANYLAYERS_TAG" "$WORK/out/$k")
        echo "$t" >>"$RES/$k.cold_many"
        settle
        window_stats "$k" >"$RES/$k.cold_many.$rep.json"
        mark
        t=$(pull "$PROXY/$BIG_REPO:$BIG_TAG" "$WORK/out/$k")
        echo "$t" >>"$RES/$k.cold_big"
        settle
        window_stats "$k" >"$RES/$k.cold_big.$rep.json"
        log "$k cold #$rep: manylayers $(tail -n 1 "$RES/$k.cold_many")s, big $(tail -n 1 "$RES/$k.cold_big")s"
        if ((rep < REPS)); then proxy_stop; fi
    done
    # warm: the same process as the last cold round
    for i in $(seq "$WARM_REPS"); do
        mark
        t=$(pull "$PROXY/$MANYLAYERS_REPO:$MANYLAYERS_TAG" "$WORK/out/$k")
        echo "$t" >>"$RES/$k.warm_many"
        window_stats "$k" >"$RES/$k.warm_many.$i.json"
        mark
        t=$(pull "$PROXY/$BIG_REPO:$BIG_TAG" "$WORK/out/$k")
        echo "$t" >>"$RES/$k.warm_big"
        window_stats "$k" >"$RES/$k.warm_big.$i.json"
        log "$k warm #$i: manylayers $(tail -n 1 "$RES/$k.warm_many")s, big $(tail -n 1 "$RES/$k.warm_big")s"
    done

    STAGE="$k: manifest GET latency"
    local by
    for by in tag digest; do
        local ref=$MANYLAYERS_TAG
        [[ $by == tag ]] || ref=$MANYLAYERS_DIGEST
        mark
        "$LOAD" --url "http://$PROXY/v2/$MANYLAYERS_REPO/manifests/$ref" --requests "$REQUESTS" \
            --concurrency "$CONCURRENCY" --expect-digest "$MANYLAYERS_DIGEST" --max-seconds 240 \
            >"$RES/$k.load_$by.json" 2>"$WORK/load-$k-$by.err" || {
            echo "manifest load ($k by $by) failed: $(cat "$RES/$k.load_$by.json" "$WORK/load-$k-$by.err")" >&2
        }
        window_stats "$k" >"$RES/$k.load_$by.window.json"
        log "$k manifests by $by: $(cat "$RES/$k.load_$by.json")"
    done
    proxy_stop

    local n
    for n in 2 4; do
        STAGE="$k: $n concurrent cold pulls of the big image"
        for rep in $(seq "$REPS"); do concurrent_pulls "$k" "$n" "$rep"; done
    done

    STAGE="$k: cold pulls of the $HUGE_MIB MiB image, peak RSS while filling it"
    for rep in $(seq "$REPS"); do
        "$start"
        vmhwm "$PROXY_PID" >>"$RES/$k.rss_idle_kib"
        mark
        pull "$PROXY/$HUGE_REPO:v1" "$WORK/out/$k" >>"$RES/$k.cold_huge"
        settle
        vmhwm "$PROXY_PID" >>"$RES/$k.rss_fill_kib"
        window_stats "$k" >"$RES/$k.cold_huge.$rep.json"
        log "$k $HUGE_MIB MiB cold #$rep: $(tail -n 1 "$RES/$k.cold_huge")s, VmHWM $(tail -n 1 "$RES/$k.rss_fill_kib") KiB"
        proxy_stop
    done

    STAGE="$k: $READERS concurrent GETs of the cold $HUGE_MIB MiB blob"
    huge_readers "$k" "$READERS"
}

# concurrent_pulls KIND N REP: N skopeo copies of the big image at once through a fresh proxy on a
# fresh store. Appends the wall time until the last of them ended (the slowest client) to
# $RES/KIND.cold_big_xN; the log window (upstream bytes) to $RES/KIND.cold_big_xN.REP.json.
concurrent_pulls() {
    local k=$1 n=$2 rep=$3 i t0 failed=0 pids=()
    "${k}_start"
    mark
    t0=$(now)
    for i in $(seq "$n"); do
        sk copy -q --src-tls-verify=false "docker://$PROXY/$BIG_REPO:$BIG_TAG" "dir:$WORK/out/$k.c$i" \
            >"$WORK/out/$k.c$i.log" 2>&1 &
        pids+=("$!")
    done
    for i in $(seq "$n"); do
        wait "${pids[i - 1]}" || { cat "$WORK/out/$k.c$i.log" >&2; failed=1; }
    done
    ((failed == 0)) || return 1
    since "$t0" >>"$RES/$k.cold_big_x$n"
    for i in $(seq "$n"); do rm -rf "$WORK/out/$k.c$i" "$WORK/out/$k.c$i.log"; done
    settle
    window_stats "$k" >"$RES/$k.cold_big_x$n.$rep.json"
    log "$k $n concurrent cold pulls of big #$rep: the last ended after $(tail -n 1 "$RES/$k.cold_big_x$n")s"
    proxy_stop
}

# huge_readers KIND N: N concurrent GETs of the huge layer's blob (curl, redirects followed, no
# auth upstream) through a fresh proxy on a fresh store, so all of them arrive while it is cold.
# Writes the wall time until the last ended ($RES/KIND.cold_huge_xN), the proxy's VmHWM after it
# settled ($RES/KIND.rss_xN_kib), how many readers did not get a 200 with the whole layer
# ($RES/KIND.huge_xN_bad) and the log window ($RES/KIND.cold_huge_xN.json).
huge_readers() {
    local k=$1 n=$2 i t0 got bad=0 pids=()
    "${k}_start"
    mark
    t0=$(now)
    for i in $(seq "$n"); do
        curl -sS -L -o /dev/null --max-time "$CLIENT_TIMEOUT" -w '%{http_code} %{size_download}' \
            "http://$PROXY/v2/$HUGE_REPO/blobs/$HUGE_LAYER" >"$WORK/out/$k.r$i.txt" 2>&1 &
        pids+=("$!")
    done
    for i in $(seq "$n"); do wait "${pids[i - 1]}" || true; done
    since "$t0" >"$RES/$k.cold_huge_x$n"
    for i in $(seq "$n"); do
        got=$(cat "$WORK/out/$k.r$i.txt")
        if [[ $got != "200 $HUGE_LAYER_SIZE" ]]; then
            bad=$((bad + 1))
            log "$k reader $i of $n: got '$got', wanted '200 $HUGE_LAYER_SIZE'"
        fi
    done
    put "$k.huge_x${n}_bad" "$bad"
    settle
    put "$k.rss_x${n}_kib" "$(vmhwm "$PROXY_PID")"
    window_stats "$k" >"$RES/$k.cold_huge_x$n.json"
    log "$k $n concurrent GETs of the $HUGE_MIB MiB blob: the last ended after $(cat "$RES/$k.cold_huge_x$n")s, $bad failed, VmHWM $(cat "$RES/$k.rss_x${n}_kib") KiB"
    proxy_stop
}

# Context: the same pulls straight from the upstream (no proxy).
STAGE="direct pulls from the upstream"
for i in $(seq "$WARM_REPS"); do
    pull "$UP/$MANYLAYERS_REPO:$MANYLAYERS_TAG" "$WORK/out/direct" >>"$RES/direct.warm_many"
    pull "$UP/$BIG_REPO:$BIG_TAG" "$WORK/out/direct" >>"$RES/direct.warm_big"
done
log "direct from the upstream: manylayers $(paste -sd' ' "$RES/direct.warm_many"), big $(paste -sd' ' "$RES/direct.warm_big")"

# The filesystem store (default settings otherwise): a cold pull of big, against the direct pull.
STAGE="pt-fs: cold pulls of the big image with the filesystem store"
for rep in $(seq "$REPS"); do
    PT_STORE=fs pt_start
    mark
    pull "$PROXY/$BIG_REPO:$BIG_TAG" "$WORK/out/pt-fs" >>"$RES/pt-fs.cold_big"
    settle
    window_stats pt >"$RES/pt-fs.cold_big.$rep.json"
    log "pt-fs cold #$rep: big $(tail -n 1 "$RES/pt-fs.cold_big")s"
    proxy_stop
    rm -rf "$WORK/fs$RUN_N"
done

bench_proxy pt

# The same fill with glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_ disables its
# dynamic growth): whether pullthrough's peak RSS is its buffers or the allocator keeping freed
# part buffers resident (bench/RESULTS.md).
STAGE="pt: peak RSS with MALLOC_MMAP_THRESHOLD_=1048576"
PT_ENV="MALLOC_MMAP_THRESHOLD_=1048576" pt_start
t=$(pull "$PROXY/$HUGE_REPO:v1" "$WORK/out/pt")
settle
put pt.cold_huge_mmap "$t"
put pt.rss_fill_mmap_kib "$(vmhwm "$PROXY_PID")"
log "pt (MALLOC_MMAP_THRESHOLD_=1048576) $HUGE_MIB MiB cold pull ${t}s, VmHWM $(cat "$RES/pt.rss_fill_mmap_kib") KiB"
proxy_stop

# For context, the same cold pulls with `[s3] stream_misses = false`: the blob is copied into S3
# completely before its clients get the redirect (two transfers in sequence; the default before
# fills streamed from a spill file).
STAGE="pt-redirect: cold pulls with [s3] stream_misses = false"
for rep in $(seq "$REPS"); do
    PT_S3_EXTRA="stream_misses = false" pt_start
    mark
    pull "$PROXY/$MANYLAYERS_REPO:$MANYLAYERS_TAG" "$WORK/out/pt-redirect" >>"$RES/pt-redirect.cold_many"
    settle
    window_stats pt >"$RES/pt-redirect.cold_many.$rep.json"
    mark
    pull "$PROXY/$BIG_REPO:$BIG_TAG" "$WORK/out/pt-redirect" >>"$RES/pt-redirect.cold_big"
    settle
    window_stats pt >"$RES/pt-redirect.cold_big.$rep.json"
    log "pt-redirect cold #$rep: manylayers $(tail -n 1 "$RES/pt-redirect.cold_many")s, big $(tail -n 1 "$RES/pt-redirect.cold_big")s"
    proxy_stop
done
PT_S3_EXTRA="stream_misses = false" pt_start
t=$(pull "$PROXY/$HUGE_REPO:v1" "$WORK/out/pt-redirect")
settle
put pt-redirect.cold_huge "$t"
put pt-redirect.rss_fill_kib "$(vmhwm "$PROXY_PID")"
log "pt-redirect $HUGE_MIB MiB cold pull ${t}s, VmHWM $(cat "$RES/pt-redirect.rss_fill_kib") KiB"
proxy_stop

bench_proxy dist

STAGE="lambda init"
if [[ -f $BENCH_DIR/lambda_init.sh ]]; then
    log "bench/lambda_init.sh"
    timeout 600 bash "$BENCH_DIR/lambda_init.sh" >"$RES/lambda_init.txt" 2>&1 ||
        echo "(bench/lambda_init.sh exited with status $?)" >>"$RES/lambda_init.txt"
else
    echo "n/a" >"$RES/lambda_init.txt"
fi

STAGE="report"
write_report


# shellcheck shell=bash
# Shared helpers of tests/e2e/run.sh and bench/run.sh (sourced, not run).
#
# Process handling (every background process is remembered in PIDS and stopped by PID), port
# allocation, distribution 2.8 registry configs, and the s3s-fs S3-compatible server.
# The sourcing script defines its own `log` and EXIT trap; it calls stop_all (or stop_pid) there.

PIDS=()   # every background process started with start_bg
LAST_PID=""

# Distribution's and s3s-fs's credentials for the local S3-compatible server. Not secrets.
S3_ACCESS_KEY="AKIDPULLTHROUGHE2E01"
S3_SECRET_KEY="pullthrough/e2e/secret/key/0123456789"
S3_REGION="us-east-1"
# Short on purpose: s3s-fs 0.14 fails keys longer than ~155 bytes, bucket name included (it
# encodes bucket and key, base64, into one file name of its metadata).
S3_BUCKET="ptc"
S3FS_VERSION="0.14.1"

declare -F log >/dev/null || log() { echo "-- $*"; }

# free_ports N: N distinct free TCP ports on 127.0.0.1, space separated.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
PY
}

# start_bg NAME LOGFILE COMMAND...: starts a background process, appending to LOGFILE; its PID is
# left in LAST_PID and remembered for teardown.
start_bg() {
    local name=$1 logf=$2
    shift 2
    "$@" >>"$logf" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    log "started $name (pid $LAST_PID)"
}

# stop_pid PID: TERM, up to 5 s, then KILL; always reaps it.
stop_pid() {
    local pid=$1 i state
    [[ -n $pid ]] || return 0
    if kill -TERM "$pid" 2>/dev/null; then
        for i in $(seq 50); do
            state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
            [[ $state == gone || $state == Z ]] && break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    local rest=()
    for i in "${PIDS[@]}"; do [[ $i == "$pid" ]] || rest+=("$i"); done
    PIDS=("${rest[@]}")
}

# stop_all: every process started with start_bg, newest first. Never fails.
stop_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}" || true
    done
    return 0
}

# wait_http URL PID NAME: polls URL until anything answers (bounded: 30 s), the process must live.
wait_http() {
    local url=$1 pid=$2 name=$3 i code
    for i in $(seq 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name (pid $pid) exited while starting" >&2
            return 1
        fi
        code=$(command curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        [[ $code == 000 || -z $code ]] || return 0
        sleep 0.1
    done
    echo "$name did not answer on $url within 30 s" >&2
    return 1
}

# registry_config FILE PORT DATA_DIR [EXTRA_YAML]: a distribution 2.8 config with the filesystem
# driver, text logs (the access log is what the request counts read).
registry_config() {
    cat >"$1" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $3
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$2
  secret: pullthrough-e2e-not-a-secret
${4:-}
EOF
}

# ensure_s3s_fs: sets S3FS_BIN to an s3s-fs $S3FS_VERSION binary: on PATH, in $CARGO_HOME/bin,
# else installed there with `cargo install` (~2 minutes on 2 cores; newer versions need a newer
# rustc). BUILD_DIR ($1, optional) is the cargo target directory for that build.
ensure_s3s_fs() {
    local bin_dir=${CARGO_HOME:-$HOME/.cargo}/bin cand
    S3FS_BIN=""
    for cand in "$(command -v s3s-fs || true)" "$bin_dir/s3s-fs"; do
        if [[ -n $cand && -x $cand ]] && "$cand" --version 2>/dev/null | grep -qF " $S3FS_VERSION"; then
            S3FS_BIN=$cand
            return 0
        fi
    done
    log "cargo install s3s-fs --version $S3FS_VERSION (not found in PATH or $bin_dir)"
    local target=${1:-$(mktemp -d /var/tmp/s3s-fs-build.XXXXXX)}
    cargo install s3s-fs --version "$S3FS_VERSION" --features binary --locked --force \
        --target-dir "$target" >&2 || return 1
    [[ -n ${1:-} ]] || rm -rf "$target"
    S3FS_BIN=$bin_dir/s3s-fs
    "$S3FS_BIN" --version | grep -qF " $S3FS_VERSION"
}

# s3_curl ARGS...: curl with SigV4 signing for the local S3 server.
s3_curl() {
    command curl --max-time 30 --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}

# start_s3s_fs ROOT PORT LOGFILE: starts s3s-fs on 127.0.0.1:PORT over ROOT with the bucket
# $S3_BUCKET (a directory under the root: that is how s3s-fs keeps buckets), checks that a signed
# ListObjectsV2 of the bucket answers 200. S3FS_PID is its PID. RUST_LOG for s3s-fs: S3FS_RUST_LOG
# (default: info; `s3s::ops=debug` logs one "resolved route" line per request, with its operation).
start_s3s_fs() {
    local root=$1 port=$2 logf=$3 code
    [[ -n ${S3FS_BIN:-} ]] || ensure_s3s_fs
    mkdir -p "$root/$S3_BUCKET"
    RUST_LOG=${S3FS_RUST_LOG:-info} NO_COLOR=1 start_bg "s3s-fs on 127.0.0.1:$port" "$logf" \
        "$S3FS_BIN" --host 127.0.0.1 --port "$port" \
        --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$root"
    S3FS_PID=$LAST_PID
    wait_http "http://127.0.0.1:$port/" "$S3FS_PID" s3s-fs || return 1
    code=$(s3_curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/$S3_BUCKET?list-type=2")
    if [[ $code != 200 ]]; then
        echo "s3s-fs: ListObjectsV2 of bucket $S3_BUCKET answered $code" >&2
        return 1
    fi
}

#!/usr/bin/env bash
# End-to-end tests: real clients (skopeo, podman, containerd) pull through a release build of
# pullthrough from real upstream registries (CNCF distribution 2.8, one of them behind token auth),
# all on 127.0.0.1, with fixture images built offline; the SSRF guard, tested through the HTTP
# interface with a public-looking upstream in a network namespace; and the same clients logging
# in to pullthrough's own client authentication. See tests/e2e/README.md.
#
#   bash tests/e2e/run.sh                 # from the repository root; installs what it needs (apt)
#   bash tests/e2e/run.sh ssrf            # only the SSRF section (~15 s once built)
#   bash tests/e2e/run.sh auth            # only the client-auth section
#   bash tests/e2e/run.sh clients         # only the client pulls
#
# Sections (arguments, or PULLTHROUGH_E2E_SECTIONS; default all three):
#   clients   skopeo, podman and containerd pulls for each store of PULLTHROUGH_E2E_STORES
#   ssrf      the SSRF guard (tests/e2e/ssrf.sh): hostile redirects and token realms from an
#             upstream on a public address, inside a network namespace (needs root and iproute2)
#   auth      client authentication (tests/e2e/auth.sh): pullthrough with PULLTHROUGH_AUTH (an
#             htpasswd file); skopeo --creds, podman login/logout, ctr --user, the /token flow
#
# Environment:
#   PULLTHROUGH_E2E_SECTIONS  sections to run, space separated (default "clients ssrf auth")
#   PULLTHROUGH_E2E_STORES  stores to test, space separated (default "fs s3"; s3 runs s3s-fs)
#   PULLTHROUGH_E2E_KEEP=1  keep the work directory (logs, stores) instead of removing it
#   PULLTHROUGH_E2E_TMPDIR  where the work directory is made (default /var/tmp)
#   CARGO_TARGET_DIR        as for cargo; the binary is $CARGO_TARGET_DIR/release/pullthrough
#
# Every check prints one `PASS <name>` or `FAIL <name>` line (a failure is followed by the tail
# of its log); the last line is `N passed, M failed`; the exit status is non-zero on any failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO_ROOT=$PWD
E2E_DIR=$REPO_ROOT/tests/e2e
STORES=${PULLTHROUGH_E2E_STORES:-fs s3}
SECTIONS=${*:-${PULLTHROUGH_E2E_SECTIONS:-clients ssrf auth}}
for sec in $SECTIONS; do
    [[ $sec == clients || $sec == ssrf || $sec == auth ]] ||
        { echo "unknown section '$sec'; known: clients ssrf auth" >&2; exit 2; }
done
want() { [[ " $SECTIONS " == *" $1 "* ]]; } # want SECTION: whether SECTION runs
KEEP=${PULLTHROUGH_E2E_KEEP:-0}
STARTED_AT=$SECONDS

PASSED=0
FAILED=0
CHECK_N=0
SUMMARY_DONE=0
STAGE="start"
WORK=""
RUNROOTS=""          # podman wants a runroot path of at most 50 characters: a short dir in /tmp
POLICY_RC_GUARD=0    # 1 when we wrote /usr/sbin/policy-rc.d for the apt install
VLC_EXISTED=1        # whether /var/lib/containers existed before (c/image's blob info cache)
[[ -e /var/lib/containers ]] || VLC_EXISTED=0

TOKEN_USER="e2e-user"
TOKEN_PASSWORD="e2e pass: w1th sp4ce & symbols"
TOKEN_SERVICE="e2e-secure-registry"
TOKEN_ISSUER="e2e-token-issuer"
SECURE_REPO="e2e/private"

log() { echo "-- $*"; }
# start_bg, stop_pid, wait_http, free_ports, registry_config, s3s-fs (also used by bench/run.sh)
# shellcheck source=tests/e2e/lib.sh
source "$E2E_DIR/lib.sh"
# ssrf_section, ssrf_teardown
# shellcheck source=tests/e2e/ssrf.sh
source "$E2E_DIR/ssrf.sh"
# auth_section, auth_teardown
# shellcheck source=tests/e2e/auth.sh
source "$E2E_DIR/auth.sh"
# No client may hang the run: every client call has a time limit. Redirects are followed: with
# the S3 store, blob GETs answer 307 to a presigned URL on the S3 server (bodies, codes and
# headers checked below are those of the final response; -D files hold every response's).
CLIENT_TIMEOUT=300
curl() { command curl -L --max-time 120 "$@"; }
elapsed() { echo "$((SECONDS - STARTED_AT))s"; }

# ---------------------------------------------------------------------------------------------
# Checks, processes, teardown
# ---------------------------------------------------------------------------------------------

# check NAME COMMAND [ARGS...]: runs the command in a subshell with `set -e` (in the background
# and then waited for, so that errexit really applies inside it), prints PASS or FAIL.
check() {
    local name=$1
    shift
    CHECK_N=$((CHECK_N + 1))
    local logf
    logf=$(printf '%s/checks/%03d.log' "$WORK" "$CHECK_N")
    (
        set -e
        "$@"
    ) >"$logf" 2>&1 </dev/null &
    if wait $!; then
        PASSED=$((PASSED + 1))
        echo "PASS $name"
    else
        FAILED=$((FAILED + 1))
        echo "FAIL $name"
        tail -n 25 "$logf" | sed 's/^/    | /'
    fi
}

# A check that fails without running anything (a client or a store that cannot be tested).
fail_now() {
    FAILED=$((FAILED + 1))
    echo "FAIL $1"
    [[ -z ${2:-} ]] || echo "    | $2"
}

# Never fails: every step is attempted.
teardown() {
    local m
    ssrf_teardown
    auth_teardown
    stop_all
    if [[ $POLICY_RC_GUARD == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d || true
        POLICY_RC_GUARD=0
    fi
    if [[ -n $RUNROOTS && -d $RUNROOTS ]]; then
        rm -rf "$RUNROOTS" || true
        RUNROOTS=""
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        # Nothing should be mounted (the native snapshotter copies), but never rm across a mount.
        for m in $(findmnt -rn -o TARGET 2>/dev/null | grep -F "$WORK" | sort -r || true); do
            umount -l "$m" || true
        done
        if [[ $KEEP == 1 ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK" || true
        fi
        WORK=""
    fi
    # skopeo and podman running as root keep a blob info cache there; remove it if we made it.
    if [[ $VLC_EXISTED == 0 && -d /var/lib/containers ]]; then
        rm -rf /var/lib/containers || true
    fi
    return 0
}

# section_setup SECTION SETUP TEARDOWN WHAT: a section's setup function, its output in
# $WORK/SECTION-setup.log; on failure one FAIL line (with the log's tail), the section's teardown,
# and a non-zero status (the section then skips its checks). SETUP runs in an `if`, where errexit
# does not apply: each of its steps that can fail says so itself.
section_setup() {
    local sec=$1 setup=$2 teardown=$3 what=$4
    STAGE="$sec: setup"
    if ! "$setup" >"$WORK/$sec-setup.log" 2>&1; then
        fail_now "[$sec] setup ($what)" "$(tail -n 5 "$WORK/$sec-setup.log")"
        "$teardown"
        return 1
    fi
}

summary() {
    SUMMARY_DONE=1
    echo "$PASSED passed, $FAILED failed"
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $SUMMARY_DONE == 0 ]]; then
        FAILED=$((FAILED + 1))
        if [[ $rc == 130 ]]; then
            echo "FAIL interrupted during: $STAGE"
        else
            echo "FAIL setup: $STAGE (exit status $rc)"
        fi
        if [[ -n $WORK && -f $WORK/pullthrough.log ]]; then
            echo "    | last lines of the pullthrough log:"
            tail -n 20 "$WORK/pullthrough.log" | sed 's/^/    | /'
        fi
        teardown
        summary
        exit 1
    fi
    teardown
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. Packages and the release build
# ---------------------------------------------------------------------------------------------

PACKAGES=(curl python3 ca-certificates)
if want clients || want auth; then PACKAGES+=(docker-registry skopeo podman containerd); fi
want clients && PACKAGES+=(openssl util-linux)
want ssrf && PACKAGES+=(iproute2)
want auth && PACKAGES+=(apache2-utils) # htpasswd -B

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "packages: all installed"
        return 0
    fi
    if [[ $EUID -ne 0 ]]; then
        echo "need root to apt-get install ${missing[*]}" >&2
        return 1
    fi
    log "apt-get install ${missing[*]}"
    # Keep apt from starting the packages' system services (a registry on :5000, containerd on
    # /run/containerd): the tests start their own, privately.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC_GUARD=1
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1; then
        apt-get update -q >>"$WORK/apt.log" 2>&1
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$WORK/apt.log" 2>&1 || {
            tail -n 30 "$WORK/apt.log" >&2
            return 1
        }
    fi
    if [[ $POLICY_RC_GUARD == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_GUARD=0
    fi
}

WORK=$(mktemp -d "${PULLTHROUGH_E2E_TMPDIR:-/var/tmp}/pullthrough-e2e.XXXXXX")
mkdir -p "$WORK/checks" "$WORK/out"
RUNROOTS=$(mktemp -d /tmp/pte2e.XXXXXX)
log "work directory $WORK"

STAGE="installing packages"
install_packages
if want clients || want auth; then
    log "skopeo $(skopeo --version | awk '{print $3}'), podman $(podman --version | awk '{print $3}'), containerd $(containerd --version | awk '{print $3}'), $(docker-registry --version 2>/dev/null | awk '{print $2, $3}')"
fi

STAGE="cargo build --release"
log "cargo build --release ($(elapsed))"
if ! cargo build --release >"$WORK/cargo-build.log" 2>&1; then
    tail -n 40 "$WORK/cargo-build.log"
    false
fi
BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/pullthrough
[[ -x $BIN ]]
log "built $BIN ($(elapsed))"

# The S3 store is tested against s3s-fs (an S3-compatible server over a directory, SigV4 checked
# on headers and presigned URLs): installed with cargo into $CARGO_HOME/bin only if missing.
if want clients && [[ " $STORES " == *" s3 "* ]]; then
    STAGE="installing s3s-fs"
    if ensure_s3s_fs "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/s3s-fs-install" >"$WORK/s3s-fs-install.log" 2>&1; then
        log "s3s-fs: $S3FS_BIN ($(elapsed))"
    else
        S3FS_BIN=""
        log "s3s-fs could not be installed (the s3 store will FAIL): $(tail -n 3 "$WORK/s3s-fs-install.log")"
    fi
fi

# finish: the end of the run (teardown, summary); returns non-zero on any failure.
finish() {
    STAGE="teardown"
    if ((FAILED > 0)) && want clients && [[ -f $WORK/pullthrough.log ]]; then
        echo "-- last lines of the pullthrough log ($WORK/pullthrough.log):"
        tail -n 30 "$WORK/pullthrough.log" | sed 's/^/    | /'
    fi
    log "total time $(elapsed)"
    teardown
    trap - EXIT
    summary
    ((FAILED == 0))
}

# ---------------------------------------------------------------------------------------------
# 1b. The SSRF guard through a public-looking upstream (tests/e2e/ssrf.sh)
# ---------------------------------------------------------------------------------------------

if want ssrf; then
    ssrf_section
fi

# ---------------------------------------------------------------------------------------------
# 2. Fixtures (offline; the auth section needs only multiarch)
# ---------------------------------------------------------------------------------------------

if want clients || want auth; then
    STAGE="building fixtures"
    # shellcheck disable=SC2046  # no names: every fixture
    python3 "$E2E_DIR/make_fixtures.py" "$WORK/fixtures" $(want clients || echo multiarch)
    # shellcheck disable=SC1091
    source "$WORK/fixtures/fixtures.env"
    log "fixtures built: $FIXTURES ($(elapsed))"
fi

# fx FIXTURE FIELD: a value from fixtures.env (fx multiarch DIGEST, fx dockerlist CHILD_AMD64).
fx() {
    local v="${1^^}_$2"
    echo "${!v}"
}

# ---------------------------------------------------------------------------------------------
# 2b. Client helpers (sections clients and auth). They act on the globals UP (the upstream),
# PROXY, REFS (the upstream's bytes), PT_LOG, CUR_OUT, POD/POD_RUN and CTD, which the auth
# section sets as locals of its own (bash's dynamic scoping) before calling them.
# ---------------------------------------------------------------------------------------------

cat >"$WORK/policy.json" <<'EOF'
{"default": [{"type": "insecureAcceptAnything"}]}
EOF
sk() { timeout "$CLIENT_TIMEOUT" skopeo --policy "$WORK/policy.json" "$@"; }

lines() { wc -l <"$1"; }
since() { tail -n "+$(($2 + 1))" "$1"; } # since FILE LINECOUNT
count() { grep -cE "$1" || true; } # count REGEX < input

push_fixture() { # FIXTURE
    local f=$1 repo tag src
    repo=$(fx "$f" REPO)
    tag=$(fx "$f" TAG)
    case $(fx "$f" TRANSPORT) in
    oci) src="oci:$(fx "$f" PATH):$(fx "$f" REF)" ;;
    dir) src="dir:$(fx "$f" PATH)" ;;
    put)
        curl -sSf -X PUT -H "Content-Type: $(fx "$f" MEDIA_TYPE)" --data-binary "@$(fx "$f" PATH)" \
            "http://$UP/v2/$repo/manifests/$tag"
        src=""
        ;;
    esac
    if [[ -n $src ]]; then
        sk copy --all --preserve-digests --dest-tls-verify=false "$src" "docker://$UP/$repo:$tag"
    fi
    save_ref "$f.tag" "docker://$UP/$repo:$tag" "$(fx "$f" DIGEST)"
    save_ref "$f.digest" "docker://$UP/$repo@$(fx "$f" DIGEST)" "$(fx "$f" DIGEST)"
    local child d
    for child in $(fx "$f" CHILDREN 2>/dev/null || true); do
        d=$(fx "$f" "CHILD_${child^^}")
        save_ref "$f.child-$child" "docker://$UP/$repo@$d" "$d"
    done
}

# save_ref KEY UPSTREAM_REF EXPECTED_DIGEST [CREDS]: stores the upstream's bytes, which must hash
# to the expected digest.
save_ref() {
    local key=$1 ref=$2 digest=$3 creds=${4:-}
    local args=(--tls-verify=false)
    [[ -z $creds ]] || args+=(--creds "$creds")
    sk inspect --raw "${args[@]}" "$ref" >"$REFS/$key"
    local got
    got=sha256:$(sha256sum <"$REFS/$key" | cut -d' ' -f1)
    if [[ $got != "$digest" ]]; then
        echo "$ref: upstream bytes hash to $got, expected $digest"
        return 1
    fi
}

inspect_check() { # KEY PROXY_REF [SKOPEO_ARGS...]
    local key=$1 ref=$2
    sk inspect --raw --tls-verify=false "${@:3}" "docker://$PROXY/$ref" >"$CUR_OUT"
    cmp "$REFS/$key" "$CUR_OUT"
    echo "identical: $(wc -c <"$CUR_OUT") bytes, sha256:$(sha256sum <"$CUR_OUT" | cut -c1-12)"
}

copy_check() { # PROXY_REF EXPECTED_DIGEST [SKOPEO_ARGS...]
    local dest=$CUR_OUT.dir
    rm -rf "$dest"
    sk copy --all --preserve-digests --src-tls-verify=false "${@:3}" "docker://$PROXY/$1" "dir:$dest"
    python3 "$E2E_DIR/verify_dir.py" "$dest" "$2"
    rm -rf "$dest"
}

# podman, with its own storage per round (vfs), events to a file, no systemd, no CNI writes.
pod() {
    mkdir -p "$POD/tmp"
    TMPDIR=$POD/tmp timeout "$CLIENT_TIMEOUT" podman --root "$POD/root" --runroot "$POD_RUN" --storage-driver vfs \
        --events-backend file --cgroup-manager cgroupfs --tmpdir "$POD/libpod" \
        --network-config-dir "$POD/net" "$@"
}

podman_check() { # REF EXPECTED_DIGEST EXPECTED_CHILD EXPECTED_CONFIG [LAYERS] [PROXY_PATH]
    local ref=$1 digest=$2 child=$3 config=$4 layers=${5:-} path=${6:-} before info
    before=$(lines "$PT_LOG")
    pod pull --signature-policy "$WORK/policy.json" "$ref"
    info=$(pod image inspect --format '{{.Digest}} {{.Id}} {{.RepoDigests}} {{len .RootFS.Layers}}' "$ref")
    echo "podman reports: $info"
    read -r got_digest got_id _ <<<"$info"
    [[ $got_digest == "$digest" ]] || { echo "digest $got_digest != $digest (upstream)"; return 1; }
    [[ sha256:$got_id == "$config" ]] || { echo "image id $got_id != config $config"; return 1; }
    grep -qF "@$child" <<<"$info" || { echo "RepoDigests lack $child"; return 1; }
    [[ -z $layers || $info == *" $layers" ]] || { echo "expected $layers layers"; return 1; }
    if [[ -n $path ]]; then # the pull must have gone through the proxy under this path
        since "$PT_LOG" "$before" | grep -F "path=$path" | grep 'status=200' >/dev/null ||
            { echo "no '$path' request in the pullthrough log"; return 1; }
    fi
}

# containerd: a private daemon per round (own root, state, socket; nothing else enabled).
ctd_start() {
    CTD=$WORK/ctd-$1
    mkdir -p "$CTD"
    cat >"$CTD/config.toml" <<EOF
version = 2
root = "$CTD/root"
state = "$CTD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CTD/containerd.sock"
[ttrpc]
  address = "$CTD/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTD/opt"
EOF
    start_bg "containerd ($1)" "$CTD/containerd.log" containerd --config "$CTD/config.toml"
    CTD_PID=$LAST_PID
    local i
    for i in $(seq 100); do
        kill -0 "$CTD_PID" 2>/dev/null || { tail -n 20 "$CTD/containerd.log" >&2; return 1; }
        ctr --address "$CTD/containerd.sock" version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "containerd did not come up" >&2
    return 1
}
ctd_stop() {
    stop_pid "$CTD_PID"
    CTD_PID=""
}
c() { timeout "$CLIENT_TIMEOUT" ctr --address "$CTD/containerd.sock" -n e2e "$@"; }

ctr_digest_is() { # REF DIGEST
    local got
    got=$(c images ls | awk -v r="$1" '$1 == r {print $3}')
    echo "containerd has $1 at $got"
    [[ $got == "$2" ]]
}

ctr_plain_check() { # REPO:TAG DIGEST [CTR_PULL_ARGS...]
    c images pull --plain-http --snapshotter native "${@:3}" "$PROXY/$1"
    ctr_digest_is "$PROXY/$1" "$2"
}

no_panics() {
    ! grep -nE 'panicked|RUST_BACKTRACE' "$PT_LOG"
}

# ---------------------------------------------------------------------------------------------
# 2c. Client authentication (tests/e2e/auth.sh)
# ---------------------------------------------------------------------------------------------

if want auth; then
    auth_section
fi
if ! want clients; then
    finish
    exit
fi

# ---------------------------------------------------------------------------------------------
# 3. Upstream registries and the token server
# ---------------------------------------------------------------------------------------------

STAGE="starting the upstream registries"
read -r P_UP P_SEC P_TOK P_PROXY P_DEAD P_S3 < <(free_ports 6)
UP=127.0.0.1:$P_UP
SEC=127.0.0.1:$P_SEC
PROXY=127.0.0.1:$P_PROXY
UP_LOG=$WORK/upstream.log
SEC_LOG=$WORK/upstream-secure.log
TOK_LOG=$WORK/token-server.log
PT_LOG=$WORK/pullthrough.log
touch "$UP_LOG" "$SEC_LOG" "$TOK_LOG" "$PT_LOG"

# For skopeo and podman: plain HTTP to the proxy; docker.io mirrored by the proxy (README).
cat >"$WORK/registries.conf" <<EOF
unqualified-search-registries = []

[[registry]]
location = "$PROXY"
insecure = true

[[registry]]
location = "$UP"
insecure = true

[[registry]]
location = "$SEC"
insecure = true

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "$PROXY/docker.io"
insecure = true
EOF
export CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf

# schema1 pushes are accepted for the signed schema1 fixture (distribution 2.8 refuses them by
# default); the registry re-signs such a manifest on every GET.
registry_config "$WORK/upstream.yml" "$P_UP" "$WORK/upstream-data" "compatibility:
  schema1:
    enabled: true"
start_upstream() {
    start_bg "upstream registry on $UP" "$UP_LOG" docker-registry serve "$WORK/upstream.yml"
    UP_PID=$LAST_PID
    wait_http "http://$UP/v2/" "$UP_PID" "upstream registry"
}
start_upstream

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$TOKEN_ISSUER" \
    -keyout "$WORK/token-key.pem" -out "$WORK/token-cert.pem" 2>/dev/null
registry_config "$WORK/upstream-secure.yml" "$P_SEC" "$WORK/upstream-secure-data" "auth:
  token:
    realm: http://127.0.0.1:$P_TOK/token
    service: $TOKEN_SERVICE
    issuer: $TOKEN_ISSUER
    rootcertbundle: $WORK/token-cert.pem"
start_bg "token server on 127.0.0.1:$P_TOK" "$TOK_LOG" python3 "$E2E_DIR/token_server.py" \
    --listen "127.0.0.1:$P_TOK" --key "$WORK/token-key.pem" --cert "$WORK/token-cert.pem" \
    --issuer "$TOKEN_ISSUER" --service "$TOKEN_SERVICE" --user "$TOKEN_USER" --password "$TOKEN_PASSWORD"
TOK_PID=$LAST_PID
start_bg "token-auth registry on $SEC" "$SEC_LOG" docker-registry serve "$WORK/upstream-secure.yml"
SEC_PID=$LAST_PID

wait_http "http://127.0.0.1:$P_TOK/token" "$TOK_PID" "token server"
wait_http "http://$SEC/v2/" "$SEC_PID" "token-auth registry"
log "upstreams ready ($(elapsed))"

# Reference bytes: what the upstreams serve, fetched once here (before any proxy exists, so the
# warm rounds' upstream access logs contain only the proxy's requests).
REFS=$WORK/refs
mkdir -p "$REFS"
INSPECT_TABLE=$WORK/inspect-table # key|upstream reference|proxy reference|creds

add_inspect() { # KEY UPSTREAM_REF PROXY_REF: once per proxy reference
    grep -qF "|$3|" "$INSPECT_TABLE" || echo "$1|$2|$3|${4:-}" >>"$INSPECT_TABLE"
}

STAGE="pushing fixtures"
: >"$INSPECT_TABLE"
for f in $FIXTURES; do
    # fixtures.env only defines CHILDREN for lists; make fx quiet for the others
    v="${f^^}_CHILDREN"
    [[ -n ${!v:-} ]] || printf -v "$v" '%s' ""
    check "upstream: push $f ($(fx "$f" REPO):$(fx "$f" TAG), upstream serves the fixture bytes)" \
        push_fixture "$f"
    repo=$(fx "$f" REPO)
    add_inspect "$f.tag" "$repo:$(fx "$f" TAG)" "$repo:$(fx "$f" TAG)"
    add_inspect "$f.digest" "$repo@$(fx "$f" DIGEST)" "$repo@$(fx "$f" DIGEST)"
    for child in $(fx "$f" CHILDREN); do
        add_inspect "$f.child-$child" "$repo@$(fx "$f" "CHILD_${child^^}")" \
            "$repo@$(fx "$f" "CHILD_${child^^}")"
    done
done
# Name mapping: a one-component name is library/<name> on docker.io; docker.io/ as a path prefix.
add_inspect "multiarch.tag" "$MULTIARCH_REPO:$MULTIARCH_TAG" "$MULTIARCH_SHORT:$MULTIARCH_TAG" ""
add_inspect "dockerlist.tag" "$DOCKERLIST_REPO:$DOCKERLIST_TAG" "docker.io/$DOCKERLIST_REPO:$DOCKERLIST_TAG" ""
add_inspect "multiarch.child-amd64" "$MULTIARCH_REPO@$MULTIARCH_CHILD_AMD64" \
    "index.docker.io/$MULTIARCH_REPO@$MULTIARCH_CHILD_AMD64" ""

# A signed schema1 image: skopeo converts the manylayers fixture (--format v2s1) and signs it.
# The upstream answers every GET with a fresh signature (other bytes) under one digest, the
# sha256 of the JWS payload; $WORK/schema1.digest is that digest, as the upstream names it
# (checks run in subshells: a file, not a variable).
SCHEMA1_REPO=e2e/schema1
push_schema1() {
    local a b
    sk copy --format v2s1 --dest-tls-verify=false \
        "oci:$(fx manylayers PATH):$(fx manylayers REF)" "docker://$UP/$SCHEMA1_REPO:v1"
    a=$(curl -sSf -D - -o "$WORK/schema1.a" -H "Accept: $SCHEMA1_TYPE" \
        "http://$UP/v2/$SCHEMA1_REPO/manifests/v1" | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')
    b=$(curl -sSf -D - -o "$WORK/schema1.b" -H "Accept: $SCHEMA1_TYPE" \
        "http://$UP/v2/$SCHEMA1_REPO/manifests/v1" | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')
    echo "digests $a $b"
    [[ -n $a && $a == "$b" ]]
    ! cmp -s "$WORK/schema1.a" "$WORK/schema1.b" || { echo "not re-signed"; return 1; }
    echo "$a" >"$WORK/schema1.digest"
}
SCHEMA1_TYPE=application/vnd.docker.distribution.manifest.v1+prettyjws
check "upstream: push a signed schema1 image (re-signed on every GET, one payload digest)" push_schema1

token_anonymous_refused() {
    local hdrs
    hdrs=$(curl -s -o /dev/null -D - "http://$SEC/v2/$SECURE_REPO/manifests/v1")
    echo "$hdrs"
    grep -q '^HTTP/1.1 401' <<<"$hdrs"
    grep -qi "^www-authenticate: Bearer realm=\"http://127.0.0.1:$P_TOK/token\"" <<<"$hdrs"
    # and the token server refuses a token without credentials
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_TOK/token?service=$TOKEN_SERVICE&scope=repository:$SECURE_REPO:pull") == 401 ]]
}
check "token upstream: anonymous requests are refused (401, Bearer challenge)" token_anonymous_refused

push_secure() {
    sk copy --all --preserve-digests --dest-tls-verify=false --dest-creds "$TOKEN_USER:$TOKEN_PASSWORD" \
        "oci:$MULTIARCH_PATH:$MULTIARCH_REF" "docker://$SEC/$SECURE_REPO:v1"
    grep "token-request user=$TOKEN_USER scopes=repository:$SECURE_REPO:pull,push status=200" "$TOK_LOG"
    local c="$TOKEN_USER:$TOKEN_PASSWORD"
    save_ref secure.tag "docker://$SEC/$SECURE_REPO:v1" "$MULTIARCH_DIGEST" "$c"
    save_ref secure.digest "docker://$SEC/$SECURE_REPO@$MULTIARCH_DIGEST" "$MULTIARCH_DIGEST" "$c"
    save_ref secure.child-amd64 "docker://$SEC/$SECURE_REPO@$MULTIARCH_CHILD_AMD64" "$MULTIARCH_CHILD_AMD64" "$c"
}
check "token upstream: push with credentials through the token flow" push_secure
add_inspect secure.tag "" "secure.local/$SECURE_REPO:v1"
add_inspect secure.digest "" "secure.local/$SECURE_REPO@$MULTIARCH_DIGEST"
add_inspect secure.child-amd64 "" "secure.local/$SECURE_REPO@$MULTIARCH_CHILD_AMD64"
log "fixtures pushed ($(elapsed))"

# ---------------------------------------------------------------------------------------------
# 4. Stores and pullthrough
# ---------------------------------------------------------------------------------------------

# A store backend NAME provides store_up_NAME, which sets PT_STORE (the --store value) and
# PT_STORE_TOML (text appended to the config file) and starts what it needs with start_bg, and
# store_down_NAME. A failing store_up is one loud FAIL and that store's checks are skipped.
store_up_fs() {
    PT_STORE=$WORK/store-fs
    PT_STORE_TOML=""
}
store_down_fs() { :; }

# The S3 store: s3s-fs on 127.0.0.1:$P_S3 over $WORK/s3 (the bucket is a directory there), a key
# prefix per run, credentials in the environment as in production (the AWS credential chain).
# Blob GETs then answer 307 to a presigned URL on s3s-fs, which every client follows.
store_up_s3() {
    [[ -n ${S3FS_BIN:-} ]] || { echo "no s3s-fs binary (see $WORK/s3s-fs-install.log)"; return 1; }
    S3_ROOT=$WORK/s3
    S3_LOG=$WORK/s3s-fs.log
    start_s3s_fs "$S3_ROOT" "$P_S3" "$S3_LOG"
    S3_PID=$S3FS_PID
    export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_REGION=$S3_REGION
    unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3
    # Keys are <bucket>/e2e/repos/<upstream>/<repo>/_referrers/sha256/<64 hex>: the longest here
    # (secure.local/e2e/private) is ~125 bytes, under s3s-fs 0.14's ~155.
    PT_STORE="s3://$S3_BUCKET/e2e"
    PT_STORE_TOML=$(printf '[s3]\nendpoint = "http://127.0.0.1:%s"\nforce_path_style = true\nregion = "%s"\n' \
        "$P_S3" "$S3_REGION")
}
store_down_s3() {
    stop_pid "${S3_PID:-}"
    S3_PID=""
    unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
}

write_proxy_config() { # FILE
    cat >"$1" <<EOF
default_upstream = "docker.io"
# Longer than the whole run: the warm rounds must be answered without asking the upstream.
# (Revalidation after the TTL is checked on short.local.)
tag_ttl = "10m"

[[upstream]]
alias = "docker.io"
url = "http://$UP"
insecure = true
other_names = ["index.docker.io", "registry-1.docker.io"]
# library_prefix is true by default for docker.io: multiarch => library/multiarch

[[upstream]]
alias = "secure.local"
url = "http://$SEC"
insecure = true
username = "$TOKEN_USER"
password = "$TOKEN_PASSWORD"

[[upstream]]
alias = "nocreds.local"
url = "http://$SEC"
insecure = true

[[upstream]]
alias = "short.local"
url = "http://$UP"
insecure = true
tag_ttl = "1s"

$PT_STORE_TOML
EOF
}

# The admin API (/_pullthrough/) is on in these runs: the lifecycle checks use it.
ADMIN_TOKEN=e2e-admin-token-0123456789abcdef-0123456789
start_proxy() {
    echo "==== pullthrough start (store $PT_STORE) ====" >>"$PT_LOG"
    PULLTHROUGH_ADMIN_TOKEN=$ADMIN_TOKEN NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} start_bg "pullthrough on $PROXY" "$PT_LOG" \
        "$BIN" serve --listen "$PROXY" --store "$PT_STORE" --config "$WORK/pullthrough.toml"
    PT_PID=$LAST_PID
    wait_http "http://$PROXY/v2/" "$PT_PID" pullthrough
}
stop_proxy() {
    stop_pid "$PT_PID"
    PT_PID=""
}

# ---------------------------------------------------------------------------------------------
# 5. Checks through the proxy
# ---------------------------------------------------------------------------------------------

# distribution's access log (combined format): "GET /v2/<name>/manifests/<ref> HTTP/1.1" ...
MANIFEST_GET='"GET /v2/[^ ]+/manifests/[^ ]+ HTTP/'
MANIFEST_HEAD='"HEAD /v2/[^ ]+/manifests/[^ ]+ HTTP/'
ANY_V2='"[A-Z]+ /v2/[^ ]* HTTP/'

# ctr_mirror_check NS REPO:TAG DIGEST: pulls NS/REPO:TAG with a hosts.toml that makes the proxy
# the mirror of NS (the `server` is a closed port, so only the proxy can have answered);
# containerd then asks the proxy with ?ns=NS.
ctr_mirror_check() {
    local ns=$1 ref=$2 digest=$3 hosts=$WORK/hosts
    mkdir -p "$hosts/$ns"
    cat >"$hosts/$ns/hosts.toml" <<EOF
server = "http://127.0.0.1:$P_DEAD"

[host."http://$PROXY"]
  capabilities = ["pull", "resolve"]
EOF
    timeout "$CLIENT_TIMEOUT" ctr --debug --address "$CTD/containerd.sock" -n e2e images pull --hosts-dir "$hosts" \
        --snapshotter native "$ns/$ref" 2>"$CUR_OUT.debug" || { tail -n 20 "$CUR_OUT.debug"; return 1; }
    local repo=${ref%:*} tag=${ref##*:}
    grep -m 2 -F "url=\"http://$PROXY/v2/$repo/manifests/$tag?ns=$ns\"" "$CUR_OUT.debug" || true
    grep -qF "url=\"http://$PROXY/v2/$repo/manifests/$tag?ns=$ns\"" "$CUR_OUT.debug" ||
        { echo "containerd did not ask the proxy with ?ns=$ns"; return 1; }
    if grep -F "127.0.0.1:$P_DEAD" "$CUR_OUT.debug" | grep 'url=' >/dev/null; then
        echo "containerd fell back to the server"
        return 1
    fi
    ctr_digest_is "$ns/$ref" "$digest"
}

# One round of client pulls through the proxy. ROUND: cold | warm | restarted.
client_round() {
    local round=$1 p="[$STORE] $1:" key up ref creds f repo
    CUR_OUT=$WORK/out/$STORE-$round

    # skopeo inspect --raw: byte for byte what the upstream serves
    while IFS='|' read -r key up ref creds; do
        check "$p skopeo inspect --raw $ref == upstream" inspect_check "$key" "$ref"
    done <"$INSPECT_TABLE"

    # skopeo copy --all: every fixture by tag, by digest, lists also by a child digest
    for f in multiarch dockerlist manylayers big artifact; do
        repo=$(fx "$f" REPO)
        check "$p skopeo copy --all $f by tag" copy_check "$repo:$(fx "$f" TAG)" "$(fx "$f" DIGEST)"
        check "$p skopeo copy --all $f by digest" copy_check "$repo@$(fx "$f" DIGEST)" "$(fx "$f" DIGEST)"
    done
    check "$p skopeo copy multiarch by child digest (arm64)" copy_check \
        "$MULTIARCH_REPO@$MULTIARCH_CHILD_ARM64" "$MULTIARCH_CHILD_ARM64"
    check "$p skopeo copy multiarch by child digest (attestation)" copy_check \
        "$MULTIARCH_REPO@$MULTIARCH_CHILD_ATTESTATION" "$MULTIARCH_CHILD_ATTESTATION"
    check "$p skopeo copy dockerlist by child digest (amd64)" copy_check \
        "$DOCKERLIST_REPO@$DOCKERLIST_CHILD_AMD64" "$DOCKERLIST_CHILD_AMD64"
    check "$p skopeo copy --all secure.local (token auth) by tag" copy_check \
        "secure.local/$SECURE_REPO:v1" "$MULTIARCH_DIGEST"

    # podman (fresh storage each round)
    POD=$WORK/podman-$STORE-$round
    POD_RUN=$RUNROOTS/$STORE-$round
    check "$p podman pull <proxy>/$MULTIARCH_SHORT:$MULTIARCH_TAG (OCI index)" podman_check \
        "$PROXY/$MULTIARCH_SHORT:$MULTIARCH_TAG" "$MULTIARCH_DIGEST" "$MULTIARCH_CHILD_AMD64" \
        "$MULTIARCH_CHILD_CONFIG_AMD64" "" "/v2/$MULTIARCH_SHORT/manifests/$MULTIARCH_TAG"
    check "$p podman pull docker.io/$DOCKERLIST_REPO:$DOCKERLIST_TAG via registries.conf mirror (Docker list)" \
        podman_check "docker.io/$DOCKERLIST_REPO:$DOCKERLIST_TAG" "$DOCKERLIST_DIGEST" \
        "$DOCKERLIST_CHILD_AMD64" "$DOCKERLIST_CHILD_CONFIG_AMD64" "" \
        "/v2/docker.io/$DOCKERLIST_REPO/manifests/$DOCKERLIST_TAG"
    check "$p podman pull $MANYLAYERS_REPO ($MANYLAYERS_LAYERS layers)" podman_check \
        "$PROXY/$MANYLAYERS_REPO:$MANYLAYERS_TAG" "$MANYLAYERS_DIGEST" "$MANYLAYERS_DIGEST" \
        "$MANYLAYERS_CONFIG" "$MANYLAYERS_LAYERS"
    rm -rf "$POD" "$POD_RUN"

    # containerd (fresh daemon each round)
    if ctd_start "$STORE-$round" >"$CUR_OUT.ctd" 2>&1; then
        check "$p ctr pull --plain-http $MULTIARCH_REPO (OCI index + attestation)" ctr_plain_check \
            "$MULTIARCH_REPO:$MULTIARCH_TAG" "$MULTIARCH_DIGEST"
        check "$p ctr pull --plain-http $BIG_REPO ($((BIG_LAYER_SIZE >> 20)) MiB layer, unpacked)" \
            ctr_plain_check "$BIG_REPO:$BIG_TAG" "$BIG_DIGEST"
        check "$p ctr pull docker.io/$DOCKERLIST_REPO via hosts.toml mirror (?ns=docker.io)" \
            ctr_mirror_check docker.io "$DOCKERLIST_REPO:$DOCKERLIST_TAG" "$DOCKERLIST_DIGEST"
        check "$p ctr pull secure.local/$SECURE_REPO via hosts.toml mirror (?ns=secure.local, token auth)" \
            ctr_mirror_check secure.local "$SECURE_REPO:v1" "$MULTIARCH_DIGEST"
        ctd_stop
        rm -rf "$CTD"
    else
        fail_now "$p containerd daemon start" "$(tail -n 5 "$CUR_OUT.ctd")"
    fi
}

# --- one-off checks (run once per store, after the cold round) --------------------------------

digest_header_matches_body() {
    curl -sSf -D "$CUR_OUT.h" -o "$CUR_OUT.b" -H 'Accept: application/vnd.oci.image.index.v1+json' \
        "http://$PROXY/v2/$MULTIARCH_REPO/manifests/$MULTIARCH_TAG"
    cat "$CUR_OUT.h"
    local hdr body
    hdr=$(grep -i '^docker-content-digest:' "$CUR_OUT.h" | tr -d '\r' | awk '{print $2}')
    body=sha256:$(sha256sum <"$CUR_OUT.b" | cut -d' ' -f1)
    [[ $hdr == "$body" && $body == "$MULTIARCH_DIGEST" ]]
}

blob_range() {
    local layer hex
    layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"])' \
        "$BIG_PATH/blobs/sha256/${BIG_DIGEST#sha256:}")
    hex=${layer#sha256:}
    local code
    code=$(curl -s -o "$CUR_OUT.range" -D "$CUR_OUT.h" -w '%{http_code}' -H 'Range: bytes=1000000-1999999' \
        "http://$PROXY/v2/$BIG_REPO/blobs/$layer")
    cat "$CUR_OUT.h"
    [[ $code == 206 ]]
    grep -qi "^content-range: bytes 1000000-1999999/$BIG_LAYER_SIZE" "$CUR_OUT.h"
    cmp "$CUR_OUT.range" <(tail -c "+1000001" "$BIG_PATH/blobs/sha256/$hex" | head -c 1000000)
    # HEAD: the size, no body
    curl -sSf -I "http://$PROXY/v2/$BIG_REPO/blobs/$layer" | tr -d '\r' |
        grep -i "^content-length: $BIG_LAYER_SIZE$"
}

blob_redirect_s3() {
    # S3 store: a cached blob GET is a 307 to a presigned GET on the S3 server (no bytes through
    # the proxy), which serves the blob without credentials; the bare URL is refused.
    local layer code loc
    layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"])' \
        "$BIG_PATH/blobs/sha256/${BIG_DIGEST#sha256:}")
    code=$(command curl --max-time 30 -s -o /dev/null -D "$CUR_OUT.h" -w '%{http_code}' \
        "http://$PROXY/v2/$BIG_REPO/blobs/$layer")
    cat "$CUR_OUT.h"
    [[ $code == 307 ]]
    loc=$(tr -d '\r' <"$CUR_OUT.h" | awk -F': ' 'tolower($1) == "location" {print $2}')
    [[ $loc == "http://127.0.0.1:$P_S3/$S3_BUCKET/e2e/blobs/sha256/${layer#sha256:}?"*X-Amz-Signature=* ]]
    [[ sha256:$(command curl -sSf --max-time 120 "$loc" | sha256sum | cut -d' ' -f1) == "$layer" ]]
    code=$(command curl -s -o /dev/null -w '%{http_code}' --max-time 30 "${loc%%\?*}")
    echo "unsigned GET of the object: $code"
    [[ $code == 403 ]]
}

referrers_json_error() {
    local code
    code=$(curl -s -o "$CUR_OUT.b" -D "$CUR_OUT.h" -w '%{http_code}' \
        "http://$PROXY/v2/$MULTIARCH_REPO/referrers/$MULTIARCH_CHILD_AMD64")
    cat "$CUR_OUT.h" "$CUR_OUT.b"
    echo
    # distribution 2.8 has no referrers API (a text/plain 404): an OCI JSON 404, clients then use
    # the sha256-<hex> tag schema, which the inspect checks cover.
    [[ $code == 404 ]]
    grep -qi '^content-type: application/json' "$CUR_OUT.h"
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["errors"][0]; assert e["code"] and e["message"]' "$CUR_OUT.b"
}

unknown_registry_refused() {
    local before code
    before=$(lines "$UP_LOG")
    code=$(curl -s -o "$CUR_OUT.b" -w '%{http_code}' "http://$PROXY/v2/evil.example/x/manifests/v1")
    cat "$CUR_OUT.b"
    echo
    [[ $code == 404 ]]
    grep -q '"NAME_UNKNOWN"' "$CUR_OUT.b"
    [[ $(since "$UP_LOG" "$before" | count "$ANY_V2") == 0 ]]
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary '{}' \
        "http://$PROXY/v2/$MANYLAYERS_REPO/manifests/v2")
    echo "PUT manifest: $code"
    [[ $code == 405 ]]
}

nocreds_denied() {
    local code
    code=$(curl -s -o "$CUR_OUT.b" -w '%{http_code}' "http://$PROXY/v2/nocreds.local/$SECURE_REPO/manifests/v1")
    cat "$CUR_OUT.b"
    echo
    [[ $code == 403 ]]
    grep -q '"DENIED"' "$CUR_OUT.b"
}

secure_token_used() {
    # The proxy fetched tokens with its configured credentials, for the pull scope only.
    since "$TOK_LOG" "$TOK_BEFORE" | sort | uniq -c
    [[ $(since "$TOK_LOG" "$TOK_BEFORE" | count "token-request user=$TOKEN_USER scopes=repository:$SECURE_REPO:pull status=200") -gt 0 ]]
    [[ $(since "$TOK_LOG" "$TOK_BEFORE" | count "user=$TOKEN_USER .*push") == 0 ]]
}

tag_ttl_revalidates() {
    local url="http://$PROXY/v2/short.local/$MANYLAYERS_REPO/manifests/$MANYLAYERS_TAG" before d1 d2
    local accept='Accept: application/vnd.oci.image.manifest.v1+json'
    before=$(lines "$UP_LOG")
    d1=$(curl -sSf -H "$accept" "$url" | sha256sum | cut -d' ' -f1)
    sleep 1.5 # tag_ttl of short.local is 1s
    d2=$(curl -sSf -H "$accept" "$url" | sha256sum | cut -d' ' -f1)
    since "$UP_LOG" "$before" | grep -E "$ANY_V2" || true
    [[ sha256:$d1 == "$MANYLAYERS_DIGEST" && $d2 == "$d1" ]]
    # first request: one GET; after the TTL: one HEAD (same digest), no second GET
    [[ $(since "$UP_LOG" "$before" | count "$MANIFEST_GET") == 1 ]]
    [[ $(since "$UP_LOG" "$before" | count "$MANIFEST_HEAD") == 1 ]]
}

concurrent_cold_pulls() {
    # Two clients pull the same uncached image at once: one upstream fetch per blob (single-flight).
    local before layer
    layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"])' \
        "$BIG_PATH/blobs/sha256/${BIG_DIGEST#sha256:}")
    before=$(lines "$UP_LOG")
    sk copy --all --preserve-digests --src-tls-verify=false "docker://$PROXY/$BIG_REPO:$BIG_TAG" "dir:$CUR_OUT.c1" &
    local a=$!
    sk copy --all --preserve-digests --src-tls-verify=false "docker://$PROXY/$BIG_REPO:$BIG_TAG" "dir:$CUR_OUT.c2" &
    local b=$!
    wait "$a"
    wait "$b"
    python3 "$E2E_DIR/verify_dir.py" "$CUR_OUT.c1" "$BIG_DIGEST"
    python3 "$E2E_DIR/verify_dir.py" "$CUR_OUT.c2" "$BIG_DIGEST"
    rm -rf "$CUR_OUT.c1" "$CUR_OUT.c2"
    since "$UP_LOG" "$before" | grep -E "$ANY_V2" || true
    [[ $(since "$UP_LOG" "$before" | count "\"GET /v2/$BIG_REPO/blobs/$layer ") == 1 ]]
    [[ $(since "$UP_LOG" "$before" | count "\"GET /v2/$BIG_REPO/manifests/") == 1 ]]
}

tag_moves_upstream() {
    # A tag that moves upstream: a 10m-TTL alias keeps serving what it has; the 1s-TTL alias
    # (short.local) sees the new digest after its TTL (HEAD differs -> GET).
    local url="/e2e/moving/manifests/latest" before
    sk copy -q --all --preserve-digests --dest-tls-verify=false "oci:$MANYLAYERS_PATH:$MANYLAYERS_REF" \
        "docker://$UP/e2e/moving:latest"
    digest_of() { echo "sha256:$(curl -sSf "http://$PROXY/v2/$1$url" | sha256sum | cut -d' ' -f1)"; }
    [[ $(digest_of docker.io) == "$MANYLAYERS_DIGEST" ]]
    [[ $(digest_of short.local) == "$MANYLAYERS_DIGEST" ]]
    sk copy -q --all --preserve-digests --dest-tls-verify=false "dir:$DOCKERLIST_PATH" \
        "docker://$UP/e2e/moving:latest"
    before=$(lines "$UP_LOG")
    sleep 1.5
    local d_long d_short
    d_long=$(digest_of docker.io)
    d_short=$(digest_of short.local)
    echo "docker.io (TTL 10m): $d_long; short.local (TTL 1s): $d_short"
    since "$UP_LOG" "$before" | grep -E "$ANY_V2" || true
    [[ $d_long == "$MANYLAYERS_DIGEST" && $d_short == "$DOCKERLIST_DIGEST" ]]
    [[ $(since "$UP_LOG" "$before" | count "$MANIFEST_HEAD") == 1 ]]
    [[ $(since "$UP_LOG" "$before" | count "$MANIFEST_GET") == 1 ]]
}

accept_negotiation() {
    # A schema2-only client asking for a Docker list tag gets its linux/amd64 child, as from the
    # upstream; an OCI-manifest-only client of an OCI index gets the amd64 child (Docker Hub's way).
    local s2='application/vnd.docker.distribution.manifest.v2+json'
    local oci='application/vnd.oci.image.manifest.v1+json' code
    curl -sSf -o "$CUR_OUT.up" -H "Accept: $s2" "http://$UP/v2/$DOCKERLIST_REPO/manifests/$DOCKERLIST_TAG"
    curl -sSf -o "$CUR_OUT.px" -D "$CUR_OUT.h" -H "Accept: $s2" "http://$PROXY/v2/$DOCKERLIST_REPO/manifests/$DOCKERLIST_TAG"
    cat "$CUR_OUT.h"
    cmp "$CUR_OUT.up" "$CUR_OUT.px"
    [[ sha256:$(sha256sum <"$CUR_OUT.px" | cut -d' ' -f1) == "$DOCKERLIST_CHILD_AMD64" ]]
    grep -i "^docker-content-digest: $DOCKERLIST_CHILD_AMD64" "$CUR_OUT.h"
    grep -i "^content-type: $s2" "$CUR_OUT.h"
    curl -sSf -o "$CUR_OUT.px" -D "$CUR_OUT.h" -H "Accept: $oci" "http://$PROXY/v2/$MULTIARCH_REPO/manifests/$MULTIARCH_TAG"
    [[ sha256:$(sha256sum <"$CUR_OUT.px" | cut -d' ' -f1) == "$MULTIARCH_CHILD_AMD64" ]]
    # neither the index nor an acceptable child: 404 MANIFEST_UNKNOWN, as from the upstream
    code=$(curl -s -o "$CUR_OUT.px" -w '%{http_code}' -H "Accept: $s2" "http://$PROXY/v2/$MULTIARCH_REPO/manifests/$MULTIARCH_TAG")
    cat "$CUR_OUT.px"
    echo
    [[ $code == 404 ]]
    grep '"MANIFEST_UNKNOWN"' "$CUR_OUT.px"
}

schema1_pulls() {
    # Through the proxy the schema1 image is known by the upstream's (payload) digest: skopeo
    # inspect by tag names it, a copy by that digest works, and so does a copy by tag with
    # --preserve-digests (which fails on any other digest).
    local got want
    want=$(cat "$WORK/schema1.digest")
    got=$(sk inspect --tls-verify=false --format '{{.Digest}}' "docker://$PROXY/$SCHEMA1_REPO:v1")
    echo "proxy: $got, upstream: $want"
    [[ -n $want && $got == "$want" ]]
    rm -rf "$CUR_OUT.s1a" "$CUR_OUT.s1b"
    sk copy --src-tls-verify=false "docker://$PROXY/$SCHEMA1_REPO@$want" "dir:$CUR_OUT.s1a"
    sk copy --preserve-digests --src-tls-verify=false "docker://$PROXY/$SCHEMA1_REPO:v1" "dir:$CUR_OUT.s1b"
    rm -rf "$CUR_OUT.s1a" "$CUR_OUT.s1b"
}

tags_list_relayed() {
    curl -sSf -o "$CUR_OUT.up" "http://$UP/v2/$MULTIARCH_REPO/tags/list"
    curl -sSf -o "$CUR_OUT.px" "http://$PROXY/v2/$MULTIARCH_SHORT/tags/list"
    cat "$CUR_OUT.up" "$CUR_OUT.px"
    python3 - "$CUR_OUT.up" "$CUR_OUT.px" <<'PY'
import json, sys
up, px = (json.load(open(p)) for p in sys.argv[1:])
assert sorted(up["tags"]) == sorted(px["tags"]), (up, px)
PY
}

upstream_down() {
    # The upstream is stopped (by the caller). A tag past its TTL: the cached manifest with a
    # Warning; something never cached: 503 UNAVAILABLE; cached blobs are still served.
    local code
    sleep 1.2 # short.local's TTL (1s) has certainly passed
    code=$(curl -s -o "$CUR_OUT.px" -D "$CUR_OUT.h" -w '%{http_code}' \
        "http://$PROXY/v2/short.local/$MANYLAYERS_REPO/manifests/$MANYLAYERS_TAG")
    cat "$CUR_OUT.h"
    [[ $code == 200 ]]
    [[ sha256:$(sha256sum <"$CUR_OUT.px" | cut -d' ' -f1) == "$MANYLAYERS_DIGEST" ]]
    grep -i '^warning: 299 - "stale: short.local unreachable' "$CUR_OUT.h"
    code=$(curl -s -o "$CUR_OUT.px" -w '%{http_code}' "http://$PROXY/v2/short.local/$DOCKERLIST_REPO/manifests/$DOCKERLIST_TAG")
    cat "$CUR_OUT.px"
    echo
    [[ $code == 503 ]]
    grep '"UNAVAILABLE"' "$CUR_OUT.px"
    code=$(curl -s -o "$CUR_OUT.px" -w '%{http_code}' "http://$PROXY/v2/$MANYLAYERS_REPO/blobs/$MANYLAYERS_CONFIG")
    [[ $code == 200 ]]
    [[ sha256:$(sha256sum <"$CUR_OUT.px" | cut -d' ' -f1) == "$MANYLAYERS_CONFIG" ]]
}

cold_blob_range() {
    # A blob pushed straight to the upstream, never pulled: HEAD asks the upstream without
    # copying; a Range GET copies it once and answers 206; the full GET then comes from the store.
    local rb=$CUR_OUT.rawblob d loc before code
    head -c 3000000 /dev/urandom >"$rb"
    d=sha256:$(sha256sum <"$rb" | cut -d' ' -f1)
    loc=$(curl -sSf -D - -o /dev/null -X POST "http://$UP/v2/e2e/rawblob/blobs/uploads/" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "location" {print $2}')
    [[ $loc == /* ]] && loc=http://$UP$loc
    curl -sSf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$rb" \
        "$loc&digest=$d"
    before=$(lines "$UP_LOG")
    curl -sSf -I "http://$PROXY/v2/e2e/rawblob/blobs/$d" | tr -d '\r' | grep -i '^content-length: 3000000$'
    [[ $(since "$UP_LOG" "$before" | count '"GET /v2/e2e/rawblob/blobs/') == 0 ]]
    code=$(curl -s -o "$CUR_OUT.range" -D "$CUR_OUT.h" -w '%{http_code}' -H 'Range: bytes=100-199' \
        "http://$PROXY/v2/e2e/rawblob/blobs/$d")
    cat "$CUR_OUT.h"
    [[ $code == 206 ]]
    cmp "$CUR_OUT.range" <(tail -c +101 "$rb" | head -c 100)
    curl -sSf "http://$PROXY/v2/e2e/rawblob/blobs/$d" | cmp - "$rb"
    since "$UP_LOG" "$before" | grep -E "$ANY_V2" || true
    [[ $(since "$UP_LOG" "$before" | count '"GET /v2/e2e/rawblob/blobs/') == 1 ]]
    rm -f "$rb"
}

blob_isolation() {
    # The big layer is in the store (for e2e/big), but e2e/dockerlist does not have it upstream:
    # the proxy must ask (HEAD) and refuse, never serve it under that name.
    local layer code before
    layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"])' \
        "$BIG_PATH/blobs/sha256/${BIG_DIGEST#sha256:}")
    before=$(lines "$UP_LOG")
    code=$(curl -s -o "$CUR_OUT.b" -w '%{http_code}' "http://$PROXY/v2/$DOCKERLIST_REPO/blobs/$layer")
    cat "$CUR_OUT.b"
    echo
    since "$UP_LOG" "$before" | grep -E "$ANY_V2" || true
    [[ $code == 404 ]]
    grep '"BLOB_UNKNOWN"' "$CUR_OUT.b"
    [[ $(since "$UP_LOG" "$before" | count "\"GET /v2/$DOCKERLIST_REPO/blobs/") == 0 ]]
}

cold_upstream_once() {
    # In the cold round every manifest and blob came from the upstream at most once.
    local win dups
    win=$(since "$UP_LOG" "$UP_BEFORE")
    echo "upstream requests in the cold round: $(count "$ANY_V2" <<<"$win") ($(count "$MANIFEST_GET" <<<"$win") manifest GETs)"
    [[ $(count "$MANIFEST_GET" <<<"$win") -gt 0 ]]
    dups=$(grep -oE '"GET /v2/[^ ]+/(manifests|blobs)/[^ ]+ ' <<<"$win" | sort | uniq -d || true)
    [[ -z $dups ]] || { echo "fetched more than once:"; echo "$dups"; return 1; }
}

warm_no_manifest_gets() {
    local up sec
    up=$(since "$UP_LOG" "$UP_BEFORE" | count "$MANIFEST_GET")
    sec=$(since "$SEC_LOG" "$SEC_BEFORE" | count "$MANIFEST_GET")
    echo "manifest GETs: upstream $up, token-auth upstream $sec"
    since "$UP_LOG" "$UP_BEFORE" | grep -E "$MANIFEST_GET" || true
    since "$SEC_LOG" "$SEC_BEFORE" | grep -E "$MANIFEST_GET" || true
    [[ $up == 0 && $sec == 0 ]]
}

warm_no_upstream_at_all() {
    local up sec tok served
    up=$(since "$UP_LOG" "$UP_BEFORE" | count "$ANY_V2")
    sec=$(since "$SEC_LOG" "$SEC_BEFORE" | count "$ANY_V2")
    tok=$(since "$TOK_LOG" "$TOK_BEFORE" | count 'token-request')
    served=$(since "$PT_LOG" "$PT_BEFORE" | count ' request method=')
    echo "proxy served $served requests; upstream saw $up, token-auth upstream $sec, token server $tok"
    since "$UP_LOG" "$UP_BEFORE" | grep -E "$ANY_V2" | head -n 20 || true
    since "$SEC_LOG" "$SEC_BEFORE" | grep -E "$ANY_V2" | head -n 20 || true
    [[ $served -gt 100 && $up == 0 && $sec == 0 && $tok == 0 ]]
}

warm_store_calls() {
    # A warm tag costs at most one store read (zero when in memory): X-Pullthrough-Store-Calls.
    local n
    n=$(curl -sSf -o /dev/null -D - -H 'Accept: application/vnd.oci.image.index.v1+json' \
        "http://$PROXY/v2/$MULTIARCH_REPO/manifests/$MULTIARCH_TAG" |
        tr -d '\r' | awk -F': ' 'tolower($1) == "x-pullthrough-store-calls" {print $2}')
    echo "x-pullthrough-store-calls: $n"
    [[ -n $n && $n -le 1 ]]
}

# --- operations: health, metrics, the admin API and the lifecycle commands beside the server ---

# pt_cli COMMAND [ARGS...]: the pullthrough binary on the proxy's store and configuration.
pt_cli() { timeout "$CLIENT_TIMEOUT" "$BIN" "$@" --store "$PT_STORE" --config "$WORK/pullthrough.toml"; }

# admin OPERATION JSON: POST to the admin API with the token; the JSON report on stdout.
admin() {
    curl -sSf -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
        --data "$2" "http://$PROXY/_pullthrough/$1"
    echo
}

ops_health_metrics() {
    curl -sSf "http://$PROXY/healthz"
    echo
    curl -sSf "http://$PROXY/readyz"
    echo
    curl -sSf "http://$PROXY/metrics" >"$CUR_OUT.metrics"
    # Every line is a comment or `name{labels} value` (the Rust tests parse it with a real parser).
    if grep -vE '^(#.*|[a-z_]+(\{[^}]*\})? [-+0-9.eE]+|[a-z_]+(\{[^}]*\})? [+-]?Inf|)$' "$CUR_OUT.metrics"; then
        echo "lines above are not Prometheus text format"
        return 1
    fi
    # This process (restarted before the operations) has served warm pulls only: hits, and no
    # upstream request at all.
    grep -E '^pullthrough_cache_lookups_total\{.*result="hit"' "$CUR_OUT.metrics"
    grep -E '^pullthrough_requests_total\{endpoint="blob"' "$CUR_OUT.metrics"
    if grep -E '^pullthrough_upstream_requests_total\{' "$CUR_OUT.metrics"; then
        echo "a warm process made upstream requests"
        return 1
    fi
}

ops_admin_refuses() {
    local code
    code=$(curl -s -o "$CUR_OUT.b" -w '%{http_code}' -X POST --data '{"refs":["x:y"]}' \
        "http://$PROXY/_pullthrough/purge")
    cat "$CUR_OUT.b"
    echo
    [[ $code == 401 ]]
    code=$(curl -s -o "$CUR_OUT.b" -w '%{http_code}' -X POST -H "Authorization: Bearer ${ADMIN_TOKEN}x" \
        --data '{"refs":["x:y"]}' "http://$PROXY/_pullthrough/purge")
    [[ $code == 401 ]]
}

ops_gc_keeps_live() {
    # Everything was pulled minutes ago: gc with the default retention keeps all a pull needs.
    local before
    pt_cli gc | tail -n 5
    pt_cli verify | tail -n 2
    pt_cli ls | head -n 20
    before=$(lines "$UP_LOG")
    copy_check "$MULTIARCH_REPO:$MULTIARCH_TAG" "$MULTIARCH_DIGEST"
    copy_check "$BIG_REPO:$BIG_TAG" "$BIG_DIGEST"
    since "$UP_LOG" "$before" | grep -E "$ANY_V2" || true
    [[ $(since "$UP_LOG" "$before" | count "$ANY_V2") == 0 ]]
}

ops_purge_refetches() {
    # Purged through the admin API (the server forgets it too): the next pull asks the upstream.
    local before
    admin purge "{\"refs\":[\"$MULTIARCH_REPO:$MULTIARCH_TAG\"]}"
    before=$(lines "$UP_LOG")
    copy_check "$MULTIARCH_REPO:$MULTIARCH_TAG" "$MULTIARCH_DIGEST"
    since "$UP_LOG" "$before" | grep -E "$ANY_V2" || true
    [[ $(since "$UP_LOG" "$before" | count "\"GET /v2/$MULTIARCH_REPO/manifests/$MULTIARCH_TAG ") == 1 ]]
}

ops_gc_evicts_and_refills() {
    # A size limit of 1 MiB and no grace (nothing pulls meanwhile, and this run is faster than
    # any grace worth having) evict the big image; verify accepts the store, and a pull refills
    # it from the upstream, fetching its layer once.
    local before layer
    layer=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"])' \
        "$BIG_PATH/blobs/sha256/${BIG_DIGEST#sha256:}")
    admin gc '{"olderThan":"30d","grace":"0s","maxSize":"1MiB"}' >"$CUR_OUT.gc"
    head -c 600 "$CUR_OUT.gc"
    echo
    grep -F "\"key\":\"blobs/sha256/${layer#sha256:}\"" "$CUR_OUT.gc" >/dev/null ||
        { echo "the big layer was not removed"; return 1; }
    pt_cli verify | tail -n 2
    before=$(lines "$UP_LOG")
    copy_check "$BIG_REPO:$BIG_TAG" "$BIG_DIGEST"
    since "$UP_LOG" "$before" | grep -E "$ANY_V2" || true
    [[ $(since "$UP_LOG" "$before" | count "\"GET /v2/$BIG_REPO/blobs/$layer ") == 1 ]]
    pt_cli verify | tail -n 2
}

ops_prefetch() {
    # prefetch (the command, beside the server) warms every platform of the index.
    pt_cli prefetch "$MULTIARCH_REPO:$MULTIARCH_TAG" "$MANYLAYERS_REPO:$MANYLAYERS_TAG"
}

ops_prefetched_pull_upstream_down() {
    # The upstream is stopped (by the caller): what prefetch stored pulls whole.
    copy_check "$MULTIARCH_REPO:$MULTIARCH_TAG" "$MULTIARCH_DIGEST"
    copy_check "$MANYLAYERS_REPO:$MANYLAYERS_TAG" "$MANYLAYERS_DIGEST"
}

snapshot_logs() {
    UP_BEFORE=$(lines "$UP_LOG")
    SEC_BEFORE=$(lines "$SEC_LOG")
    TOK_BEFORE=$(lines "$TOK_LOG")
    PT_BEFORE=$(lines "$PT_LOG")
}

test_store() {
    STORE=$1
    local p="[$STORE]"
    STAGE="store $STORE"
    if ! declare -F "store_up_$STORE" >/dev/null; then
        fail_now "$p store setup" "unknown store '$STORE' (PULLTHROUGH_E2E_STORES); known: fs s3"
        return 0
    fi
    PT_STORE="" PT_STORE_TOML=""
    if ! "store_up_$STORE" >"$WORK/store-$STORE-setup.log" 2>&1; then
        fail_now "$p store setup" "$(tail -n 3 "$WORK/store-$STORE-setup.log")"
        return 0
    fi
    write_proxy_config "$WORK/pullthrough.toml"
    start_proxy

    # -- cold: everything comes from the upstreams once
    local t=$SECONDS
    CUR_OUT=$WORK/out/$STORE-misc
    check "$p cold: two concurrent pulls of $BIG_REPO share one upstream fetch" concurrent_cold_pulls
    snapshot_logs
    STAGE="store $STORE: cold round"
    log "$p cold round ($(elapsed))"
    client_round cold
    CUR_OUT=$WORK/out/$STORE-misc
    check "$p cold: each manifest and blob was fetched from the upstream at most once" cold_upstream_once
    check "$p cold: token-auth upstream used the configured credentials (pull scope)" secure_token_used
    check "$p Docker-Content-Digest is the sha256 of the body" digest_header_matches_body
    check "$p blob Range request (206, right bytes) and HEAD (size)" blob_range
    if [[ $STORE == s3 ]]; then
        check "$p blob GET: 307 to a presigned URL on the S3 server, which serves the bytes" \
            blob_redirect_s3
    fi
    check "$p uncached blob: HEAD without copying, Range GET copies once (206)" cold_blob_range
    check "$p a cached blob is not served for a repository the upstream says lacks it" blob_isolation
    check "$p referrers on an upstream without the API: OCI JSON 404" referrers_json_error
    check "$p unconfigured registry prefix refused without an upstream call; push refused (405)" \
        unknown_registry_refused
    check "$p token-auth upstream without credentials: 403 DENIED" nocreds_denied
    check "$p tag TTL expiry: one upstream HEAD, no second GET" tag_ttl_revalidates
    check "$p tag moved upstream: kept within the TTL, new digest after it" tag_moves_upstream
    check "$p Accept negotiation: single-manifest clients get the linux/amd64 child" accept_negotiation
    check "$p tags/list relayed from the upstream" tags_list_relayed
    check "$p signed schema1 (re-signed upstream): inspect, copy by payload digest, --preserve-digests" \
        schema1_pulls
    STAGE="store $STORE: stopping the upstream"
    stop_pid "$UP_PID"
    check "$p upstream down: stale tag served with Warning 299, uncached 503, cached blob 200" upstream_down
    STAGE="store $STORE: restarting the upstream"
    start_upstream
    log "$p cold round took $((SECONDS - t))s"

    # -- warm: the same pulls, nothing may reach the upstreams
    t=$SECONDS
    snapshot_logs
    STAGE="store $STORE: warm round"
    log "$p warm round ($(elapsed))"
    client_round warm
    CUR_OUT=$WORK/out/$STORE-misc
    check "$p warm: a tag costs at most one store call" warm_store_calls
    check "$p warm: zero manifest GETs to the upstreams" warm_no_manifest_gets
    check "$p warm: zero upstream requests of any kind (manifests, blobs, tokens)" warm_no_upstream_at_all
    log "$p warm round took $((SECONDS - t))s"

    # -- restarted: a new process with cold memory and the same store
    STAGE="store $STORE: restarting pullthrough"
    stop_proxy
    start_proxy
    t=$SECONDS
    snapshot_logs
    STAGE="store $STORE: restarted round"
    log "$p restarted round ($(elapsed))"
    client_round restarted
    CUR_OUT=$WORK/out/$STORE-misc
    check "$p restarted: zero manifest GETs to the upstreams" warm_no_manifest_gets
    check "$p restarted: zero upstream requests of any kind" warm_no_upstream_at_all
    log "$p restarted round took $((SECONDS - t))s"

    # -- operations: health, metrics, admin API, gc, purge, prefetch beside the live server
    STAGE="store $STORE: operations"
    log "$p operations ($(elapsed))"
    CUR_OUT=$WORK/out/$STORE-ops
    check "$p /healthz, /readyz, /metrics (Prometheus text, hits counted)" ops_health_metrics
    check "$p admin API refuses a missing or wrong token (401)" ops_admin_refuses
    check "$p gc (default retention) keeps every live image: 0 upstream requests after" ops_gc_keeps_live
    check "$p purge through the admin API: the next pull asks the upstream" ops_purge_refetches
    check "$p gc --max-size evicts the big image; verify accepts the store; a pull refills it" \
        ops_gc_evicts_and_refills
    check "$p prefetch of a multi-arch tag and a 24-layer image" ops_prefetch
    STAGE="store $STORE: stopping the upstream (prefetched)"
    stop_pid "$UP_PID"
    check "$p prefetched images pull whole with the upstream down" ops_prefetched_pull_upstream_down
    STAGE="store $STORE: restarting the upstream"
    start_upstream

    check "$p no panic in the pullthrough log" no_panics
    stop_proxy
    "store_down_$STORE" || true
}

for store in $STORES; do
    test_store "$store"
done

finish

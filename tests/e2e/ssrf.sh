# shellcheck shell=bash
# shellcheck disable=SC2034  # STAGE is run.sh's (what its EXIT trap reports)
# The SSRF section of tests/e2e/run.sh (sourced by it; `bash tests/e2e/run.sh ssrf` runs it
# alone). See tests/e2e/README.md, "The SSRF section".
#
# The guard of src/upstream/guard.rs is on only for an upstream whose configured host is public,
# and every other test upstream lives on 127.0.0.1. So this section builds a network namespace
# whose loopback also carries public-looking addresses (isolated: nothing leaves it), and runs
# everything inside it:
#
#   34.1.2.3:5000         the "public" upstream (ssrf_servers.py registry): blob and manifest
#                         answers of repository ssrf/<scenario> are hostile redirects or token
#                         challenges, as $SSRF_DIR/scenarios.json says
#   127.0.0.1:5001        the same registry program as a LAN upstream (the guard is off for it)
#   127.0.0.1:8081        "internal" service  } ssrf_servers.py target: each records every
#   169.254.169.254:80    "metadata" service  } connection and request in its hits file, and
#   34.1.2.4:8081         a second public host} serves the right bytes for .../blobs/<digest>
#   127.0.0.1:5050        pullthrough serve (filesystem store), asked with curl
#
# /etc/netns/<ns>/hosts (bind-mounted over /etc/hosts by `ip netns exec`) names them:
# internal.ssrf.test -> 127.0.0.1, metadata.ssrf.test -> 169.254.169.254, cdn.ssrf.test ->
# 34.1.2.4, mixed.ssrf.test -> 34.1.2.4 and 127.0.0.1.
#
# Uses from run.sh: check, section_setup, log, WORK, BIN, start_bg, stop_pid (lib.sh).

SSRF_NS=""               # the network namespace, while it exists
SSRF_ETC_NETNS_MADE=0    # 1 when this run created /etc/netns
SSRF_PIDS=()
SSRF_PUB=34.1.2.3        # the upstream's public address
SSRF_PUB2=34.1.2.4       # a second public address
SSRF_META=169.254.169.254
SSRF_REG=$SSRF_PUB:5000
SSRF_LAN=127.0.0.1:5001
SSRF_INT=127.0.0.1:8081
SSRF_CDN=$SSRF_PUB2:8081
SSRF_PROXY=127.0.0.1:5050

# nsx COMMAND...: runs COMMAND inside the namespace (with its /etc/hosts), no HTTP proxy.
nsx() {
    ip netns exec "$SSRF_NS" env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY \
        -u all_proxy -u ALL_PROXY -u no_proxy -u NO_PROXY "$@"
}
# ns_curl ARGS...: curl inside the namespace. Never -L: a redirect relayed to the client must show.
ns_curl() { nsx curl -s --max-time 60 "$@"; }

ssrf_start() { # NAME LOGFILE COMMAND...
    local name=$1 logf=$2
    shift 2
    start_bg "$name" "$logf" ip netns exec "$SSRF_NS" env -u http_proxy -u https_proxy \
        -u HTTP_PROXY -u HTTPS_PROXY -u all_proxy -u ALL_PROXY "$@"
    SSRF_PIDS+=("$LAST_PID")
}

# ssrf_wait URL PID NAME: like wait_http, inside the namespace.
ssrf_wait() {
    local url=$1 pid=$2 name=$3 i code
    for i in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || { echo "$name (pid $pid) exited while starting" >&2; return 1; }
        code=$(ns_curl -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        [[ $code == 000 || -z $code ]] || return 0
        sleep 0.2
    done
    echo "$name did not answer on $url within 30 s" >&2
    return 1
}

# Never fails; safe to call twice (run.sh's teardown calls it too).
ssrf_teardown() {
    local pid
    for pid in "${SSRF_PIDS[@]}"; do stop_pid "$pid" || true; done
    SSRF_PIDS=()
    if [[ -n $SSRF_NS ]]; then
        ip netns del "$SSRF_NS" 2>/dev/null || true
        rm -rf "/etc/netns/$SSRF_NS" || true
        if [[ $SSRF_ETC_NETNS_MADE == 1 ]]; then
            rmdir /etc/netns 2>/dev/null || true
            SSRF_ETC_NETNS_MADE=0
        fi
        log "ssrf: namespace $SSRF_NS deleted"
        SSRF_NS=""
    fi
    return 0
}

# ssrf_setup: namespace, hosts file, content, servers, pullthrough. Run by section_setup (run.sh),
# where errexit does not apply, so every step that can fail says so itself.
ssrf_setup() {
    SSRF_DIR=$WORK/ssrf
    SSRF_STORE=$SSRF_DIR/store
    [[ -n $WORK && -d $WORK ]] || return 1
    mkdir -p "$SSRF_DIR/content" "$SSRF_DIR/out" "$SSRF_STORE" || return 1
    SSRF_NS=ptssrf-$$
    ip netns add "$SSRF_NS" || { SSRF_NS=""; return 1; }
    log "ssrf: namespace $SSRF_NS"
    nsx ip link set lo up || return 1
    local a
    for a in "$SSRF_PUB" "$SSRF_PUB2" "$SSRF_META"; do
        nsx ip addr add "$a/32" dev lo || return 1
    done
    if [[ ! -d /etc/netns ]]; then
        mkdir /etc/netns || return 1
        SSRF_ETC_NETNS_MADE=1
    fi
    mkdir -p "/etc/netns/$SSRF_NS" || return 1
    printf '%s\n' "127.0.0.1 localhost" "127.0.0.1 internal.ssrf.test" \
        "$SSRF_META metadata.ssrf.test" "$SSRF_PUB2 cdn.ssrf.test" \
        "$SSRF_PUB2 mixed.ssrf.test" "127.0.0.1 mixed.ssrf.test" >"/etc/netns/$SSRF_NS/hosts" || return 1
    nsx ip -o addr show dev lo | awk '{print "ssrf: lo", $4}'

    # Content: per scenario one blob and one manifest (distinct digests, so no check sees
    # another's stored bytes).
    SSRF_SCENARIOS=(direct loopback metadata decimal v4mapped localhost name-loopback
        name-metadata file ftp hop public public-name mixed-name realm-loopback realm-name
        realm-metadata realm-file realm-public)
    python3 "$E2E_DIR/ssrf_servers.py" make "$SSRF_DIR/content" "${SSRF_SCENARIOS[@]}" \
        >"$SSRF_DIR/digests" || return 1
    local i="http://$SSRF_INT/{kind}/{digest}" m="http://$SSRF_META/latest/meta-data/{kind}/{digest}"
    cat >"$SSRF_DIR/scenarios.json" <<SCENARIOS || return 1
{
  "direct":         {"direct": true},
  "loopback":       {"location": "$i"},
  "metadata":       {"location": "$m"},
  "decimal":        {"location": "http://2130706433:8081/{kind}/{digest}"},
  "v4mapped":       {"location": "http://[::ffff:127.0.0.1]:8081/{kind}/{digest}"},
  "localhost":      {"location": "http://localhost:8081/{kind}/{digest}"},
  "name-loopback":  {"location": "http://internal.ssrf.test:8081/{kind}/{digest}"},
  "name-metadata":  {"location": "http://metadata.ssrf.test/latest/meta-data/{kind}/{digest}"},
  "file":           {"location": "file:///etc/passwd"},
  "ftp":            {"location": "ftp://$SSRF_INT/{kind}/{digest}"},
  "hop":            {"location": "http://$SSRF_CDN/hop?to=$i"},
  "public":         {"location": "http://$SSRF_CDN/{kind}/{digest}"},
  "public-name":    {"location": "http://cdn.ssrf.test:8081/{kind}/{digest}"},
  "mixed-name":     {"location": "http://mixed.ssrf.test:8081/{kind}/{digest}"},
  "realm-loopback": {"realm": "http://$SSRF_INT/token"},
  "realm-name":     {"realm": "http://internal.ssrf.test:8081/token"},
  "realm-metadata": {"realm": "http://$SSRF_META/token"},
  "realm-file":     {"realm": "file:///etc/passwd"},
  "realm-public":   {"realm": "http://$SSRF_CDN/token"}
}
SCENARIOS

    local srv=$E2E_DIR/ssrf_servers.py c=$SSRF_DIR/content
    touch "$SSRF_DIR/internal.hits" "$SSRF_DIR/metadata.hits" "$SSRF_DIR/cdn.hits" \
        "$SSRF_DIR/registry.log" "$SSRF_DIR/lan.log" "$SSRF_DIR/pullthrough.log" \
        "$SSRF_DIR/servers.log" || return 1
    ssrf_start "ssrf: internal service on $SSRF_INT" "$SSRF_DIR/servers.log" \
        python3 "$srv" target --listen "$SSRF_INT" --name internal --content "$c" \
        --hits "$SSRF_DIR/internal.hits"
    ssrf_start "ssrf: metadata service on $SSRF_META:80" "$SSRF_DIR/servers.log" \
        python3 "$srv" target --listen "$SSRF_META:80" --name metadata --content "$c" \
        --hits "$SSRF_DIR/metadata.hits"
    ssrf_start "ssrf: second public host on $SSRF_CDN" "$SSRF_DIR/servers.log" \
        python3 "$srv" target --listen "$SSRF_CDN" --name cdn --content "$c" \
        --hits "$SSRF_DIR/cdn.hits"
    ssrf_start "ssrf: public upstream on $SSRF_REG" "$SSRF_DIR/servers.log" \
        python3 "$srv" registry --listen "$SSRF_REG" --content "$c" \
        --scenarios "$SSRF_DIR/scenarios.json" --log "$SSRF_DIR/registry.log"
    local reg_pid=$LAST_PID
    ssrf_start "ssrf: LAN upstream on $SSRF_LAN" "$SSRF_DIR/servers.log" \
        python3 "$srv" registry --listen "$SSRF_LAN" --content "$c" \
        --scenarios "$SSRF_DIR/scenarios.json" --log "$SSRF_DIR/lan.log"
    local lan_pid=$LAST_PID
    ssrf_wait "http://$SSRF_REG/v2/" "$reg_pid" "public upstream" || return 1
    ssrf_wait "http://$SSRF_LAN/v2/" "$lan_pid" "LAN upstream" || return 1
    # The targets are not polled (a poll would be a hit): each prints a line once listening.
    local n=0
    for i in $(seq 100); do
        n=$(grep -c '^listening on' "$SSRF_DIR/servers.log")
        ((n >= 5)) && break
        sleep 0.1
    done
    ((n >= 5)) || { cat "$SSRF_DIR/servers.log"; echo "only $n of 5 servers listening"; return 1; }

    printf '%s\n' 'default_upstream = "public.test"' '' \
        '[[upstream]]' 'alias = "public.test"' "url = \"http://$SSRF_REG\"" 'insecure = true' '' \
        '[[upstream]]' 'alias = "lan.test"' "url = \"http://$SSRF_LAN\"" 'insecure = true' \
        >"$SSRF_DIR/pullthrough.toml" || return 1
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} ssrf_start "ssrf: pullthrough on $SSRF_PROXY" \
        "$SSRF_DIR/pullthrough.log" "$BIN" serve --listen "$SSRF_PROXY" --store "$SSRF_STORE" \
        --config "$SSRF_DIR/pullthrough.toml"
    ssrf_wait "http://$SSRF_PROXY/v2/" "$LAST_PID" pullthrough || return 1
}

# ---------------------------------------------------------------------------------------------
# Check helpers
# ---------------------------------------------------------------------------------------------

ssrf_digest() { # KIND SCENARIO: the scenario's blob or manifest digest
    awk -v s="$2" -v k="$1" '$1 == s {print (k == "blobs" ? $2 : $3)}' "$SSRF_DIR/digests"
}
nlines() { wc -l <"$1"; }
# hits_since FILE COUNT: the lines of a hits file after its first COUNT lines.
hits_since() { tail -n "+$(($2 + 1))" "$1"; }

ssrf_snapshot() {
    S_INT=$(nlines "$SSRF_DIR/internal.hits")
    S_META=$(nlines "$SSRF_DIR/metadata.hits")
    S_CDN=$(nlines "$SSRF_DIR/cdn.hits")
    S_REG=$(nlines "$SSRF_DIR/registry.log")
    S_LAN=$(nlines "$SSRF_DIR/lan.log")
    S_PT=$(nlines "$SSRF_DIR/pullthrough.log")
}

# no_internal_hits: the internal and metadata services saw nothing since the snapshot.
no_internal_hits() {
    local f n bad=0
    for f in internal metadata; do
        n=$(hits_since "$SSRF_DIR/$f.hits" "$([[ $f == internal ]] && echo "$S_INT" || echo "$S_META")" | wc -l)
        echo "$f service: $n new hit lines"
        if ((n > 0)); then
            bad=1
            hits_since "$SSRF_DIR/$f.hits" "$([[ $f == internal ]] && echo "$S_INT" || echo "$S_META")"
        fi
    done
    ((bad == 0))
}

# nothing_stored KIND SCENARIO: neither the bytes nor a marker of this digest in the store.
nothing_stored() {
    local d=$2 hex
    hex=${d#sha256:}
    if [[ -e $SSRF_STORE/blobs/sha256/$hex ]] || find "$SSRF_STORE" -path '*_digests*' -name "$hex" | grep -q .; then
        echo "stored: $d"
        find "$SSRF_STORE" -name "$hex"
        return 1
    fi
    echo "store: nothing for $d"
}

# oci_json_error OUT [METHOD]: headers OUT.h, body OUT.b, status OUT.code: a 4xx/5xx OCI JSON
# error (for HEAD: status and content type, there is no body).
oci_json_error() {
    local out=$1 method=${2:-GET} code
    code=$(cat "$out.code")
    echo "status $code; headers:"
    tr -d '\r' <"$out.h"
    [[ $method == HEAD ]] || echo "body: $(head -c 600 "$out.b")"
    [[ $code =~ ^[45][0-9][0-9]$ ]] || { echo "status $code is not a 4xx/5xx"; return 1; }
    tr -d '\r' <"$out.h" | grep -qi '^content-type: application/json' || { echo "not application/json"; return 1; }
    [[ $method != HEAD ]] || return 0
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["errors"][0]; assert e["code"] and "message" in e' "$out.b" ||
        { echo "not an OCI error body"; return 1; }
    if grep -qE 'SSRF-E2E-SECRET|root:x?:0:0|ssrf-e2e\.[0-9a-f]{16}' "$out.b"; then
        echo "internal content leaked into the answer"
        return 1
    fi
}

# ssrf_get OUT METHOD PATH: one request to the proxy; OUT.h, OUT.b, OUT.code.
ssrf_get() {
    local out=$1 method=$2 path=$3 args
    args=(-X "$method")
    [[ $method != HEAD ]] || args=(-I)
    rm -f "$out.h" "$out.b"
    ns_curl "${args[@]}" -D "$out.h" -o "$out.b" -w '%{http_code}' "http://$SSRF_PROXY$path" >"$out.code" || true
    [[ -s $out.code ]] || echo 000 >"$out.code"
    touch "$out.b"
}

# refused KIND SCENARIO EXPECT [METHOD]: the proxy asks the public upstream for the scenario's blob
# or manifest, is sent somewhere it must not go, and answers an OCI JSON error; the upstream did
# send us there (its log has the request), no internal service was touched, nothing was stored,
# and the proxy's log says why (EXPECT: an extended regex).
refused() {
    local kind=$1 scn=$2 expect=$3 method=${4:-GET} d out
    d=$(ssrf_digest "$kind" "$scn")
    out=$SSRF_DIR/out/$scn-$kind-$method
    ssrf_snapshot
    ssrf_get "$out" "$method" "/v2/public.test/ssrf/$scn/$kind/$d"
    sleep 0.3 # a fill that went on in the background would have connected by now
    oci_json_error "$out" "$method"
    hits_since "$SSRF_DIR/registry.log" "$S_REG" | grep -F " /v2/ssrf/$scn/$kind/$d" ||
        { echo "the public upstream was not asked: the guard was not exercised"; return 1; }
    no_internal_hits
    nothing_stored "$kind" "$d"
    echo "pullthrough log:"
    hits_since "$SSRF_DIR/pullthrough.log" "$S_PT" | grep -E "$expect" ||
        { hits_since "$SSRF_DIR/pullthrough.log" "$S_PT" | tail -n 5; echo "no line matching /$expect/ in the proxy log"; return 1; }
}

# served UPSTREAM KIND SCENARIO HITFILE [PATTERN]: the proxy serves exactly the scenario's bytes
# (sha256 equal to the digest), and HITFILE (the target that served them, or the token) got a
# request for them (PATTERN, an extended regex; default /KIND/DIGEST).
served() {
    local up=$1 kind=$2 scn=$3 hitfile=$4 pattern=${5:-} d out got before
    d=$(ssrf_digest "$kind" "$scn")
    [[ -n $pattern ]] || pattern=/$kind/$d
    out=$SSRF_DIR/out/$up-$scn-$kind
    [[ $hitfile == none ]] || before=$(nlines "$SSRF_DIR/$hitfile.hits")
    ssrf_get "$out" GET "/v2/$up/ssrf/$scn/$kind/$d"
    echo "status $(cat "$out.code"), $(wc -c <"$out.b") bytes"
    tr -d '\r' <"$out.h"
    [[ $(cat "$out.code") == 200 ]] || { head -c 600 "$out.b"; return 1; }
    got=sha256:$(sha256sum <"$out.b" | cut -d' ' -f1)
    echo "sha256 of the body $got, expected $d"
    [[ $got == "$d" ]]
    cmp "$out.b" "$SSRF_DIR/content/${d#sha256:}"
    [[ -e $SSRF_STORE/blobs/sha256/${d#sha256:} ]] || { echo "not in the store"; return 1; }
    if [[ $hitfile != none ]]; then
        echo "$hitfile hits:"
        hits_since "$SSRF_DIR/$hitfile.hits" "$before" | grep -E "$pattern" ||
            { echo "$hitfile got no request matching $pattern"; return 1; }
    fi
}

# rejected PATH: a request naming a host the proxy is not configured for is refused with an OCI
# JSON error before any connection: no target, upstream or LAN registry saw anything.
rejected() {
    local path=$1 out n f
    out=$SSRF_DIR/out/rejected-$CHECK_N
    ssrf_snapshot
    ssrf_get "$out" GET "$path"
    sleep 0.3
    oci_json_error "$out"
    [[ $(cat "$out.code") =~ ^4 ]] || { echo "expected a 4xx"; return 1; }
    no_internal_hits
    n=$(($(hits_since "$SSRF_DIR/cdn.hits" "$S_CDN" | wc -l) + $(hits_since "$SSRF_DIR/registry.log" "$S_REG" | wc -l) +
        $(hits_since "$SSRF_DIR/lan.log" "$S_LAN" | wc -l)))
    echo "requests to the upstreams and the second public host: $n"
    hits_since "$SSRF_DIR/cdn.hits" "$S_CDN"
    hits_since "$SSRF_DIR/registry.log" "$S_REG"
    hits_since "$SSRF_DIR/lan.log" "$S_LAN"
    ((n == 0))
}

# The metadata service and the hosts file answer as the hostile targets need (so a refusal
# cannot come from a broken setup): checked with curl inside the namespace, which bypasses the
# proxy (the hits these make are taken before any check's snapshot).
setup_reachable() {
    local d
    d=$(ssrf_digest blobs loopback)
    ns_curl -sf "http://$SSRF_META/latest/meta-data/" | grep SSRF-E2E-SECRET
    ns_curl -sf "http://internal.ssrf.test:8081/blobs/$d" | cmp - "$SSRF_DIR/content/${d#sha256:}"
    nsx getent ahosts mixed.ssrf.test | awk '{print $1}' | sort -u | tr '\n' ' '
    echo
    [[ $(nsx getent ahosts mixed.ssrf.test | awk '{print $1}' | sort -u | tr '\n' ' ') == "127.0.0.1 $SSRF_PUB2 " ]]
    ns_curl -sf "http://$SSRF_REG/v2/" >/dev/null
    # and the host's network is out of reach (no public host except ours)
    ! ns_curl -s --max-time 3 -o /dev/null "http://1.1.1.1/"
}

guarded_total_zero() {
    echo "internal service hits during the guarded checks:"
    hits_since "$SSRF_DIR/internal.hits" "$G_INT"
    echo "metadata service hits during the guarded checks:"
    hits_since "$SSRF_DIR/metadata.hits" "$G_META"
    [[ $(hits_since "$SSRF_DIR/internal.hits" "$G_INT" | wc -l) == 0 ]]
    [[ $(hits_since "$SSRF_DIR/metadata.hits" "$G_META" | wc -l) == 0 ]]
}

# A guarded check that a target was hit only at the public host (mixed-name): internal zero.
served_no_internal() { # UPSTREAM KIND SCENARIO HITFILE
    ssrf_snapshot
    served "$@"
    no_internal_hits
}

ssrf_no_panics() { ! grep -nE 'panicked|RUST_BACKTRACE' "$SSRF_DIR/pullthrough.log"; }

# ---------------------------------------------------------------------------------------------
# The section
# ---------------------------------------------------------------------------------------------

ssrf_section() {
    local p="[ssrf]"
    log "$p network namespace with public-looking addresses ($(elapsed))"
    section_setup ssrf ssrf_setup ssrf_teardown "namespace, servers, pullthrough" || return 0
    sed 's/^/-- /' "$WORK/ssrf-setup.log" | grep -E '^-- (ssrf|started)' || true
    STAGE="ssrf: checks"
    check "$p setup: namespace has no way out; metadata, host names and upstream answer directly" \
        setup_reachable

    # Controls: the public upstream works through the guard.
    check "$p control: blob straight from the public upstream, exact bytes" \
        served public.test blobs direct none
    check "$p control: manifest straight from the public upstream, exact bytes" \
        served public.test manifests direct none

    G_INT=$(nlines "$SSRF_DIR/internal.hits")
    G_META=$(nlines "$SSRF_DIR/metadata.hits")
    local refused_lit='internal address' refused_dns='resolves only to internal addresses'
    check "$p blob redirect to http://$SSRF_INT/...: OCI error, no connection, nothing stored" \
        refused blobs loopback "$refused_lit"
    check "$p blob HEAD redirected to http://$SSRF_INT/...: OCI error, no connection" \
        refused blobs loopback "$refused_lit" HEAD
    check "$p blob redirect to http://$SSRF_META/latest/meta-data/...: refused, no connection" \
        refused blobs metadata "$refused_lit"
    check "$p blob redirect to http://2130706433:8081/ (127.0.0.1 in decimal): refused" \
        refused blobs decimal "$refused_lit"
    check "$p blob redirect to http://[::ffff:127.0.0.1]:8081/: refused" \
        refused blobs v4mapped "$refused_lit"
    check "$p blob redirect to http://localhost:8081/: refused" \
        refused blobs localhost "$refused_lit"
    check "$p blob redirect to internal.ssrf.test (resolves to 127.0.0.1): refused, no connection" \
        refused blobs name-loopback "$refused_dns"
    check "$p blob redirect to metadata.ssrf.test (resolves to $SSRF_META): refused, no connection" \
        refused blobs name-metadata "$refused_dns"
    check "$p blob redirect to file:///etc/passwd: refused" \
        refused blobs file 'unsupported scheme'
    check "$p blob redirect to ftp://$SSRF_INT/...: refused, no connection" \
        refused blobs ftp 'unsupported scheme'
    check "$p blob redirect via a second public host (hop) to $SSRF_INT: second hop refused" \
        refused blobs hop "$refused_lit"
    check "$p manifest redirect to http://$SSRF_INT/...: refused, no connection, nothing stored" \
        refused manifests loopback "$refused_lit"
    check "$p manifest redirect to http://$SSRF_META/latest/meta-data/...: refused" \
        refused manifests metadata "$refused_lit"
    check "$p manifest redirect to internal.ssrf.test (resolves to 127.0.0.1): refused" \
        refused manifests name-loopback "$refused_dns"
    check "$p manifest redirect to file:///etc/passwd: refused" \
        refused manifests file 'unsupported scheme'
    check "$p token realm http://$SSRF_INT/token (blob): refused, no connection" \
        refused blobs realm-loopback "token realm: .*internal address"
    check "$p token realm http://$SSRF_INT/token (manifest): refused, no connection" \
        refused manifests realm-loopback "token realm: .*internal address"
    check "$p token realm on internal.ssrf.test (resolves to 127.0.0.1): refused, no connection" \
        refused blobs realm-name "$refused_dns"
    check "$p token realm http://$SSRF_META/...: refused, no connection" \
        refused blobs realm-metadata "token realm: .*internal address"
    check "$p token realm file:///etc/passwd: refused" \
        refused blobs realm-file 'is not http\(s\)'

    local d
    d=$(ssrf_digest blobs direct)
    check "$p ?ns=$SSRF_INT: NAME_UNKNOWN, no connection anywhere" \
        rejected "/v2/ssrf/direct/blobs/$d?ns=$SSRF_INT"
    check "$p ?ns=$SSRF_META: no connection anywhere" \
        rejected "/v2/ssrf/direct/blobs/$d?ns=$SSRF_META"
    check "$p ?ns=internal.ssrf.test:8081 (manifest): no connection anywhere" \
        rejected "/v2/ssrf/direct/manifests/latest?ns=internal.ssrf.test:8081"
    check "$p path prefix /v2/$SSRF_INT/...: rejected, no connection anywhere" \
        rejected "/v2/$SSRF_INT/ssrf/direct/blobs/$d"
    check "$p path prefix /v2/internal.ssrf.test/...: rejected, no connection anywhere" \
        rejected "/v2/internal.ssrf.test/ssrf/direct/blobs/$d"
    check "$p path prefix /v2/$SSRF_META/... (manifest): rejected, no connection anywhere" \
        rejected "/v2/$SSRF_META/latest/meta-data/manifests/latest"

    # Positive controls through the guard: public targets are followed.
    check "$p blob redirect to http://$SSRF_CDN/ (public): followed, exact bytes" \
        served_no_internal public.test blobs public cdn
    check "$p manifest redirect to http://$SSRF_CDN/ (public): followed, exact bytes" \
        served_no_internal public.test manifests public cdn
    check "$p blob redirect to cdn.ssrf.test (resolves to $SSRF_PUB2): followed, exact bytes" \
        served_no_internal public.test blobs public-name cdn
    check "$p blob redirect to mixed.ssrf.test ($SSRF_PUB2 and 127.0.0.1): public address only" \
        served_no_internal public.test blobs mixed-name cdn
    check "$p token realm http://$SSRF_CDN/token (public): token fetched, exact bytes" \
        served_no_internal public.test blobs realm-public cdn \
        'GET /token\?.* host=34\.1\.2\.4:8081 '
    check "$p internal and metadata services: zero connections during all guarded checks" \
        guarded_total_zero

    # Controls with the guard off: the same hostile answers from a LAN upstream are followed,
    # so the refusals above come from the guard, not from unreachable targets.
    check "$p LAN upstream: blob redirect to http://$SSRF_INT/ followed, exact bytes" \
        served lan.test blobs loopback internal
    check "$p LAN upstream: manifest redirect to http://$SSRF_INT/ followed, exact bytes" \
        served lan.test manifests loopback internal
    check "$p LAN upstream: blob redirect to http://$SSRF_META/latest/meta-data/ followed" \
        served lan.test blobs metadata metadata
    check "$p LAN upstream: blob redirect to internal.ssrf.test followed" \
        served lan.test blobs name-loopback internal
    check "$p LAN upstream: blob redirect via the second public host to $SSRF_INT followed" \
        served lan.test blobs hop internal
    check "$p LAN upstream: token realm http://$SSRF_INT/token used, exact bytes" \
        served lan.test blobs realm-loopback internal \
        'GET /token\?.* host=127\.0\.0\.1:8081 '
    check "$p LAN upstream: token realm on internal.ssrf.test used, exact bytes" \
        served lan.test blobs realm-name internal \
        'GET /token\?.* host=internal\.ssrf\.test:8081 '
    check "$p LAN upstream: file:// redirect still refused (scheme check is not the guard)" \
        lan_file_refused
    check "$p no panic in the pullthrough log" ssrf_no_panics

    STAGE="ssrf: teardown"
    if ((FAILED > 0)); then
        echo "-- ssrf: last lines of the pullthrough log ($SSRF_DIR/pullthrough.log):"
        tail -n 20 "$SSRF_DIR/pullthrough.log" | sed 's/^/    | /'
    fi
    ssrf_teardown
}

lan_file_refused() {
    local d out
    d=$(ssrf_digest blobs file)
    out=$SSRF_DIR/out/lan-file
    ssrf_get "$out" GET "/v2/lan.test/ssrf/file/blobs/$d"
    oci_json_error "$out"
    nothing_stored blobs "$d"
}

# shellcheck shell=bash
# shellcheck disable=SC2034  # STAGE is run.sh's (what its EXIT trap reports)
# The client-auth section of tests/e2e/run.sh (sourced by it; `bash tests/e2e/run.sh auth` runs
# it alone). See tests/e2e/README.md, "The auth section".
#
# pullthrough (filesystem store) with PULLTHROUGH_AUTH = an htpasswd file (bcrypt, made with
# `htpasswd -nbB`) and a PULLTHROUGH_TOKEN_KEY, at RUST_LOG=debug, in front of a CNCF distribution
# registry holding the multiarch fixture (an OCI index). Real clients log in to it: skopeo
# (--creds, --src-creds), podman (login/pull/logout with its own auth file) and containerd
# (`ctr images pull --user`), and curl walks the token flow by hand (/token with Basic, then
# Bearer; a tampered token). Unauthenticated and wrong credentials must be refused without the
# upstream seeing anything, and the log must hold neither the password nor a token.
#
# Uses from run.sh: check, fail_now, section_setup, log, elapsed, curl, WORK, RUNROOTS, BIN,
# CLIENT_TIMEOUT, the client helpers (sk, push_fixture, inspect_check, copy_check, pod,
# podman_check, ctd_start, ctd_stop, c, ctr_plain_check, lines, since, count, no_panics) and, from
# lib.sh, start_bg, stop_pid, wait_http, free_ports, registry_config.

AUTH_USER="e2e-login"
# Spaces, a colon (Basic splits at the first one), quotes, a backslash, shell and URL characters.
# shellcheck disable=SC2016  # a literal $ in the password
AUTH_PASSWORD='p4ss w0rd: "quoted" \ & $ymbols %20+?#!'
AUTH_WRONG=${AUTH_PASSWORD%!} # the same but the last character
AUTH_OTHER_USER="e2e-other"
AUTH_OTHER_PASSWORD="other-password"
AUTH_TOKEN_KEY="e2e-token-key-0123456789-abcdefghijklmnop"
AUTH_SERVICE="pullthrough" # the service of the proxy's challenge
AUTH_PIDS=()
AUTH_DIR=""
AUTH_FILE="" # podman's auth file (podman login writes the password there, base64)
AUTH_REF=""  # the image pulled: the multiarch fixture by tag

# Never fails; safe to call twice (run.sh's teardown calls it too).
auth_teardown() {
    local pid
    for pid in "${AUTH_PIDS[@]}"; do stop_pid "$pid" || true; done
    AUTH_PIDS=()
    [[ -z $AUTH_FILE ]] || rm -f "$AUTH_FILE" || true
    AUTH_FILE=""
    return 0
}

# auth_env: what every client of this section runs with: podman's and skopeo's auth file (never
# the machine's), and a registries.conf that makes the proxy and the upstream plain HTTP.
auth_env() {
    export REGISTRY_AUTH_FILE=$AUTH_FILE CONTAINERS_REGISTRIES_CONF=$AUTH_DIR/registries.conf
}

# must_fail COMMAND...: succeeds when COMMAND fails (a check's `! COMMAND` would not stop it).
must_fail() {
    local rc=0
    "$@" || rc=$?
    echo "exit status $rc (must be non-zero)"
    ((rc != 0))
}

# b64 TEXT: base64 of TEXT on one line (what `Authorization: Basic` carries).
b64() { printf '%s' "$1" | base64 -w0; }

# auth_setup: htpasswd file, upstream registry, pullthrough. Run by section_setup (run.sh), where
# errexit does not apply, so every step that can fail says so itself. Sets auth_section's UP,
# PROXY, REFS, PT_LOG, AUTH_UP_LOG.
auth_setup() {
    AUTH_DIR=$WORK/auth
    AUTH_FILE=$AUTH_DIR/podman-auth.json
    REFS=$AUTH_DIR/refs
    PT_LOG=$AUTH_DIR/pullthrough.log
    AUTH_UP_LOG=$AUTH_DIR/upstream.log
    mkdir -p "$AUTH_DIR/out" "$REFS" || return 1
    touch "$PT_LOG" "$AUTH_UP_LOG" || return 1
    {
        htpasswd -nbB "$AUTH_USER" "$AUTH_PASSWORD" &&
            htpasswd -nbB "$AUTH_OTHER_USER" "$AUTH_OTHER_PASSWORD"
    } | grep . >"$AUTH_DIR/htpasswd" || return 1
    [[ $(grep -c '^[^:]*:[$]2y[$]' "$AUTH_DIR/htpasswd") == 2 ]] || return 1
    echo "auth: htpasswd file with bcrypt entries for $AUTH_USER and $AUTH_OTHER_USER"
    local up_port proxy_port
    read -r up_port proxy_port < <(free_ports 2) || return 1
    UP=127.0.0.1:$up_port
    PROXY=127.0.0.1:$proxy_port
    printf '%s\n' 'unqualified-search-registries = []' '' \
        '[[registry]]' "location = \"$PROXY\"" 'insecure = true' '' \
        '[[registry]]' "location = \"$UP\"" 'insecure = true' >"$AUTH_DIR/registries.conf" || return 1

    registry_config "$AUTH_DIR/upstream.yml" "$up_port" "$AUTH_DIR/upstream-data" || return 1
    start_bg "auth: upstream registry on $UP" "$AUTH_UP_LOG" docker-registry serve "$AUTH_DIR/upstream.yml"
    AUTH_PIDS+=("$LAST_PID")
    wait_http "http://$UP/v2/" "$LAST_PID" "upstream registry" || return 1

    # Every client here comes from 127.0.0.1 and this section tries many wrong passwords on
    # purpose: a high failure limit lets each of them reach the password check (the limit
    # itself, 429 + Retry-After, is tested in tests/client_auth.rs).
    printf '%s\n' 'default_upstream = "up.local"' 'auth_failures_per_minute = 1000' '' \
        '[[upstream]]' 'alias = "up.local"' \
        "url = \"http://$UP\"" 'insecure = true' >"$AUTH_DIR/pullthrough.toml" || return 1
    NO_COLOR=1 RUST_LOG=debug PULLTHROUGH_AUTH=$AUTH_DIR/htpasswd PULLTHROUGH_TOKEN_KEY=$AUTH_TOKEN_KEY \
        start_bg "auth: pullthrough on $PROXY (PULLTHROUGH_AUTH, RUST_LOG=debug)" "$PT_LOG" \
        "$BIN" serve --listen "$PROXY" --store "$AUTH_DIR/store" --config "$AUTH_DIR/pullthrough.toml"
    AUTH_PIDS+=("$LAST_PID")
    wait_http "http://$PROXY/v2/" "$LAST_PID" pullthrough || return 1
}

# ---------------------------------------------------------------------------------------------
# Check helpers
# ---------------------------------------------------------------------------------------------

INDEX_ACCEPT='Accept: application/vnd.oci.image.index.v1+json'

# upstream_untouched LINECOUNT: the upstream registry saw no request since its log had LINECOUNT
# lines.
upstream_untouched() {
    local n
    n=$(since "$AUTH_UP_LOG" "$1" | count '"[A-Z]+ /v2/')
    echo "upstream requests: $n"
    since "$AUTH_UP_LOG" "$1" | grep -E '"[A-Z]+ /v2/' || true
    ((n == 0))
}

# get_manifest OUT [CURL_ARGS...]: GET of the multiarch index by tag through the proxy; OUT.h,
# OUT.b; prints the status.
get_manifest() {
    local out=$1
    shift
    curl -s -o "$out.b" -D "$out.h" -w '%{http_code}' -H "$INDEX_ACCEPT" "$@" \
        "http://$PROXY/v2/$MULTIARCH_REPO/manifests/$MULTIARCH_TAG"
}

# A 401 of the proxy for /v2/...: OCI JSON UNAUTHORIZED and the Bearer challenge naming /token.
challenge_401() { # OUT STATUS
    local out=$1 code=$2
    echo "status $code"
    tr -d '\r' <"$out.h"
    cat "$out.b"
    echo
    [[ $code == 401 ]]
    tr -d '\r' <"$out.h" | grep -qi '^content-type: application/json' || { echo "not JSON"; return 1; }
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["errors"][0]; assert e["code"] == "UNAUTHORIZED", e' "$out.b"
    tr -d '\r' <"$out.h" |
        grep -qx "www-authenticate: Bearer realm=\"http://$PROXY/token\",service=\"$AUTH_SERVICE\"" ||
        { echo "no Bearer challenge naming http://$PROXY/token"; return 1; }
}

anonymous_refused() {
    local out=$AUTH_DIR/out/anon before code
    before=$(lines "$AUTH_UP_LOG")
    code=$(curl -s -o "$out.b" -D "$out.h" -w '%{http_code}' "http://$PROXY/v2/")
    challenge_401 "$out" "$code"
    code=$(get_manifest "$out")
    challenge_401 "$out" "$code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -I "http://$PROXY/v2/$MULTIARCH_REPO/blobs/$MULTIARCH_CHILD_CONFIG_AMD64")
    echo "anonymous blob HEAD: $code"
    [[ $code == 401 ]]
    upstream_untouched "$before"
}

skopeo_anonymous_fails() {
    auth_env
    local before
    before=$(lines "$AUTH_UP_LOG")
    must_fail sk inspect --raw --tls-verify=false "docker://$PROXY/$AUTH_REF" >"$CUR_OUT.err" 2>&1 || {
        cat "$CUR_OUT.err"
        return 1
    }
    cat "$CUR_OUT.err"
    grep -qiE 'unauthorized|authentication required' "$CUR_OUT.err"
    upstream_untouched "$before"
}

skopeo_inspect_creds() { # KEY PROXY_REF
    auth_env
    inspect_check "$1" "$2" --creds "$AUTH_USER:$AUTH_PASSWORD"
    # and the parsed form (config, layers through the index's amd64 child)
    sk inspect --tls-verify=false --creds "$AUTH_USER:$AUTH_PASSWORD" "docker://$PROXY/$2" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print("Digest", d["Digest"]); assert d["Layers"]'
}

skopeo_copy_creds() {
    auth_env
    copy_check "$AUTH_REF" "$MULTIARCH_DIGEST" --src-creds "$AUTH_USER:$AUTH_PASSWORD"
}

skopeo_wrong_creds_fail() {
    auth_env
    local before creds
    before=$(lines "$AUTH_UP_LOG")
    for creds in "$AUTH_USER:$AUTH_WRONG" "nobody:$AUTH_PASSWORD" "$AUTH_OTHER_USER:$AUTH_PASSWORD"; do
        echo "-- skopeo inspect --creds ${creds%%:*}:<a password of $(printf '%s' "${creds#*:}" | wc -c) characters>"
        must_fail sk inspect --raw --tls-verify=false --creds "$creds" "docker://$PROXY/$AUTH_REF" \
            >"$CUR_OUT.err" 2>&1 || { cat "$CUR_OUT.err"; return 1; }
        cat "$CUR_OUT.err"
        grep -qiE 'unauthorized|authentication required|invalid username/password' "$CUR_OUT.err"
    done
    upstream_untouched "$before"
}

# /token: no credentials, a wrong password, an unknown user: 401 with a Basic challenge.
token_endpoint_refuses() {
    local out=$AUTH_DIR/out/token-refused code u
    local q="service=$AUTH_SERVICE&scope=repository:$MULTIARCH_REPO:pull"
    for u in "" "$AUTH_USER:$AUTH_WRONG" "nobody:$AUTH_PASSWORD"; do
        local args=()
        [[ -z $u ]] || args=(-u "$u")
        code=$(curl -s -o "$out.b" -D "$out.h" -w '%{http_code}' "${args[@]}" "http://$PROXY/token?$q")
        echo "GET /token as '${u%%:*}': $code $(cat "$out.b")"
        [[ $code == 401 ]]
        tr -d '\r' <"$out.h" | grep -qi '^www-authenticate: Basic realm=' || { echo "no Basic challenge"; return 1; }
        ! grep -qE '"(access_)?token" *:' "$out.b" || { echo "a token in a refusal"; return 1; }
    done
    # The same as form fields of a POST (the OAuth2 password grant containerd uses first).
    for u in "$AUTH_USER:$AUTH_WRONG" "nobody:$AUTH_PASSWORD"; do
        code=$(curl -s -o "$out.b" -w '%{http_code}' --data-urlencode grant_type=password \
            --data-urlencode "username=${u%%:*}" --data-urlencode "password=${u#*:}" \
            --data-urlencode "service=$AUTH_SERVICE" --data-urlencode client_id=e2e "http://$PROXY/token")
        echo "POST /token grant_type=password as '${u%%:*}': $code $(cat "$out.b")"
        [[ $code == 401 ]]
    done
}

# token_of FILE: the token of a /token answer (`token`, when there, equals `access_token`; a
# positive `expires_in`), also appended to $AUTH_DIR/tokens for the log check.
token_of() {
    python3 - "$1" <<'PY' | tee -a "$AUTH_DIR/tokens"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["access_token"] and d.get("token", d["access_token"]) == d["access_token"], d
assert d["expires_in"] > 0, d
print(d["access_token"])
PY
}

# bearer_opens OUT TOKEN: a manifest GET with the token gives the upstream's exact bytes.
bearer_opens() {
    local code
    code=$(get_manifest "$1" -H "Authorization: Bearer $2")
    echo "manifest GET with a token of ${#2} characters: $code"
    [[ $code == 200 ]]
    cmp "$1.b" "$REFS/multiarch.tag"
    tr -d '\r' <"$1.h" | grep -i "^docker-content-digest: $MULTIARCH_DIGEST$"
}

# The registry token flow by hand: /token with Basic (GET) and with the password grant (POST),
# each token then opens a manifest GET as Bearer (the exact upstream bytes); a tampered
# signature, forged claims and a payload without signature do not.
token_flow_by_hand() {
    local out=$AUTH_DIR/out/token t t_post code payload sig forged
    local q="service=$AUTH_SERVICE&scope=repository:$MULTIARCH_REPO:pull"
    curl -sSf -o "$out.json" -u "$AUTH_USER:$AUTH_PASSWORD" "http://$PROXY/token?$q&account=$AUTH_USER"
    t=$(token_of "$out.json")
    echo "GET /token with Basic:"
    bearer_opens "$out" "$t"
    curl -sSf -o "$out.json" --data-urlencode grant_type=password \
        --data-urlencode "username=$AUTH_USER" --data-urlencode "password=$AUTH_PASSWORD" \
        --data-urlencode "service=$AUTH_SERVICE" --data-urlencode client_id=e2e \
        --data-urlencode "scope=repository:$MULTIARCH_REPO:pull" "http://$PROXY/token"
    t_post=$(token_of "$out.json")
    echo "POST /token, grant_type=password:"
    bearer_opens "$out" "$t_post"

    payload=${t%%.*}
    sig=${t#*.}
    # A signature character changed (in the middle: the last one also carries padding bits).
    local c=${sig:10:1} r=A
    [[ $c != A ]] || r=B
    code=$(get_manifest "$out" -H "Authorization: Bearer $payload.${sig:0:10}$r${sig:11}")
    echo "tampered signature: $code"
    challenge_401 "$out" "$code"
    # Claims of our own (the other user, a far expiry) with the real signature.
    forged=$(printf '{"sub":"%s","exp":9999999999}' "$AUTH_OTHER_USER" | base64 -w0 | tr '+/' '-_' | tr -d '=')
    code=$(get_manifest "$out" -H "Authorization: Bearer $forged.$sig")
    echo "forged claims: $code"
    challenge_401 "$out" "$code"
    code=$(get_manifest "$out" -H "Authorization: Bearer $payload")
    echo "payload without signature: $code"
    [[ $code == 401 ]]
}

basic_direct() {
    local out=$AUTH_DIR/out/basic code before
    code=$(get_manifest "$out" -u "$AUTH_USER:$AUTH_PASSWORD")
    echo "manifest GET with Basic: $code"
    [[ $code == 200 ]]
    cmp "$out.b" "$REFS/multiarch.tag"
    before=$(lines "$AUTH_UP_LOG")
    code=$(get_manifest "$out" -u "$AUTH_USER:$AUTH_WRONG")
    echo "with a wrong password: $code"
    challenge_401 "$out" "$code"
    upstream_untouched "$before"
}

# podman: storage of its own, REGISTRY_AUTH_FILE in the section's directory.
podman_login_wrong() {
    auth_env
    must_fail pod login --tls-verify=false --authfile "$AUTH_FILE" -u "$AUTH_USER" --password-stdin \
        "$PROXY" <<<"$AUTH_WRONG"
    if [[ -e $AUTH_FILE ]] && grep -qF "$PROXY" "$AUTH_FILE"; then
        echo "the auth file holds an entry for $PROXY"
        return 1
    fi
}

podman_login() {
    auth_env
    local before
    before=$(lines "$PT_LOG")
    pod login --tls-verify=false --authfile "$AUTH_FILE" -u "$AUTH_USER" --password-stdin "$PROXY" <<<"$AUTH_PASSWORD"
    [[ $(pod login --get-login --authfile "$AUTH_FILE" "$PROXY") == "$AUTH_USER" ]]
    python3 - "$AUTH_FILE" "$PROXY" "$(b64 "$AUTH_USER:$AUTH_PASSWORD")" <<'PY'
import json, sys
auths = json.load(open(sys.argv[1]))["auths"]
assert auths[sys.argv[2]]["auth"] == sys.argv[3], "the stored credentials are not the user's"
PY
    echo "proxy requests of the login:"
    since "$PT_LOG" "$before" | grep -oE 'method=[A-Z]+ path=[^ ]+ status=[0-9]+' || true
    # the login went through the token endpoint, and the /v2/ ping with the token passed
    since "$PT_LOG" "$before" | grep -F 'path=/token ' | grep -q 'status=200'
    since "$PT_LOG" "$before" | grep -F 'path=/v2/ ' | grep -q 'status=200'
}

podman_pull_logged_in() {
    auth_env
    podman_check "$PROXY/$AUTH_REF" "$MULTIARCH_DIGEST" "$MULTIARCH_CHILD_AMD64" \
        "$MULTIARCH_CHILD_CONFIG_AMD64" "" "/v2/$MULTIARCH_REPO/manifests/$MULTIARCH_TAG"
}

podman_logout_then_pull_fails() {
    auth_env
    pod logout --authfile "$AUTH_FILE" "$PROXY"
    if grep -qF "\"$PROXY\"" "$AUTH_FILE"; then
        echo "the auth file still holds $PROXY after logout"
        return 1
    fi
    must_fail pod login --get-login --authfile "$AUTH_FILE" "$PROXY"
    pod rmi "$PROXY/$AUTH_REF"
    must_fail pod pull --signature-policy "$WORK/policy.json" "$PROXY/$AUTH_REF" >"$CUR_OUT.err" 2>&1 ||
        { cat "$CUR_OUT.err"; return 1; }
    cat "$CUR_OUT.err"
    grep -qiE 'unauthorized|authentication required' "$CUR_OUT.err"
    must_fail pod image exists "$PROXY/$AUTH_REF"
}

# ctr_refused USER[:PASSWORD]|"": a pull that must fail (anonymous, or a wrong password).
ctr_refused() {
    local args=()
    [[ -z $1 ]] || args=(--user "$1")
    must_fail c images pull --plain-http --snapshotter native "${args[@]}" "$PROXY/$AUTH_REF" \
        >"$CUR_OUT.err" 2>&1 || { cat "$CUR_OUT.err"; return 1; }
    cat "$CUR_OUT.err"
    grep -qiE 'unauthorized|401' "$CUR_OUT.err"
    [[ -z $(c images ls -q) ]] || { echo "an image arrived:"; c images ls; return 1; }
}

ctr_pull_user() {
    local before
    before=$(lines "$PT_LOG")
    ctr_plain_check "$AUTH_REF" "$MULTIARCH_DIGEST" --user "$AUTH_USER:$AUTH_PASSWORD"
    echo "token requests of the pull:"
    since "$PT_LOG" "$before" | grep -oE 'method=[A-Z]+ path=/token status=[0-9]+' || true
    # containerd asks with the OAuth2 password grant (POST), answered at once: no 401 first and
    # no fallback to GET with Basic.
    since "$PT_LOG" "$before" | grep -F 'method=POST path=/token ' | grep -q 'status=200'
    [[ $(since "$PT_LOG" "$before" | count 'path=/token status=401') == 0 ]]
    [[ $(since "$PT_LOG" "$before" | count 'method=GET path=/token ') == 0 ]]
}

# Nothing secret in the proxy's log (at debug): neither password (also the wrong one), nor the
# Basic credentials, nor any token (those fetched here, and anything shaped like one: our tokens
# start with base64url('{"sub"')), nor the token key or a bcrypt hash.
log_has_no_secrets() {
    local s n bad=0
    n=$(grep -c ' DEBUG ' "$PT_LOG" || true)
    echo "log: $(lines "$PT_LOG") lines, $n at DEBUG, $(count 'path=/token ' <"$PT_LOG") /token requests"
    ((n > 0)) || { echo "no DEBUG lines: RUST_LOG=debug did not take"; bad=1; }
    [[ -s $AUTH_DIR/tokens ]] || { echo "no tokens were fetched"; bad=1; }
    while IFS= read -r s; do
        [[ -n $s ]] || continue
        if grep -qF -- "$s" "$PT_LOG"; then
            echo "FOUND in the log: a secret of ${#s} characters starting '${s:0:4}'"
            bad=1
        fi
    done < <(printf '%s\n' "$AUTH_PASSWORD" "$AUTH_WRONG" "$AUTH_OTHER_PASSWORD" \
        "$(b64 "$AUTH_USER:$AUTH_PASSWORD")" "$(b64 "$AUTH_USER:$AUTH_WRONG")" \
        "$(b64 "$AUTH_PASSWORD")" "$AUTH_TOKEN_KEY" "$(cut -d: -f2 "$AUTH_DIR/htpasswd")")
    while IFS= read -r s; do
        if [[ -n $s ]] && grep -qF -- "${s#*.}" "$PT_LOG"; then
            echo "FOUND in the log: a token's signature"
            bad=1
        fi
    done <"$AUTH_DIR/tokens"
    if grep -nE 'eyJzdWIi|[$]2[aby][$]' "$PT_LOG"; then
        echo "FOUND in the log: something shaped like a token or a bcrypt hash (above)"
        bad=1
    fi
    ((bad == 0))
}

# ---------------------------------------------------------------------------------------------
# The section
# ---------------------------------------------------------------------------------------------

auth_section() {
    local p="[auth]"
    # run.sh's client helpers read these globals: within this section, they are its own.
    local UP="" PROXY="" REFS="" PT_LOG="" CUR_OUT="" POD="" POD_RUN="" AUTH_UP_LOG=""
    log "$p htpasswd users, upstream registry, pullthrough with PULLTHROUGH_AUTH ($(elapsed))"
    section_setup auth auth_setup auth_teardown "htpasswd, upstream registry, pullthrough" || return 0
    sed -n 's/^\(-- \)\{0,1\}\(.*auth: .*\)$/-- \2/p' "$WORK/auth-setup.log"
    STAGE="auth: checks"
    CUR_OUT=$AUTH_DIR/out/check
    POD=$AUTH_DIR/podman
    POD_RUN=$RUNROOTS/auth
    AUTH_REF=$MULTIARCH_REPO:$MULTIARCH_TAG
    : >"$AUTH_DIR/tokens"

    check "$p upstream: push multiarch with skopeo copy --all --preserve-digests (exact bytes)" \
        push_fixture multiarch
    check "$p anonymous /v2/, manifest, blob: 401 JSON UNAUTHORIZED, Bearer challenge for /token" \
        anonymous_refused
    check "$p skopeo inspect without credentials fails (401), nothing asked upstream" \
        skopeo_anonymous_fails
    check "$p skopeo inspect --creds: tag, byte-identical to the upstream" \
        skopeo_inspect_creds multiarch.tag "$AUTH_REF"
    check "$p skopeo inspect --creds: by digest, byte-identical" \
        skopeo_inspect_creds multiarch.digest "$MULTIARCH_REPO@$MULTIARCH_DIGEST"
    check "$p skopeo inspect --creds: child (amd64) by digest, byte-identical" \
        skopeo_inspect_creds multiarch.child-amd64 "$MULTIARCH_REPO@$MULTIARCH_CHILD_AMD64"
    check "$p skopeo copy --all --src-creds: every manifest and blob at its digest" \
        skopeo_copy_creds
    check "$p skopeo with a wrong password, an unknown user, another user's password: refused" \
        skopeo_wrong_creds_fail
    check "$p /token without, with wrong Basic, with a wrong password grant: 401" \
        token_endpoint_refuses
    check "$p /token (GET with Basic, POST password grant) -> Bearer opens the manifest; tampered: 401" \
        token_flow_by_hand
    check "$p Authorization: Basic on a manifest GET: 200 exact bytes; wrong password 401" \
        basic_direct
    check "$p podman login with a wrong password fails, nothing stored" podman_login_wrong
    check "$p podman login --tls-verify=false (token flow), --get-login names the user" podman_login
    check "$p podman pull after login: index digest, amd64 child, config" podman_pull_logged_in
    check "$p podman logout, then a pull fails (401)" podman_logout_then_pull_fails
    rm -rf "$POD" "$POD_RUN"

    if ctd_start auth >"$AUTH_DIR/out/ctd-start.log" 2>&1; then
        check "$p ctr images pull without credentials fails" ctr_refused ""
        check "$p ctr images pull --user with a wrong password fails" ctr_refused "$AUTH_USER:$AUTH_WRONG"
        check "$p ctr images pull --plain-http --user: index digest; token by POST password grant, no 401" \
            ctr_pull_user
        ctd_stop
        rm -rf "$CTD"
    else
        fail_now "$p containerd daemon start" "$(tail -n 5 "$AUTH_DIR/out/ctd-start.log")"
    fi

    check "$p the proxy's debug log holds no password, Basic credentials, token or key" \
        log_has_no_secrets
    check "$p no panic in the pullthrough log" no_panics

    STAGE="auth: teardown"
    if ((FAILED > 0)); then
        echo "-- auth: last lines of the pullthrough log ($PT_LOG):"
        grep -v ' DEBUG ' "$PT_LOG" | tail -n 20 | sed 's/^/    | /'
    fi
    auth_teardown
}

#!/usr/bin/env bash
# Validates the deployment offline (no AWS account, no network beyond PyPI for the install):
#   0. what `sam build` and `sam deploy` take from the repository: Cargo.toml's release profile
#      names panic = "unwind" (else `cargo lambda build --release` makes it "abort": a panic
#      would kill the Lambda instance), and samconfig.toml pins no parameter_overrides (a
#      committed list would be sent again by every plain `sam deploy`, e.g. ClientAuth=none);
#   1. cfn-lint on the template (SAM resources are transformed by cfn-lint itself);
#   2. `sam validate --lint`: the SAM CLI's own transform, then cfn-lint again. It needs a region
#      and credentials to start, never to call AWS: dummy ones are given.
# The tools are installed, pinned, into a virtualenv (default .ci/.venv) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "-- Cargo.toml [profile.release] panic, samconfig.toml parameter_overrides"
python3 - <<'PY'
import sys
import tomllib  # Python 3.11+

with open("Cargo.toml", "rb") as f:
    panic = tomllib.load(f).get("profile", {}).get("release", {}).get("panic")
if panic != "unwind":
    sys.exit(
        f'Cargo.toml: [profile.release] panic = {panic!r}; it must say panic = "unwind": '
        'cargo lambda build --release (sam build) makes an unnamed panic setting "abort"'
    )
with open("samconfig.toml", "rb") as f:
    samconfig = tomllib.load(f)
for env, commands in samconfig.items():
    for command, table in commands.items() if isinstance(commands, dict) else []:
        if "parameter_overrides" in table.get("parameters", {}):
            sys.exit(
                f"samconfig.toml: [{env}.{command}.parameters] parameter_overrides is committed: "
                "every plain `sam deploy` would send it again (ClientAuth included)"
            )
PY

VENV="${PULLTHROUGH_INFRA_VENV:-.ci/.venv}"
CFN_LINT_VERSION="1.58.0"
SAM_CLI_VERSION="1.170.0"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/cfn-lint" --version 2>/dev/null | grep -qx "cfn-lint $CFN_LINT_VERSION" \
  || ! "$VENV/bin/sam" --version 2>/dev/null | grep -q "version $SAM_CLI_VERSION\$"; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "cfn-lint==$CFN_LINT_VERSION" "aws-sam-cli==$SAM_CLI_VERSION"
fi

echo "-- cfn-lint $("$VENV/bin/cfn-lint" --version)"
"$VENV/bin/cfn-lint" infra/template.yaml

echo "-- sam validate --lint"
env SAM_CLI_TELEMETRY=0 \
  AWS_ACCESS_KEY_ID=AKIDOFFLINEVALIDATION AWS_SECRET_ACCESS_KEY=offline \
  AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 \
  "$VENV/bin/sam" validate --lint --template-file infra/template.yaml --region us-east-1

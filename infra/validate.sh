#!/usr/bin/env bash
# Validates the deployment offline (no AWS account, no network beyond PyPI for the install):
#   0. what `sam build` and `sam deploy` take from the repository: Cargo.toml's release profile
#      names panic = "unwind" (else `cargo lambda build --release` makes it "abort": a panic
#      would kill the Lambda instance), and samconfig.toml pins no parameter_overrides (a
#      committed list would be sent again by every plain `sam deploy`, e.g. ClientAuth=none);
#   1. cfn-lint on the template (SAM resources are transformed by cfn-lint itself);
#   2. `sam validate --lint`: the SAM CLI's own transform, then cfn-lint again. It needs a region
#      and credentials to start, never to call AWS: dummy ones are given;
#   3. what operations rely on is there (docs/operations.md): the scheduled gc and the optional
#      prefetch rule with the events the function understands, the admin token passed only when
#      set, the dashboard (its body JSON once substituted, naming the EMF metrics) and the alarms
#      (5xx rate, throttles, failed fills, failed invocations).
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

echo "-- operations: schedules, admin token, dashboard, alarms"
"$VENV/bin/python" - <<'PY'
import json
import re
import sys

from cfnlint.decode import decode

template, problems = decode("infra/template.yaml")
if problems:
    sys.exit(f"infra/template.yaml does not parse: {problems}")
params = template["Parameters"]
resources = template["Resources"]
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


for name, default in [("GcRetention", "30d"), ("GcSchedule", "rate(1 day)"), ("AdminToken", ""),
                      ("PrefetchRefs", ""), ("PrefetchSchedule", "rate(1 day)")]:
    check(name in params and str(params[name].get("Default")) == default,
          f"parameter {name} with default {default!r}")
check(params.get("AdminToken", {}).get("NoEcho") is True, "AdminToken is NoEcho")

function = resources.get("RegistryFunction", {}).get("Properties", {})
env = function.get("Environment", {}).get("Variables", {})
check(env.get("PULLTHROUGH_ADMIN_TOKEN") == {"Fn::If": ["HasAdminToken", {"Ref": "AdminToken"}, {"Ref": "AWS::NoValue"}]},
      "PULLTHROUGH_ADMIN_TOKEN set only when AdminToken is given")
gc = function.get("Events", {}).get("ScheduledGc", {})
check(gc.get("Type") == "Schedule" and gc["Properties"].get("Schedule") == {"Ref": "GcSchedule"},
      "a Schedule event ScheduledGc on GcSchedule")
gc_input = gc.get("Properties", {}).get("Input", {}).get("Fn::Sub", "")
try:
    event = json.loads(gc_input.replace("${GcRetention}", "30d"))
    check(event == {"gc": {"olderThan": "30d", "dryRun": False}}, f"the gc event: {event}")
except ValueError as e:
    check(False, f"the gc event is JSON: {e}")

rule = resources.get("PrefetchRule", {})
check(rule.get("Type") == "AWS::Events::Rule" and rule.get("Condition") == "HasPrefetchRefs",
      "PrefetchRule, only with PrefetchRefs")
check(resources.get("PrefetchRulePermission", {}).get("Condition") == "HasPrefetchRefs",
      "PrefetchRulePermission, only with PrefetchRefs")
try:
    body, values = rule["Properties"]["Targets"][0]["Input"]["Fn::Sub"]
    refs = "library/alpine:3.20,ghcr.io/org/app:1".split(",")
    event = json.loads(body.replace("${Refs}", '","'.join(refs)))
    check(event == {"prefetch": {"refs": refs, "platforms": "all"}}, f"the prefetch event: {event}")
except (KeyError, ValueError) as e:
    check(False, f"the prefetch event: {e}")

dashboard = resources.get("Dashboard", {})
check(dashboard.get("Type") == "AWS::CloudWatch::Dashboard", "an AWS::CloudWatch::Dashboard")
try:
    body = dashboard["Properties"]["DashboardBody"]["Fn::Sub"][0]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]
    named = {m[1] for w in widgets for m in w["properties"]["metrics"]
             if len(m) > 1 and isinstance(m[1], str) and m[0] != "..."}
    for metric in ["requests_total", "cache_lookups_total.tag.hit", "cache_lookups_total.blob.miss",
                   "upstream_requests_total", "upstream_bytes_total", "served_bytes_total",
                   "fills_total.error", "stale_served_total", "5xx", "Errors", "Throttles", "Duration"]:
        check(metric in named, f"the dashboard shows {metric}")
except (KeyError, ValueError, IndexError) as e:
    check(False, f"the dashboard body is JSON: {e}")

alarms = [r for r in resources.values() if r.get("Type") == "AWS::CloudWatch::Alarm"]
text = json.dumps(alarms)
for what, needle in [("API 5xx rate", '"MetricName": "5xx"'), ("throttles", '"MetricName": "Throttles"'),
                     ("fill failures", '"MetricName": "fills_total.error"')]:
    check(needle in text, f"an alarm on {what}")

if failures:
    sys.exit("infra/template.yaml lacks:\n  " + "\n  ".join(failures))
print(f"{len(alarms)} alarms, a dashboard, the gc schedule and the prefetch rule are there")
PY

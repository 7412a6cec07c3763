#!/usr/bin/env bash
# Validates wharf's deployment files: the systemd unit's sandboxing, the Kubernetes manifests, the
# Grafana dashboard's metric names, and the Dockerfile's essentials.
#
#     bash deploy/check.sh          # from anywhere; prints one line per check
#
# Needs python3 (3.11+, for tomllib) with the yaml module (Debian: python3-yaml), systemd-analyze
# (Debian: systemd) and kubectl (Debian: kubernetes-client). Installs nothing. A check whose tool
# is missing is reported as SKIPPED, with what is missing, and is never counted as ok.
#
# Exits non-zero if any check fails, and also if any was skipped: .ci/run installs every tool
# these checks use, so there a skip means a broken install, and a check that did not run has
# not passed. DEPLOY_CHECK_ALLOW_SKIPS=1 (for a machine without some tool) exits 0 despite skips,
# which are still listed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MAX_EXPOSURE=4.9
UNIT=deploy/systemd/wharf.service
KUSTOMIZE_DIR=deploy/kubernetes
DASHBOARD=deploy/grafana/wharf.json
DOCKERFILE=deploy/docker/Dockerfile
METRICS_RS=src/metrics/mod.rs

failures=0
skipped=0
SKIP=77 # a check function's exit status for "could not check here"; it prints why
pass() { printf 'ok       %s\n' "$1"; }
fail() {
    printf 'FAIL     %s\n' "$1"
    if [[ -n "${2:-}" ]]; then
        printf '%s\n' "$2" | sed 's/^/         /'
    fi
    failures=$((failures + 1))
}
skip() {
    printf 'SKIPPED  %s: %s\n' "$1" "${2:-no reason given}"
    skipped=$((skipped + 1))
}
# run NAME FUNCTION: runs FUNCTION, which prints a short detail on success, the reason on failure,
# and what is missing when it returns $SKIP.
run() {
    local name=$1 out rc=0
    out=$("$2" 2>&1) || rc=$?
    case $rc in
        0) pass "$name${out:+: $out}" ;;
        "$SKIP") skip "$name" "$out" ;;
        *) fail "$name" "$out" ;;
    esac
}
# needs_tool TOOL PACKAGE / needs_module MODULE PACKAGE: in a check function, followed by
# `|| return "$SKIP"`.
needs_tool() {
    command -v "$1" >/dev/null || { echo "$1 is not installed (Debian: $2)"; return 1; }
}
needs_module() {
    needs_tool python3 python3 || return 1
    python3 -c "import $1" 2>/dev/null || { echo "python3 has no $1 module ($2)"; return 1; }
}

# --- (a) systemd -------------------------------------------------------------------------------

check_systemd_security() {
    needs_tool systemd-analyze systemd || return "$SKIP"
    local out err score
    err=$(mktemp)
    # Exits non-zero only above --threshold (default 100); the score is judged below.
    out=$(systemd-analyze security --offline=yes --no-pager "$UNIT" 2>"$err") || true
    # Unknown or misspelt directives are only warned about, and would silently weaken the unit.
    if grep -q . "$err"; then
        cat "$err"
        rm -f "$err"
        return 1
    fi
    rm -f "$err"
    score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9]*\.[0-9]\).*/\1/p')
    if [[ -z "$score" ]]; then
        printf '%s\n' "$out" | tail -n 5
        echo "no 'Overall exposure level' line in the output"
        return 1
    fi
    if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
        echo "exposure $score (at most $MAX_EXPOSURE)"
    else
        printf '%s\n' "$out" | grep '✗\|^ *x ' || true
        echo "exposure $score is above $MAX_EXPOSURE"
        return 1
    fi
}

# --- (b) Kubernetes ----------------------------------------------------------------------------

# Every document of the YAML files named as arguments (or read from stdin when "-") must parse
# and be a Kubernetes object (or a Kustomization).
YAML_CHECK=$(cat <<'PY'
import sys, yaml
names = sys.argv[1:]
count = 0
for name in names:
    text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        sys.exit(f"{name}: {e}")
    for d in docs:
        if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind"):
            sys.exit(f"{name}: a document without apiVersion and kind")
        count += 1
print(count)
PY
)

check_kubernetes_yaml() {
    needs_module yaml python3-yaml || return "$SKIP"
    local files=() n
    while IFS= read -r -d '' f; do files+=("$f"); done \
        < <(find "$KUSTOMIZE_DIR" -type f \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z)
    [[ ${#files[@]} -gt 0 ]] || { echo "no YAML files under $KUSTOMIZE_DIR"; return 1; }
    n=$(python3 -c "$YAML_CHECK" "${files[@]}") || return 1
    echo "${#files[@]} files, $n documents parse"
}

# What kustomize renders: the expected objects, all in namespace wharf, the DaemonSet mounting the
# generated ConfigMap, and a grace period above wharf's shutdown_grace.
RENDERED_CHECK=$(cat <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
kinds = {d["kind"]: d for d in docs}
missing = {"Namespace", "ConfigMap", "DaemonSet", "Service", "ServiceMonitor"} - kinds.keys()
if missing:
    sys.exit(f"missing kinds: {sorted(missing)}")
for d in docs:
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "wharf":
        sys.exit(f"{d['kind']}/{d['metadata']['name']} is not in namespace wharf")
pod = kinds["DaemonSet"]["spec"]["template"]["spec"]
config_maps = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
if kinds["ConfigMap"]["metadata"]["name"] not in config_maps:
    sys.exit("the DaemonSet does not mount the generated ConfigMap")
if pod.get("terminationGracePeriodSeconds", 30) <= 30:
    sys.exit("terminationGracePeriodSeconds must exceed shutdown_grace (30s)")
print(len(docs))
PY
)

check_kustomize() {
    local out err n
    needs_tool kubectl kubernetes-client || return "$SKIP"
    needs_module yaml python3-yaml || return "$SKIP"
    err=$(mktemp)
    if ! out=$(kubectl kustomize "$KUSTOMIZE_DIR" 2>"$err"); then
        cat "$err"
        rm -f "$err"
        return 1
    fi
    rm -f "$err"
    n=$(printf '%s\n' "$out" | python3 -c "$YAML_CHECK" -) || return 1
    printf '%s\n' "$out" | python3 -c "$RENDERED_CHECK" >/dev/null || return 1
    echo "$n objects render and parse"
}

# The shipped configurations put the cache where the unit, image and DaemonSet give wharf room
# to write, and listen on port 5000.
CONFIG_CHECK=$(cat <<'PY'
import sys, tomllib
for name in sys.argv[1:]:
    with open(name, "rb") as f:
        try:
            c = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            sys.exit(f"{name}: {e}")
    if c.get("cache", {}).get("dir") != "/var/lib/wharf/cache":
        sys.exit(f"{name}: cache.dir is not /var/lib/wharf/cache")
    if not c.get("server", {}).get("listen", "").endswith(":5000"):
        sys.exit(f"{name}: server.listen is not on port 5000")
    if not c.get("upstream"):
        sys.exit(f"{name}: no [[upstream]]")
print(f"{len(sys.argv) - 1} files")
PY
)

check_configs() {
    needs_module tomllib "python3 3.11 or later" || return "$SKIP"
    python3 -c "$CONFIG_CHECK" deploy/docker/mirror.toml "$KUSTOMIZE_DIR/mirror.toml"
}

# --- (c) Grafana -------------------------------------------------------------------------------

# Metric names and label names in the dashboard's expressions must be ones src/metrics/mod.rs
# registers (plus Prometheus' own instance and job, and le on histogram buckets).
DASHBOARD_CHECK=$(cat <<'PY'
import json, re, sys
dashboard_path, metrics_path = sys.argv[1:]
try:
    with open(dashboard_path, encoding="utf-8") as f:
        dashboard = json.load(f)
except json.JSONDecodeError as e:
    sys.exit(f"{dashboard_path}: invalid JSON: {e}")

source = open(metrics_path, encoding="utf-8").read()
literals = list(re.finditer(r'"(wharf_[a-z_]+)"', source))
labels = {}
for i, m in enumerate(literals):
    end = literals[i + 1].start() if i + 1 < len(literals) else len(source)
    found = re.search(r"&\[([^\]]*)\]", source[m.end():end])
    labels[m.group(1)] = set(re.findall(r'"([a-z_]+)"', found.group(1))) if found else set()
if not labels:
    sys.exit(f"no wharf_ metric names found in {metrics_path}")
histograms = {n for n in labels if re.search(r'HistogramOpts::new\(\s*"' + n + '"', source)}
implicit = {"instance", "job"}

def base(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in labels:
            return name[: -len(suffix)]
    return name

def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))

errors, exprs = [], 0
if dashboard.get("schemaVersion") != 39:
    errors.append("schemaVersion is not 39")
variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
if variables.get("DS_PROMETHEUS", {}).get("type") != "datasource":
    errors.append("no DS_PROMETHEUS datasource variable")
if "instance" not in variables:
    errors.append("no instance variable")
for p in panels(dashboard.get("panels", [])):
    for t in p.get("targets", []):
        expr = t.get("expr", "")
        exprs += 1
        where = f"panel {p.get('title')!r}: "
        used = set()
        for m in re.finditer(r"wharf_[a-z_]+", expr):
            name = base(m.group(0))
            if name not in labels:
                errors.append(where + f"{m.group(0)} is not a metric in {metrics_path}")
                continue
            used.add(name)
            allowed = labels[name] | implicit | ({"le"} if m.group(0).endswith("_bucket") else set())
            after = expr[m.end():]
            if after.startswith("{"):
                for label in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!~|!=|=)", after[1:after.index("}")]):
                    if label not in allowed:
                        errors.append(where + f"{name} has no label {label!r}")
        allowed = set(implicit).union(*(labels[n] for n in used)) if used else set(implicit)
        if any(base(n) in histograms for n in re.findall(r"wharf_[a-z_]+_bucket", expr)):
            allowed.add("le")
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in filter(None, (s.strip() for s in group.split(","))):
                if label not in allowed:
                    errors.append(where + f"grouping by {label!r}, which none of its metrics has")
if exprs == 0:
    errors.append("no expressions")
if errors:
    sys.exit("\n".join(errors))
print(f"{exprs} expressions over {len(labels)} known metrics")
PY
)

check_dashboard() {
    needs_tool python3 python3 || return "$SKIP"
    python3 -c "$DASHBOARD_CHECK" "$DASHBOARD" "$METRICS_RS"
}

# --- (d) Dockerfile ----------------------------------------------------------------------------

check_dockerfile() {
    local problems=() user src
    [[ -f "$DOCKERFILE" ]] || { echo "$DOCKERFILE not found"; return 1; }
    grep -Eq '^HEALTHCHECK[[:space:]]+' "$DOCKERFILE" || problems+=("no HEALTHCHECK")
    grep -Eq '^EXPOSE([[:space:]]+[^[:space:]]+)*[[:space:]]+5000(/tcp)?([[:space:]]|$)' "$DOCKERFILE" \
        || problems+=("no EXPOSE 5000")
    # The last USER is the one the image runs as.
    user=$(grep -E '^USER[[:space:]]+' "$DOCKERFILE" | tail -n 1 | awk '{print $2}') || true
    case "${user%%:*}" in
        "") problems+=("no USER: the image would run as root") ;;
        root | 0) problems+=("USER $user is root") ;;
    esac
    # Every COPY from the build context names something that exists (the context is the root).
    while read -r src; do
        compgen -G "$src" >/dev/null || problems+=("COPY source $src does not exist")
    done < <(awk '/^COPY[[:space:]]/ && !/--from=/ { for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i }' "$DOCKERFILE")
    if [[ ${#problems[@]} -gt 0 ]]; then
        printf '%s\n' "${problems[@]}"
        return 1
    fi
    echo "HEALTHCHECK, USER $user, EXPOSE 5000, COPY sources present"
}

# --- client snippets -----------------------------------------------------------------------------

# The end-to-end suite pulls with the Docker, containerd and podman files; k3s and kind cannot run
# here, so at least every snippet must parse and name the placeholder address.
check_clients() {
    needs_module tomllib "python3 3.11 or later" || return "$SKIP"
    needs_module yaml python3-yaml || return "$SKIP"
    python3 - deploy/clients <<'PY'
import json, pathlib, sys, tomllib, yaml
root = pathlib.Path(sys.argv[1])
parsers = {".json": json.loads, ".toml": tomllib.loads, ".conf": tomllib.loads,
           ".yaml": lambda t: list(yaml.safe_load_all(t))}
files = [p for p in sorted(root.rglob("*")) if p.suffix in parsers]
bad = []
for p in files:
    text = p.read_text()
    try:
        parsers[p.suffix](text)
    except Exception as e:  # noqa: BLE001 - any parse error is the finding
        bad.append(f"{p}: {e}")
    # kind mounts the containerd certs.d tree, which names wharf.
    if "wharf.example:5000" not in text and p.name != "kind-config.yaml":
        bad.append(f"{p}: does not name wharf.example:5000")
if bad or not files:
    print("\n".join(bad) or "no client snippets found")
    sys.exit(1)
print(f"{len(files)} files parse")
PY
}

# --- run ---------------------------------------------------------------------------------------

run "systemd: $UNIT exposure" check_systemd_security
run "kubernetes: YAML under $KUSTOMIZE_DIR parses" check_kubernetes_yaml
run "kubernetes: kubectl kustomize $KUSTOMIZE_DIR" check_kustomize
run "config: shipped mirror.toml files" check_configs
run "grafana: $DASHBOARD metrics and labels" check_dashboard
run "docker: $DOCKERFILE" check_dockerfile
run "clients: deploy/clients snippets" check_clients

((failures == 0)) || printf '%d check(s) failed\n' "$failures"
((skipped == 0)) || printf '%d check(s) skipped: not run, so not passed\n' "$skipped"
((failures == 0)) || exit 1
if ((skipped > 0)); then
    if [[ ${DEPLOY_CHECK_ALLOW_SKIPS:-0} == 1 ]]; then
        echo "the checks that ran passed (skips allowed by DEPLOY_CHECK_ALLOW_SKIPS=1)"
        exit 0
    fi
    echo "install what the skipped checks name, or allow skips with DEPLOY_CHECK_ALLOW_SKIPS=1"
    exit 1
fi
echo "all deploy checks passed"

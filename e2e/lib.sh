# shellcheck shell=bash
# Helpers for run.sh: check bookkeeping, background processes, bounded waits, metrics.
# Sourced, not executed. Expects WORK (a scratch dir) and LOGS (a dir under it) to be set.

PASSED=0
FAILED=0
FAILED_NAMES=()

pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$1"; }

# fail NAME [DETAIL...] — details are printed indented under the FAIL line.
fail() {
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
    printf 'FAIL  %s\n' "$1"
    shift
    local line
    for line in "$@"; do printf '        %s\n' "$line"; done
}

info() { printf '....  %s\n' "$*"; }

# Whether the suite's time budget (SUITE_BUDGET seconds since start) is spent. A wharf that hangs
# would otherwise cost every remaining pull its full timeout.
budget_spent() { ((SECONDS > SUITE_BUDGET)); }

# check NAME CMD... — PASS when CMD succeeds. CMD's output goes to a log file, and its tail is
# shown on failure, so a failing check explains itself without rerunning anything.
check() {
    local name=$1
    shift
    if budget_spent; then
        fail "$name" "(not run: the suite's time budget of ${SUITE_BUDGET} s is spent)"
        return 0
    fi
    local log
    log="$LOGS/check-$(printf '%03d' $((PASSED + FAILED + 1))).log"
    if "$@" >"$log" 2>&1; then
        pass "$name"
    else
        local rc=$? tail_lines
        mapfile -t tail_lines < <(tail -n 15 "$log")
        fail "$name" "(exit status $rc)" "${tail_lines[@]}"
    fi
}

# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
    if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1" "expected: $2" "actual:   $3"; fi
}

# expect_cmp NAME A OP B — integer comparison, e.g. expect_cmp "x" "$n" -gt 0
# (`test` rather than `[ ]`: with the operator in a variable, shellcheck cannot parse `[ ]`.)
expect_cmp() {
    if [[ "$2" =~ ^-?[0-9]+$ && "$4" =~ ^-?[0-9]+$ ]] && test "$2" "$3" "$4"; then
        pass "$1"
    else
        fail "$1" "value: $2 (wanted $3 $4)"
    fi
}

# ---- processes -------------------------------------------------------------------------------

PIDS=()           # every background process started, in start order
declare -A REAPED # PIDs already waited for: never signal them again, the number may be reused

# start_bg NAME CMD... — start CMD in the background with stdout/stderr in $LOGS/NAME.{out,err}.
# Sets STARTED_PID. Everything started here is stopped by stop_all, newest first.
start_bg() {
    local name=$1
    shift
    "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err" </dev/null &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# All descendants of a PID, children first found by parent PID (dockerd starts its own
# containerd, which must not outlive the test).
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# wait_pid PID — wait for a background process to exit on its own; returns its status.
wait_pid() {
    local rc=0
    wait "$1" || rc=$?
    REAPED[$1]=1
    return "$rc"
}

# stop_pid PID — SIGTERM, wait up to 20 s, then SIGKILL; the same for its descendants.
stop_pid() {
    local pid=$1 kids=() i
    [[ -z ${REAPED[$pid]:-} ]] || return 0
    REAPED[$pid]=1
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    mapfile -t kids < <(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$pid" "${kids[@]}" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}"
    done
    PIDS=()
}

# wait_until SECONDS CMD... — poll CMD every 0.25 s until it succeeds: at most SECONDS * 4 polls,
# and none begun after SECONDS have passed (+1: $SECONDS counts whole seconds).
wait_until() {
    local seconds=$1 i
    shift
    local deadline=$((SECONDS + seconds + 1))
    for ((i = 0; i < seconds * 4 && SECONDS < deadline; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.25
    done
    "$@" >/dev/null 2>&1
}

# The user agent of log_barrier's requests, which no check counts as a client's.
BARRIER_AGENT=e2e-log-barrier

# log_barrier NAME LOG URL — return once every request that the registry at URL answered before
# the call is in its access log LOG. The registry writes a request's line as its handler returns,
# which can be a moment after the client had the last byte; so send a request of our own and
# wait for its line, which comes after theirs. A FAIL (NAME: ...) if it does not come in 10 s.
log_barrier() {
    local name=$1 log=$2 url=$3 id=e2e-barrier-$RANDOM$RANDOM
    if curl -fsS --max-time 5 -o /dev/null -A "$BARRIER_AGENT" "$url/v2/?$id" &&
        wait_until 10 grep -qF "$id" "$log"; then
        return 0
    fi
    fail "$name: the access log of $url shows a request sent to it (within 10 s)"
    return 1
}

# free_ports N — N distinct unused loopback TCP ports (all held open at once while choosing).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---- measurements ----------------------------------------------------------------------------

now_ms() { date +%s%3N; }

# metric URL NAME [LABEL=VALUE...] — sum of the samples of NAME whose labels include all the
# given pairs (0 when none), read from a Prometheus text endpoint.
metric() {
    local url=$1 name=$2
    shift 2
    curl -fsS --max-time 5 "$url/metrics" | python3 -c '
import re, sys
name, want = sys.argv[1], [tuple(a.split("=", 1)) for a in sys.argv[2:]]
total = 0.0
for line in sys.stdin:
    m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
    if not m or m.group(1) != name:
        continue
    labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", m.group(2) or ""))
    if all(labels.get(k) == v for k, v in want):
        total += float(m.group(3))
print(int(total))
' "$name" "$@"
}

# sha256 of stdin as "sha256:<hex>"
digest_of_stdin() { echo "sha256:$(sha256sum | cut -d' ' -f1)"; }

# ---- the shipped client snippets -------------------------------------------------------------

# render SRC DEST URL — a client snippet from deploy/clients with its placeholder address put
# right: "http://wharf.example:5000" becomes URL, any other "wharf.example:5000" URL's host:port.
# With CA, the commented-out `ca = ...` line is switched on and points at CA.
render() {
    local src=$1 dest=$2 url=$3 ca=${4:-}
    mkdir -p "$(dirname "$dest")"
    sed -e "s#http://wharf.example:5000#$url#g" -e "s#wharf.example:5000#${url#*://}#g" "$src" >"$dest"
    if [[ -n $ca ]]; then
        sed -i -E "s#^([[:space:]]*)\# ca = \"[^\"]*\".*#\1ca = \"$ca\"#" "$dest"
    fi
}

# registry_config FILE ADDR DIR: writes a CNCF distribution config serving ADDR from DIR.
registry_config() {
    cat >"$1" <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $3
http:
  addr: $2
EOF
}

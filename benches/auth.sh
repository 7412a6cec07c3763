#!/usr/bin/env bash
# What client authentication costs: the same wharf without and with [server.auth], under wrk on
# the API base (the cheapest route, so the check's share is largest); the first request of a
# user at bcrypt costs 5 (htpasswd -B's default), 10 and 12; and requests of a verified client
# while 64 connections send a new wrong password each time.
#
#     bash benches/auth.sh [WHARF_BIN]      # default target/release/wharf; needs wrk, htpasswd
#
# Everything listens on 127.0.0.1 and is stopped by PID at the end.
set -euo pipefail

WHARF=${1:-target/release/wharf}
for tool in wrk htpasswd openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk apache2-utils)" >&2; exit 1; }
done
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

read -r PLAIN_PORT AUTH_PORT <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')"
TOKEN=$(openssl rand -hex 32)
echo "sha256:$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1) bench" >"$WORK/tokens"
for cost in 5 10 12; do htpasswd -nbB -C "$cost" "u$cost" "pw$cost"; done >"$WORK/htpasswd"
cat >"$WORK/plain.toml" <<EOF
[server]
listen = "127.0.0.1:$PLAIN_PORT"
[cache]
dir = "$WORK/cache-plain"
EOF
cat >"$WORK/auth.toml" <<EOF
[server]
listen = "127.0.0.1:$AUTH_PORT"
[server.auth]
htpasswd = "$WORK/htpasswd"
tokens = "$WORK/tokens"
[cache]
dir = "$WORK/cache-auth"
EOF
for name in plain auth; do
    "$WHARF" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
done
PLAIN=http://127.0.0.1:$PLAIN_PORT AUTHED=http://127.0.0.1:$AUTH_PORT
for url in "$PLAIN" "$AUTHED"; do
    for _ in $(seq 50); do curl -fs -o /dev/null "$url/healthz" && break; sleep 0.1; done
done

basic() { printf 'Basic %s' "$(printf %s "$1" | base64 -w0)"; }
rps() { wrk -t2 -c64 -d6s "$@" | awk '/Requests\/sec/ {print $2}'; }

echo "== first request of a user (a bcrypt check), then the same again (remembered)"
for cost in 5 10 12; do
    header="Authorization: $(basic "u$cost:pw$cost")"
    echo "cost $cost: $(curl -s -o /dev/null -w '%{time_total}' -H "$header" "$AUTHED/v2/") s, then $(curl -s -o /dev/null -w '%{time_total}' -H "$header" "$AUTHED/v2/") s"
done
echo "unknown user: $(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H "Authorization: $(basic nobody:x)" "$AUTHED/v2/") s"

echo "== wrk -t2 -c64 -d6s on /v2/, requests per second, three rounds"
echo "round  no-auth  bearer-token  basic-cost10-remembered"
curl -fs -o /dev/null -H "Authorization: $(basic u10:pw10)" "$AUTHED/v2/"
for round in 1 2 3; do
    echo "$round  $(rps "$PLAIN/v2/")  $(rps -H "Authorization: Bearer $TOKEN" "$AUTHED/v2/")  $(rps -H "Authorization: $(basic u10:pw10)" "$AUTHED/v2/")"
done

echo "== a flood of guesses (64 connections, a new password each time, cost 12) for 10 s"
python3 - "$AUTH_PORT" "$TOKEN" <<'EOF'
import base64, http.client, sys, threading, time
port, token = int(sys.argv[1]), sys.argv[2]
answers, lock = {}, threading.Lock()

def pulls(seconds, out):
    c = http.client.HTTPConnection("127.0.0.1", port)
    end = time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        c.request("GET", "/v2/", headers={"Authorization": "Bearer " + token})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
        out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.01)

def guesses(n, seconds):
    c = http.client.HTTPConnection("127.0.0.1", port)
    end, i = time.time() + seconds, 0
    while time.time() < end:
        i += 1
        pair = base64.b64encode(f"u12:guess-{n}-{i}".encode()).decode()
        c.request("GET", "/v2/", headers={"Authorization": "Basic " + pair})
        r = c.getresponse(); r.read()
        with lock:
            answers[r.status] = answers.get(r.status, 0) + 1

def quantile(xs, q):
    return sorted(xs)[max(0, int(len(xs) * q) - 1)]

quiet, flooded = [], []
pulls(3, quiet)
threads = [threading.Thread(target=guesses, args=(n, 10)) for n in range(64)]
threads.append(threading.Thread(target=pulls, args=(10, flooded)))
[t.start() for t in threads]
[t.join() for t in threads]
for name, xs in (("quiet", quiet), ("during the flood", flooded)):
    print(f"verified client, {name}: p50 {quantile(xs, .5):.2f} ms, p99 {quantile(xs, .99):.2f} ms ({len(xs)} requests)")
print("answers to the guesses:", dict(sorted(answers.items())))
EOF

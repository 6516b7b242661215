#!/usr/bin/env bash
# The Docker runtime's figures (issue 5), on this machine's dockerd, with a Dockerfile app built
# FROM scratch from Debian's busybox-static (busybox httpd serving a page; no registry needed):
#
#   (a) push-to-live with cached layers: from the start of `berth deploy` of a changed page to
#       the URL serving it (REDEPLOYS consecutive redeploys; median and p90)
#   (b) wrk load (keep-alive, -c8) through LOAD_DEPLOYS consecutive redeploys: every response
#       must be a 200 from the app, with no socket errors
#
# Usage: bash bench/docker.sh [> report.md]   (report on stdout, progress on stderr)
#        RUNTIME=swarm REPLICAS=2 bash bench/docker.sh   (the same app as a Swarm service)
# Variables: BERTH_BIN (use this binary instead of building), REDEPLOYS (11), LOAD_DEPLOYS (20),
# RUNTIME (docker, or swarm: the daemon must be a swarm manager), REPLICAS (1),
# KEEP (0; 1 keeps the work directory). Needs dockerd running, wrk, curl, /bin/busybox.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REDEPLOYS=${REDEPLOYS:-11}
LOAD_DEPLOYS=${LOAD_DEPLOYS:-20}
KEEP=${KEEP:-0}
RUNTIME=${RUNTIME:-docker}
REPLICAS=${REPLICAS:-1}
log() { echo "[docker-bench] $*" >&2; }
die() { log "error: $*"; exit 1; }
for t in wrk curl python3; do command -v $t >/dev/null || die "$t is missing"; done
[ -x /bin/busybox ] || die "/bin/busybox is missing (apt-get install busybox-static)"
curl -s --max-time 5 --unix-socket /var/run/docker.sock http://d/_ping >/dev/null || die "no dockerd at /var/run/docker.sock"

if [ "$RUNTIME" = swarm ]; then
  [ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] ||
    die "the daemon is no swarm manager (docker swarm init --advertise-addr 127.0.0.1)"
fi

NAME=dockerbench
# shellcheck source=one-berth.sh
. "$ROOT/bench/one-berth.sh"

APP=$T/app
mkdir -p "$APP/www"
cp /bin/busybox "$APP/busybox"
cat >"$APP/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
CMD ["/bin/sh", "-c", "exec httpd -f -p $PORT -h /www"]
DOCKERFILE
printf 'runtime = "%s"\n[formation]\nweb = %s\n' "$RUNTIME" "$REPLICAS" >"$APP/berth.toml"
cli apps:create dock >/dev/null 2>&1

# deploy N: change the page to "release N" and deploy; prints the seconds until it is served.
deploy() {
  local n=$1 t0 body
  echo "release $n" >"$APP/www/index.html"
  t0=$EPOCHREALTIME
  cli deploy "$APP" -a dock >"$T/deploy-$n.log" 2>&1 || { echo FAIL; return; }
  for _ in $(seq 300); do
    body=$(curl -s --max-time 2 -H "Host: dock.localhost" "http://$HTTP/" || true)
    [ "$body" = "release $n" ] && break
    sleep 0.01
  done
  [ "$body" = "release $n" ] || { echo FAIL; return; }
  awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'
}

log "first deploy (builds the busybox layers)"
first=$(deploy 0)
log "first deploy: ${first}s"
log "(a) $REDEPLOYS redeploys with cached layers"
: >"$T/a.txt"
for n in $(seq 1 "$REDEPLOYS"); do deploy "$n" >>"$T/a.txt"; done
read -r A_MED A_P90 A_FAIL < <(python3 - "$T/a.txt" <<'PY'
import sys
v = [l.strip() for l in open(sys.argv[1])]
ok = sorted(float(x) for x in v if x != "FAIL")
q = lambda p: ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")
print(f"{q(0.5):.3f} {q(0.9):.3f} {len(v) - len(ok)}")
PY
)
log "(a) median ${A_MED}s p90 ${A_P90}s failed $A_FAIL"

log "(b) wrk through $LOAD_DEPLOYS redeploys"
cat >"$T/count.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; bad = 0 end
function response(status, headers, body)
  if status == 200 and string.find(body, "release", 1, true) then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  io.write(string.format("lua: ok %d bad %d\n", o, b))
end
LUA
wrk -t2 -c8 -d600s -H "Host: dock.localhost" -s "$T/count.lua" "http://$HTTP/" >"$T/wrk.txt" 2>&1 &
WRK=$!
B_FAIL=0
for n in $(seq 100 $((99 + LOAD_DEPLOYS))); do
  [ "$(deploy "$n")" = FAIL ] && B_FAIL=$((B_FAIL + 1))
done
kill -INT "$WRK" 2>/dev/null || true
wait "$WRK" 2>/dev/null || true
OKS=$(awk '/^lua:/ { print $3 }' "$T/wrk.txt")
BADS=$(awk '/^lua:/ { print $5 }' "$T/wrk.txt")
SOCK=$(grep -o 'Socket errors:.*' "$T/wrk.txt" || echo "Socket errors: none")
log "(b) ok $OKS bad $BADS, $SOCK, failed deploys $B_FAIL"
# Swarm services outlive berth by design: the app goes with the bench.
cli apps:destroy dock --confirm dock >/dev/null 2>&1 || log "could not destroy the app"

cat <<REPORT
### runtime = "$RUNTIME" with $REPLICAS web replica(s) (issue 5), $(date -u +%Y-%m-%d) on $REV

Command: \`RUNTIME=$RUNTIME REPLICAS=$REPLICAS bash bench/docker.sh\` (REDEPLOYS=$REDEPLOYS, LOAD_DEPLOYS=$LOAD_DEPLOYS); $(nproc) cores; dockerd $(curl -s --unix-socket /var/run/docker.sock http://d/version | python3 -c 'import json,sys; print(json.load(sys.stdin)["Version"])').

| figure | value | target |
|---|---|---|
| first deploy (busybox layers built) | ${first} s | — |
| (a) push-to-live with cached layers, median of $REDEPLOYS | **${A_MED} s** (p90 ${A_P90} s, $A_FAIL failed) | ≤ 3 s |
| (b) wrk -c8 keep-alive through $LOAD_DEPLOYS redeploys | **$BADS bad** of $((OKS + BADS)) responses; $SOCK; $B_FAIL failed deploys | 0 failed requests |
REPORT

#!/usr/bin/env bash
# The deploy engine's figures (issue 3), measured on this machine with the example app
# (examples/hello: Python stdlib web server, Procfile + berth.toml with a /health check):
#
#   (a) push-to-live: from the start of `berth deploy` to the URL serving the new release
#       (REDEPLOYS consecutive redeploys of one app; median and p90)
#   (b) wrk load through LOAD_DEPLOYS consecutive redeploys: keep-alive, then new connection per
#       request; every response must be a 200 from the app, with no socket errors
#   (c) APPS (100) apps live at once: berth's own RSS, and wrk req/s to the first and last app
#   (d) berth's idle RSS with IDLE_APPS (20) apps deployed
#
# Usage: bash bench/deploy.sh [> report.md]   (report on stdout, progress on stderr)
# Variables: DUR (10s: each wrk run of (c)), BERTH_BIN (use this binary instead of building),
# REDEPLOYS (11), LOAD_DEPLOYS (50), APPS (100), IDLE_APPS (20), PAR (8: concurrent deploys in
# (c) and (d)), IDLE_WAIT (5: seconds idle before the (d) reading), JAIL (1; 0 runs the apps
# unjailed, `[server] jail = false`, to measure what the jail costs), BERTH_REV (the commit to
# report for BERTH_BIN; default: the checkout's HEAD), APP_PY_DIR (the directory put
# first on berth's PATH so that the apps' `python3` is the real interpreter; default: the
# directory of `sys.executable`, which skips a pyenv shim), KEEP (0; 1 keeps the work directory).
#
# Everything binds 127.0.0.1 on ephemeral ports; each berth gets its own data dir in a temp dir
# and is stopped with SIGTERM (which stops its apps) when its part is done, or on any exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUR=${DUR:-10s}
REDEPLOYS=${REDEPLOYS:-11}
LOAD_DEPLOYS=${LOAD_DEPLOYS:-50}
APPS=${APPS:-100}
IDLE_APPS=${IDLE_APPS:-20}
PAR=${PAR:-8}
IDLE_WAIT=${IDLE_WAIT:-5}
KEEP=${KEEP:-0}
JAIL=${JAIL:-1}
HELLO=$ROOT/examples/hello
CMDLINE="DUR=$DUR JAIL=$JAIL bash bench/deploy.sh"

log() { echo "[deploy-bench] $*" >&2; }
die() { log "error: $*"; exit 1; }

for t in wrk curl python3; do command -v $t >/dev/null || die "$t is missing (apt-get install -y wrk curl python3)"; done

if [ -n "${BERTH_BIN:-}" ]; then
  BERTH=$BERTH_BIN
else
  log "cargo build --release -p berth"
  (cd "$ROOT" && cargo build --release -p berth >&2) || die "berth does not build"
  BERTH=${CARGO_TARGET_DIR:-$ROOT/target}/release/berth
fi
[ -x "$BERTH" ] || die "no berth binary at $BERTH"

# The apps run `python3 app.py` with berth's PATH. A pyenv shim in front (a bash script that
# runs pyenv) adds ~0.2 s of CPU to every start here; put the real interpreter's directory first.
APP_PY_DIR=${APP_PY_DIR:-$(dirname "$(python3 -c 'import sys; print(sys.executable)')")}
APP_PATH="$APP_PY_DIR:$PATH"
APP_PY=$(PATH=$APP_PATH command -v python3)

ulimit -n 100000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

T=$(mktemp -d /tmp/berth-deploybench.XXXXXX)
BERTH_PIDS=() BG_PIDS=() NOTES=()
cleanup() {
  local p i
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${BERTH_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${BERTH_PIDS[@]}"; do
    for ((i = 0; i < 300; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { log "berth $p did not stop in 30 s; SIGKILL"; kill -KILL "$p" 2>/dev/null || true; }
  done
  # The app jail leaves a system user per app and an nftables table per berth (they outlive a
  # stop, as instances do): remove this run's.
  local data tag u
  for data in "$T"/*/data; do
    [ -d "$data" ] || continue
    tag=$(printf '%s' "$(realpath "$data")" | sha256sum | cut -c1-8)
    for u in $(awk -F: -v t="($tag)" 'index($5, "berth app ") == 1 && substr($5, length($5) - length(t) + 1) == t { print $1 }' /etc/passwd); do
      userdel "$u" 2>/dev/null || true
    done
    nft delete table inet "berth_$tag" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then log "work directory kept: $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Was the machine busy just before we started? (This VM is shared with builds and tests.)
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
read -r b0 t0 < <(cpu_busy); sleep 1; read -r b1 t1 < <(cpu_busy)
BUSY_AT_START=$(((b1 - b0) * 100 / (t1 - t0 > 0 ? t1 - t0 : 1)))
((BUSY_AT_START < 20)) || log "warning: the CPUs were ${BUSY_AT_START}% busy before the start; figures may be noisy"

# --- helpers -----------------------------------------------------------------------------------------
# start_berth NAME: a fresh berth with its own config and data dir in $T/NAME. Sets B_DATA, B_HTTP,
# B_PID, B_LOG, B_ADMIN.
start_berth() {
  local d=$T/$1 i
  mkdir -p "$d"
  printf '[server]\nhttp = "127.0.0.1:0"\nhttps = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nworkers = 1\naccess_log = "off"\ndata_dir = "%s/data"\n' "$d" >"$d/berth.toml"
  [ "$JAIL" = 1 ] || echo 'jail = false' >>"$d/berth.toml"
  PATH=$APP_PATH "$BERTH" serve --config "$d/berth.toml" >"$d/berth.log" 2>&1 &
  local launched=$!
  BERTH_PIDS+=("$launched")
  for ((i = 0; i < 150; i++)); do
    [ -s "$d/data/listen.json" ] && [ -s "$d/data/admin-token" ] && break
    kill -0 "$launched" 2>/dev/null || die "berth exited at start: $(tail -c 500 "$d/berth.log")"
    sleep 0.1
  done
  [ -s "$d/data/listen.json" ] || die "berth wrote no listen.json in 15 s ($d/berth.log)"
  B_DATA=$d/data B_LOG=$d/berth.log
  B_HTTP=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["http"])' "$B_DATA/listen.json")
  B_ADMIN=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$B_DATA/listen.json")
  B_PID=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' "$B_DATA/listen.json")
  [ "$B_PID" = "$launched" ] || die "listen.json pid $B_PID is not the berth we started ($launched)"
  log "$1: berth pid $B_PID, http $B_HTTP"
}

# stop_berth: SIGTERM the current berth, wait for it (it stops its apps first), then note its
# WARN/ERROR lines and any app process it left behind.
stop_berth() {
  local name=$1 i left p
  kill -0 "$B_PID" 2>/dev/null || NOTES+=("$name: berth had died before the end of its part (log: see below)")
  kill -TERM "$B_PID" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do kill -0 "$B_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$B_PID" 2>/dev/null && NOTES+=("$name: berth did not exit within 30 s of SIGTERM")
  if ! kill -0 "$B_PID" 2>/dev/null; then
    local keep=()
    for p in "${BERTH_PIDS[@]}"; do [ "$p" = "$B_PID" ] || keep+=("$p"); done
    BERTH_PIDS=("${keep[@]}")
  fi
  # Any process still working in this berth's data dir (an app berth did not stop)?
  left=0
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/cwd" 2>/dev/null) == "$T/$name/"* ]] && left=$((left + 1))
  done
  ((left == 0)) || NOTES+=("$name: $left processes still run in its data dir after berth stopped")
  while read -r count msg; do
    [ -n "$count" ] && NOTES+=("$name: berth logged ${count}× \`${msg:0:160}\`")
  done < <(sed 's/\x1b\[[0-9;]*m//g' "$B_LOG" | awk '$2 == "WARN" || $2 == "ERROR" { $1 = ""; print }' |
    sed -E 's/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -n 5)
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# RSS of all of a process's descendants (the apps and their shells), KiB.
desc_rss_kib() {
  ps -e -o pid=,ppid=,rss= | awk -v root="$1" '{ par[$1] = $2; rss[$1] = $3 }
    END { for (p in par) { q = par[p]; while (q != "" && q != 0 && q != root) q = par[q]
      if (q == root) { s += rss[p]; n++ } } print s + 0, n + 0 }'
}

# deploy_many N: deploy examples/hello as app001..appN, PAR at a time; failures go to NOTES.
deploy_many() {
  local n=$1 name=$2
  mkdir -p "$T/$name/deploys"
  cat >"$T/deploy1.sh" <<'EOF'
#!/bin/sh
# deploy1.sh BERTH DATA DIR LOGDIR APP
"$1" deploy "$3" -a "$5" --data-dir "$2" >"$4/$5.log" 2>&1 || echo "$5" >>"$4/failed"
EOF
  local t0=$EPOCHREALTIME
  seq -f 'app%03g' 1 "$n" | xargs -P"$PAR" -n1 sh "$T/deploy1.sh" "$BERTH" "$B_DATA" "$HELLO" "$T/$name/deploys"
  DEPLOY_MANY_S=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  if [ -s "$T/$name/deploys/failed" ]; then
    local f
    f=$(head -n 1 "$T/$name/deploys/failed")
    NOTES+=("$name: $(wc -l <"$T/$name/deploys/failed") of $n deploys failed, e.g. $f: $(tail -n 3 "$T/$name/deploys/$f.log" | tr '\n' ' ')")
  fi
  # Every app must answer with its release.
  local i ok=0 app body bad_shown=0
  for ((i = 1; i <= n; i++)); do
    app=$(printf 'app%03d' "$i")
    body=$(curl -sS --max-time 5 -H "Host: $app.localhost" "http://$B_HTTP/" 2>&1 || true)
    if [[ $body == "Hello from berth (v1, web.1)"* ]]; then
      ok=$((ok + 1))
    elif [ "$bad_shown" = 0 ]; then
      NOTES+=("$name: $app answered \`${body:0:120}\`")
      bad_shown=1
    fi
  done
  LIVE_APPS=$ok
  log "$name: $n deploys in ${DEPLOY_MANY_S}s; $ok/$n apps answer"
}

# The wrk script: counts responses by status, and 200s whose body is not the app's greeting.
cat >"$T/count.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; non200 = 0; wrongbody = 0; lastbad = ""; badfirst = 0; badlast = 0 end
local function bad(what)
  lastbad = what
  badlast = os.time()
  if badfirst == 0 then badfirst = badlast end
end
function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1; bad(tostring(status) .. " " .. string.sub(body, 1, 60))
  elseif not string.find(body, "Hello from berth", 1, true) then
    wrongbody = wrongbody + 1; bad("200 " .. string.sub(body, 1, 60))
  else
    ok = ok + 1
  end
end
function done(summary, latency, requests)
  local o, n, w, l, f, z = 0, 0, 0, "", 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); n = n + t:get("non200"); w = w + t:get("wrongbody")
    if t:get("lastbad") ~= "" then l = t:get("lastbad"); f = t:get("badfirst"); z = t:get("badlast") end
  end
  io.write(string.format("lua: ok200 %d non200 %d wrongbody %d lastbad %q\n", o, n, w, l))
  if f > 0 then io.write(string.format("lua-bad-window: first %d last %d (unix s)\n", f, z)) end
end
EOF

# wrk_lat FILE: "p99 max" latency from a wrk --latency output.
wrk_lat() { awk '$1 == "Latency" && $2 != "Distribution" { max = $4 } $1 == "99%" { p99 = $2 } END { printf "p99 %s, max %s", p99, max }' "$1"; }
# wrk_fields FILE: "rps non2xx sockerr" from a wrk output (absent lines mean 0).
wrk_fields() {
  awk '/^Requests\/sec:/ { rps = $2 }
       /Non-2xx or 3xx responses:/ { non = $NF }
       /Socket errors:/ { gsub(/,/, ""); se = $4 + $6 + $8 + $10; sel = $0; sub(/^ *Socket errors: */, "", sel) }
       END { printf "%s\t%d\t%d\t%s\n", (rps == "" ? "-" : rps), non + 0, se + 0, (sel == "" ? "connect 0 read 0 write 0 timeout 0" : sel) }' "$1"
}

if [ -n "${BERTH_REV:-}" ]; then
  REV=$BERTH_REV
else
  REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -z "$(git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ] || REV="$REV+dirty"
  [ -z "${BERTH_BIN:-}" ] || REV="$REV (the checkout; BERTH_BIN may differ: set BERTH_REV)"
fi
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')

# --- (a) push-to-live, and (b) load through redeploys: one berth, one app ---------------------------
start_berth ab
log "(a)/(b): first deploy of hello"
"$BERTH" deploy "$HELLO" -a hello --data-dir "$B_DATA" >"$T/ab/deploy0.log" 2>&1 ||
  die "the first deploy of examples/hello failed: $(tail -n 5 "$T/ab/deploy0.log")"

cat >"$T/push.py" <<'EOF'
"""push.py BERTH DATA DIR APP HTTP_ADDR N: N redeploys of APP; for each, the time from starting
`berth deploy` to the first GET / whose body names the new release, the CLI's own time, and when
the CLI printed each step line (all ms from the start). Non-200s or errors while polling count."""
import http.client, json, re, statistics, subprocess, sys, threading, time

berth, data, src, app, addr, n = sys.argv[1:7]
host, port = addr.rsplit(":", 1)
n = int(n)

def get():
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", "/", headers={"Host": f"{app}.localhost", "Connection": "close"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()

STEPS = [("start", "Starting"), ("health", "Waiting for"), ("switch", "Switching traffic"),
         ("drain", "Draining"), ("done", "Done in")]
rows = []
bad = []
for i in range(n):
    status, body = get()
    m = re.search(r"\(v(\d+),", body)
    if status != 200 or not m:
        sys.exit(f"before redeploy {i + 1}: got {status} {body[:100]!r}")
    want = f"(v{int(m.group(1)) + 1},"
    steps = {}
    t0 = time.perf_counter()
    p = subprocess.Popen([berth, "deploy", src, "-a", app, "--data-dir", data],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def read_steps(p=p, steps=steps, t0=t0):
        for line in p.stdout:
            t = (time.perf_counter() - t0) * 1000
            for key, prefix in STEPS:
                if prefix in line and key not in steps:
                    steps[key] = t
            steps.setdefault("lines", []).append(line.rstrip())

    reader = threading.Thread(target=read_steps)
    reader.start()
    live = cli = None
    while live is None:
        try:
            s, b = get()
            if s != 200:
                bad.append(f"redeploy {i + 1}: {s} {b[:80]!r}")
            elif want in b:
                live = (time.perf_counter() - t0) * 1000
        except Exception as e:  # a refused or broken connection is a failure too
            bad.append(f"redeploy {i + 1}: {e!r}")
        if cli is None and p.poll() is not None:
            cli = (time.perf_counter() - t0) * 1000
        if cli is not None and live is None and (time.perf_counter() - t0) * 1000 > cli + 5000:
            sys.exit(f"redeploy {i + 1}: the CLI exited ({p.returncode}) but {want} never appeared:\n"
                     + "\n".join(steps.get("lines", [])))
        time.sleep(0.002)
    rc = p.wait()
    if cli is None:
        cli = (time.perf_counter() - t0) * 1000
    reader.join()
    if rc != 0:
        sys.exit(f"redeploy {i + 1}: berth deploy exited {rc}:\n" + "\n".join(steps.get("lines", [])))
    rows.append((live, cli, {k: steps.get(k) for k, _ in STEPS}))
    print(f"redeploy {i + 1:2d} {want[1:-1]}: live {live:7.1f} ms, CLI done {cli:7.1f} ms; steps "
          + " ".join(f"{k}@{v:.0f}" if v is not None else f"{k}@-" for k, v in rows[-1][2].items()),
          file=sys.stderr)
    time.sleep(0.3)

def pct(xs, q):  # nearest rank
    xs = sorted(xs)
    return xs[max(0, -(-len(xs) * q // 100) - 1)]

lives = [r[0] for r in rows]
clis = [r[1] for r in rows]
out = {"median": statistics.median(lives), "p90": pct(lives, 90), "min": min(lives), "max": max(lives),
       "cli_median": statistics.median(clis), "bad": bad,
       "steps": {k: statistics.median([r[2][k] for r in rows if r[2][k] is not None] or [0]) for k, _ in STEPS}}
print(json.dumps(out))
EOF

log "(a) push-to-live: $REDEPLOYS redeploys of hello"
python3 "$T/push.py" "$BERTH" "$B_DATA" "$HELLO" hello "$B_HTTP" "$REDEPLOYS" >"$T/push.json" 2> >(tee "$T/push.log" >&2) ||
  die "push-to-live failed: $(tail -n 8 "$T/push.log")"
read -r A_MED A_P90 A_MIN A_MAX A_CLI A_BAD A_STEPS < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1])); s = d["steps"]
print("%.0f %.0f %.0f %.0f %.0f %d" % (d["median"], d["p90"], d["min"], d["max"], d["cli_median"], len(d["bad"])),
      ",".join("%s@%.0f" % (k, v) for k, v in s.items()))' "$T/push.json")
((A_BAD == 0)) || NOTES+=("(a): $A_BAD polls during the redeploys were not a 200: $(python3 -c 'import json,sys; print("; ".join(json.load(open(sys.argv[1]))["bad"][:3]))' "$T/push.json")")

# (b): wrk runs until the redeploy loop is over (SIGINT makes wrk stop and print its summary).
redeploy_loop() { # LABEL: LOAD_DEPLOYS sequential redeploys; sets LOOP_FAILED, LOOP_S
  local i t0=$EPOCHREALTIME
  LOOP_FAILED=0
  for ((i = 1; i <= LOAD_DEPLOYS; i++)); do
    echo "$i $EPOCHREALTIME" >>"$T/ab/loop.$1.times"
    "$BERTH" deploy "$HELLO" -a hello --data-dir "$B_DATA" >"$T/ab/loop.$1.$i.log" 2>&1 || {
      LOOP_FAILED=$((LOOP_FAILED + 1))
      NOTES+=("(b) $1: redeploy $i failed: $(tail -n 3 "$T/ab/loop.$1.$i.log" | tr '\n' ' ')")
    }
  done
  LOOP_S=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
}
load_through_redeploys() { # LABEL [wrk args...]
  local label=$1; shift
  local f=$T/ab/wrk.$label.txt wpid
  log "(b) $label: wrk -t1 -c16 $* during $LOAD_DEPLOYS redeploys"
  wrk -t1 -c16 -d3600s --latency -s "$T/count.lua" -H "Host: hello.localhost" "$@" "http://$B_HTTP/" >"$f" 2>&1 &
  wpid=$!
  BG_PIDS+=("$wpid")
  sleep 1
  redeploy_loop "$label"
  sleep 1
  kill -INT "$wpid" 2>/dev/null || true
  wait "$wpid" || true
  BG_PIDS=()
  grep -q '^Requests/sec:' "$f" || die "wrk ($label) printed no summary: $(head -c 400 "$f")"
  grep -q '^lua: ' "$f" || die "wrk ($label): the lua done() hook printed nothing: $(tail -c 400 "$f")"
  log "(b) $label: $LOAD_DEPLOYS redeploys in ${LOOP_S}s; $(grep -E 'Requests/sec|Non-2xx|Socket errors|^lua' "$f" | tr '\n' ' ')"
  if grep -q '^lua-bad-window' "$f"; then
    local first last
    read -r first last < <(awk '/^lua-bad-window/ { print $3, $5 }' "$f")
    NOTES+=("(b) $label: bad responses between $(date -u -d "@$first" +%T) and $(date -u -d "@$last" +%T) UTC; the $LOAD_DEPLOYS redeploys ran $(date -u -d "@$(head -n 1 "$T/ab/loop.$label.times" | cut -d' ' -f2)" +%T)–$(date -u +%T) UTC; last one seen: $(sed -n 's/^lua: .*lastbad //p' "$f")")
  fi
  # berth's own count of upstream errors and 5xx so far.
  curl -sS --max-time 5 -H "Authorization: Bearer $(cat "$B_DATA/admin-token")" "http://$B_ADMIN/metrics" >"$T/ab/metrics.$label.txt" 2>&1 || true
  local m
  m=$(grep -E '^berth_upstream_errors_total|^berth_requests_total\{route="hello[^}]*status="5xx"' "$T/ab/metrics.$label.txt" | tr '\n' ' ' || true)
  [ -z "$m" ] || log "(b) $label: metrics: $m"
  [[ $m != *upstream_errors* ]] || NOTES+=("(b) after $label: berth /metrics: $m")
}
load_through_redeploys keepalive
IFS=$'\t' read -r BK_RPS BK_NON BK_SE BK_SEL < <(wrk_fields "$T/ab/wrk.keepalive.txt")
BK_LUA=$(sed -n 's/^lua: //p' "$T/ab/wrk.keepalive.txt")
BK_LOOP_S=$LOOP_S BK_FAILED=$LOOP_FAILED
load_through_redeploys close -H "Connection: close"
IFS=$'\t' read -r BC_RPS BC_NON BC_SE BC_SEL < <(wrk_fields "$T/ab/wrk.close.txt")
BC_LUA=$(sed -n 's/^lua: //p' "$T/ab/wrk.close.txt")
BC_LOOP_S=$LOOP_S BC_FAILED=$LOOP_FAILED
AB_RSS=$(rss_kib "$B_PID")
stop_berth ab

# --- (c) APPS apps live at once -----------------------------------------------------------------------
start_berth c
log "(c) deploying $APPS apps, $PAR at a time"
deploy_many "$APPS" c
C_LIVE=$LIVE_APPS C_DEPLOY_S=$DEPLOY_MANY_S
sleep 2
C_RSS=$(rss_kib "$B_PID")
read -r C_APPS_RSS C_APPS_N < <(desc_rss_kib "$B_PID")
last=$(printf 'app%03d' "$APPS")
c_wrk() { # APP
  local f=$T/c/wrk.$1.txt
  log "(c) wrk -t1 -c16 -d$DUR Host: $1.localhost"
  wrk -t1 -c16 -d1s -H "Host: $1.localhost" "http://$B_HTTP/" >/dev/null 2>&1 || true   # warm-up
  wrk -t1 -c16 -d"$DUR" --latency -H "Host: $1.localhost" "http://$B_HTTP/" >"$f" 2>&1 || true
  grep -q '^Requests/sec:' "$f" || die "wrk ($1) failed: $(head -c 400 "$f")"
}
c_wrk app001
c_wrk "$last"
IFS=$'\t' read -r C1_RPS C1_NON C1_SE C1_SEL < <(wrk_fields "$T/c/wrk.app001.txt")
IFS=$'\t' read -r CN_RPS CN_NON CN_SE CN_SEL < <(wrk_fields "$T/c/wrk.$last.txt")
for x in "app001:$C1_NON:$C1_SE:$C1_SEL" "$last:$CN_NON:$CN_SE:$CN_SEL"; do
  IFS=: read -r a n s sl <<<"$x"
  ((n == 0 && s == 0)) || NOTES+=("(c) wrk to $a: $n non-2xx, socket errors $sl")
done
C_RATIO=$(awk -v a="$CN_RPS" -v b="$C1_RPS" 'BEGIN { printf "%.3f", a / b }')
C_RSS_LOADED=$(rss_kib "$B_PID")
C_HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$B_PID/status")
stop_berth c

# --- (d) idle RSS with IDLE_APPS apps ----------------------------------------------------------------
start_berth d
log "(d) deploying $IDLE_APPS apps, then ${IDLE_WAIT}s idle"
deploy_many "$IDLE_APPS" d
D_LIVE=$LIVE_APPS
sleep "$IDLE_WAIT"
D_RSS=$(rss_kib "$B_PID")
stop_berth d

# --- report ------------------------------------------------------------------------------------------
met() { awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN {
  if (v == "" || v == "-") { print "?"; exit }
  if (op == "<=") ok = (v + 0 <= l + 0); else if (op == "==") ok = (v + 0 == l + 0); else if (op == "within") ok = ((v - 1 < 0 ? 1 - v : v - 1) <= l + 0)
  print ok ? "yes" : "**no**" }'; }
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)

echo "Command: \`$CMDLINE\`$([ -n "${BERTH_BIN:-}" ] && echo " (BERTH_BIN=$BERTH_BIN)") — $DATE — berth \`$REV\`"
echo
echo "Machine: $cpu, $(nproc) cores, $(uname -sr); $(wrk -v 2>&1 | awk 'NR == 1 {print "wrk", $2}'); apps run $APP_PY ($("$APP_PY" -V 2>&1)). CPU busy before the start: ${BUSY_AT_START}%."
echo
echo "| figure | value | target | met? |"
echo "|---|---:|---:|---|"
echo "| (a) push-to-live, median of $REDEPLOYS redeploys | $A_MED ms | ≤ 1000 ms | $(met "$A_MED" "<=" 1000) |"
echo "| (a) push-to-live, p90 | $A_P90 ms | — | — |"
echo "| (b) keep-alive wrk -c16 through $LOAD_DEPLOYS redeploys: non-2xx / socket errors | $BK_NON / $BK_SE | 0 / 0 | $(met $((BK_NON + BK_SE)) "==" 0) |"
echo "| (b) keep-alive req/s | $(printf '%.0f' "$BK_RPS") | — | — |"
echo "| (b) new conn per request (Connection: close) -c16 through $LOAD_DEPLOYS redeploys: non-2xx / socket errors | $BC_NON / $BC_SE | 0 / 0 | $(met $((BC_NON + BC_SE)) "==" 0) |"
echo "| (b) new-conn req/s | $(printf '%.0f' "$BC_RPS") | — | — |"
echo "| (c) berth RSS with $C_LIVE/$APPS apps live | $(mib "$C_RSS") MiB | ≤ 50 MiB | $(met "$(mib "$C_RSS")" "<=" 50) |"
echo "| (c) berth RSS after the wrk runs (peak VmHWM) | $(mib "$C_RSS_LOADED") MiB ($(mib "$C_HWM")) | ≤ 50 MiB | $(met "$(mib "$C_RSS_LOADED")" "<=" 50) |"
echo "| (c) wrk -c16 -d$DUR req/s: app001 / $last | $(printf '%.0f' "$C1_RPS") / $(printf '%.0f' "$CN_RPS") (ratio $C_RATIO) | within 5% | $(met "$C_RATIO" within 0.05) |"
echo "| (d) berth idle RSS with $D_LIVE/$IDLE_APPS apps, ${IDLE_WAIT}s after the last deploy | $(mib "$D_RSS") MiB | ≤ 30 MiB | $(met "$(mib "$D_RSS")" "<=" 30) |"
echo
echo "Details:"
echo
echo "- (a) min/max $A_MIN/$A_MAX ms; the CLI itself returned after $A_CLI ms (median; it also waits for the drain). When the CLI printed each step line (median ms from the start; the log stream can deliver them late): $A_STEPS. Non-200 polls: $A_BAD."
echo "- (b) keep-alive: $BK_LOOP_S s for $LOAD_DEPLOYS redeploys ($BK_FAILED failed); wrk socket errors: $BK_SEL; latency $(wrk_lat "$T/ab/wrk.keepalive.txt"); lua: $BK_LUA."
echo "- (b) Connection: close: $BC_LOOP_S s for $LOAD_DEPLOYS redeploys ($BC_FAILED failed); wrk socket errors: $BC_SEL; latency $(wrk_lat "$T/ab/wrk.close.txt"); lua: $BC_LUA. berth RSS after (b): $(mib "$AB_RSS") MiB."
echo "- (c) $APPS deploys ($PAR at a time) took $C_DEPLOY_S s; the $C_APPS_N processes under berth (sh + python3 per app) use $(mib "$C_APPS_RSS") MiB RSS in all."
if ((${#NOTES[@]})); then
  echo
  echo "Problems and berth's warnings:"
  echo
  for n in "${NOTES[@]}"; do echo "- $n"; done
fi

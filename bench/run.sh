#!/usr/bin/env bash
# berth vs nginx vs HAProxy vs Caddy, one worker each, in front of the same upstream (nginx, one
# worker), on this machine, in one run. Prints a markdown report on stdout (progress on stderr);
# copy it to bench/RESULTS.md by hand. See bench/README.md.
#
#   bash bench/run.sh                 # DUR=10s per measurement
#   DUR=3s bash bench/run.sh          # quick look
#
# Environment: DUR (10s) measured time per run, WARMUP (1s) unmeasured run before each, CONN (64)
# keep-alive connections, CLOSE_CONN (16) connections for the new-connection-per-request run,
# H2_CONN (16) / H2_STREAMS (10) for h2load, IDLE_CONNS (10000) for the memory run,
# W (/tmp/berthbench) work dir, BERTH_BIN (skip the cargo build and use this binary),
# SERVERS ("direct nginx haproxy caddy berth") to run a subset, BERTH_WRAP (a command prefix for
# berth, e.g. "valgrind --tool=callgrind"), SETUP_ONLY=1 (start and check the servers, then wait
# for Ctrl-C instead of measuring: for profiling by hand), STARTUP_TIMEOUT (15, seconds),
# NOISE_RETRIES (2: measure again when other processes disturbed a run).
set -euo pipefail

DUR=${DUR:-10s}
WARMUP=${WARMUP:-1s}
CONN=${CONN:-64}
CLOSE_CONN=${CLOSE_CONN:-16}
H2_CONN=${H2_CONN:-16}
H2_STREAMS=${H2_STREAMS:-10}
IDLE_CONNS=${IDLE_CONNS:-10000}
W=${W:-/tmp/berthbench}
SERVERS=${SERVERS:-direct nginx haproxy caddy berth}
BERTH_WRAP=${BERTH_WRAP:-}
SETUP_ONLY=${SETUP_ONLY:-0}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-15}
NOISE_RETRIES=${NOISE_RETRIES:-2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

# Fixed loopback ports (benchmark only; tests use ephemeral ports).
UP_HTTP=19001 UP_HTTPS=19011
NG_HTTP=19101 NG_HTTPS=19111
HA_HTTP=19102 HA_HTTPS=19112
CA_HTTP=19103 CA_HTTPS=19113
BE_HTTP=19201 BE_HTTPS=19202 BE_ADMIN=19203

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# $W is wiped: refuse anything that does not look like an earlier work dir of this script.
if [ -e "$W" ] && [ -n "$(ls -A "$W" 2>/dev/null)" ] && [ ! -e "$W/berth.toml" ]; then
  die "W=$W exists, is not empty and is not an earlier bench work dir; not deleting it"
fi

# --- tools -----------------------------------------------------------------------------------
need=()
for pair in nginx:nginx-light haproxy:haproxy caddy:caddy wrk:wrk h2load:nghttp2-client \
    openssl:openssl curl:curl python3:python3 ss:iproute2; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  log "installing: ${need[*]}"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

if [ -n "${BERTH_BIN:-}" ]; then
  BERTH=$BERTH_BIN
else
  log "cargo build --release -p berth"
  (cd "$ROOT" && cargo build --release -p berth >&2) || die "berth does not build"
  BERTH=$ROOT/target/release/berth
fi
[ -x "$BERTH" ] || die "no berth binary at $BERTH"

# Every server and client inherits this; 10,000 idle connections need more than the usual 1024.
ulimit -n 100000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((IDLE_CONNS + 1000)) ] ||
  log "warning: ulimit -n is $(ulimit -n); the ${IDLE_CONNS}-connection run may fail"

for p in $UP_HTTP $UP_HTTPS $NG_HTTP $NG_HTTPS $HA_HTTP $HA_HTTPS $CA_HTTP $CA_HTTPS $BE_HTTP $BE_HTTPS $BE_ADMIN; do
  [ -z "$(ss -Htln "sport = :$p")" ] || die "port $p is in use (another benchmark still running?)"
done
# Is something else using the CPU right now? (Sampled over one second; the load average would
# still show the cargo build.)
cpu_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
read -r b0 t0 < <(cpu_busy); sleep 1; read -r b1 t1 < <(cpu_busy)
busy=$(( (b1 - b0) * 100 / (t1 - t0 > 0 ? t1 - t0 : 1) ))
((busy < 15)) || log "warning: the CPUs were ${busy}% busy before the run; numbers will be noisy"

# --- work dir, certificate, content ------------------------------------------------------------
rm -rf "$W"
mkdir -p "$W"/{www,out,tmp,data,caddy}
head -c 768 /dev/urandom | base64 -w0 | head -c 1024 >"$W/www/1k.txt"
echo '<!doctype html><title>bench</title>' >"$W/www/index.html"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null || die "openssl could not make a certificate"
cat "$W/cert.pem" "$W/key.pem" >"$W/combined.pem"

# --- configs -----------------------------------------------------------------------------------
cat >"$W/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $W/up.pid; error_log $W/up.err;
events { worker_connections 20000; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $W/tmp/up_body; proxy_temp_path $W/tmp/up_proxy;
  ssl_protocols TLSv1.2 TLSv1.3;
  server {
    listen 127.0.0.1:$UP_HTTP; listen 127.0.0.1:$UP_HTTPS ssl http2;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    root $W/www;
    location = / { return 200 "hello from upstream\n"; }
  }
}
CONF

cat >"$W/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $W/ng.pid; error_log $W/ng.err;
events { worker_connections 20000; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $W/tmp/ng_body; proxy_temp_path $W/tmp/ng_proxy;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
  upstream app { server 127.0.0.1:$UP_HTTP; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NG_HTTP default_server; listen 127.0.0.1:$NG_HTTPS ssl http2 default_server;
    location / {
      proxy_pass http://app; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id;
    }
  }
  server {
    listen 127.0.0.1:$NG_HTTP; listen 127.0.0.1:$NG_HTTPS ssl http2;
    server_name static.test; root $W/www;
  }
}
CONF

cat >"$W/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 12000
  no strict-limits
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  maxconn 12000
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option forwardfor
frontend f
  bind 127.0.0.1:$HA_HTTP
  bind 127.0.0.1:$HA_HTTPS ssl crt $W/combined.pem alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:$UP_HTTP
CONF

cat >"$W/Caddyfile" <<CONF
{
  admin off
  auto_https off
  default_sni bench.test
  storage file_system $W/caddy
}
http://static.test:$CA_HTTP {
  bind 127.0.0.1
  root * $W/www
  file_server
}
http://:$CA_HTTP {
  bind 127.0.0.1
  reverse_proxy 127.0.0.1:$UP_HTTP {
    transport http {
      keepalive_idle_conns_per_host 64
    }
  }
}
https://:$CA_HTTPS {
  bind 127.0.0.1
  tls $W/cert.pem $W/key.pem
  reverse_proxy 127.0.0.1:$UP_HTTP {
    transport http {
      keepalive_idle_conns_per_host 64
    }
  }
}
CONF

cat >"$W/berth.toml" <<CONF
[server]
http = "127.0.0.1:$BE_HTTP"
https = "127.0.0.1:$BE_HTTPS"
admin = "127.0.0.1:$BE_ADMIN"
workers = 1
access_log = "off"
data_dir = "$W/data"

[tls]
certs = [{ cert = "$W/cert.pem", key = "$W/key.pem" }]
local_ca = false

[[route]]
host = "*"
upstreams = ["127.0.0.1:$UP_HTTP"]

[[route]]
host = "static.test"
static = "$W/www"
CONF

# --- start everything ----------------------------------------------------------------------------
declare -A PID=()
IDLE_PID=
cleanup() {
  trap - EXIT INT TERM
  [ -n "$IDLE_PID" ] && kill "$IDLE_PID" 2>/dev/null
  local p
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

is_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_ready NAME LOG PORT...: poll until every port accepts, with a deadline.
wait_ready() {
  local name=$1 logf=$2; shift 2
  local deadline=$((SECONDS + STARTUP_TIMEOUT)) p
  for p in "$@"; do
    until is_up "$p"; do
      if ! kill -0 "${PID[$name]}" 2>/dev/null; then
        log "$name exited at startup; last lines of $logf:"; tail -n 20 "$logf" >&2 || true
        return 1
      fi
      ((SECONDS < deadline)) || { log "$name: port $p not up after $STARTUP_TIMEOUT s"; return 1; }
      sleep 0.05
    done
  done
}

want() { [[ " $SERVERS " == *" $1 "* ]]; }
declare -A UP=()   # servers that started
NOTES=()

nginx -e "$W/up.err" -c "$W/upstream.conf" >"$W/up.log" 2>&1 & PID[direct]=$!
wait_ready direct "$W/up.err" $UP_HTTP $UP_HTTPS || die "the upstream did not start"
UP[direct]=1
if want nginx; then
  nginx -e "$W/ng.err" -c "$W/nginx.conf" >"$W/ng.log" 2>&1 & PID[nginx]=$!
  wait_ready nginx "$W/ng.err" $NG_HTTP $NG_HTTPS && UP[nginx]=1
fi
if want haproxy; then
  haproxy -db -f "$W/haproxy.cfg" >"$W/haproxy.log" 2>&1 & PID[haproxy]=$!
  wait_ready haproxy "$W/haproxy.log" $HA_HTTP $HA_HTTPS && UP[haproxy]=1
fi
if want caddy; then
  GOMAXPROCS=1 XDG_DATA_HOME=$W/caddy XDG_CONFIG_HOME=$W/caddy \
    caddy run --config "$W/Caddyfile" --adapter caddyfile >"$W/caddy.log" 2>&1 & PID[caddy]=$!
  wait_ready caddy "$W/caddy.log" $CA_HTTP $CA_HTTPS && UP[caddy]=1
fi
if want berth; then
  # shellcheck disable=SC2086 # BERTH_WRAP is a command prefix, split on purpose
  $BERTH_WRAP "$BERTH" serve --config "$W/berth.toml" >"$W/berth.log" 2>&1 & PID[berth]=$!
  deadline=$((SECONDS + STARTUP_TIMEOUT))
  until [ -s "$W/data/listen.json" ]; do
    kill -0 "${PID[berth]}" 2>/dev/null || break
    ((SECONDS < deadline)) || break
    sleep 0.05
  done
  if wait_ready berth "$W/berth.log" $BE_HTTP $BE_HTTPS; then
    UP[berth]=1
  else
    NOTES+=("berth did not start: $(tail -n 3 "$W/berth.log" | tr '\n' ' ')")
  fi
fi
for s in nginx haproxy caddy; do
  if want $s && [ -z "${UP[$s]:-}" ]; then NOTES+=("$s did not start (see $W)"); fi
done

# RSS of a process and its children, in KiB (nginx: master + worker).
rss_kib() {
  local pid=$1 total=0 p kib
  for p in $pid $(cat "/proc/$pid/task/"*/children 2>/dev/null); do
    kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${kib:-0}))
  done
  echo $total
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
declare -A RSS_START=() RSS_LOADED=() RSS_IDLE=() IDLE_ALIVE=()
for s in nginx haproxy caddy berth; do
  [ -n "${UP[$s]:-}" ] && RSS_START[$s]=$(rss_kib "${PID[$s]}")
done

http_port() { case $1 in direct) echo $UP_HTTP ;; nginx) echo $NG_HTTP ;; haproxy) echo $HA_HTTP ;; caddy) echo $CA_HTTP ;; berth) echo $BE_HTTP ;; esac; }
https_port() { case $1 in direct) echo $UP_HTTPS ;; nginx) echo $NG_HTTPS ;; haproxy) echo $HA_HTTPS ;; caddy) echo $CA_HTTPS ;; berth) echo $BE_HTTPS ;; esac; }
has_static() { [ "$1" != haproxy ]; }   # HAProxy has no file server

# --- sanity: every server answers correctly before it is loaded -------------------------------------
check() { # server what expected-body-or-size curl-args...
  local s=$1 what=$2 expect=$3; shift 3
  local out rc=0
  out=$(curl -sS -o "$W/out/check.body" -w '%{http_code} %{http_version} %{size_download}' \
    --max-time 5 "$@" 2>&1) || rc=$?
  local code=${out%% *}
  if [ $rc -ne 0 ] || [ "$code" != 200 ] ||
    { [ "$expect" = 1024 ] && [ "${out##* }" != 1024 ]; } ||
    { [ "$expect" != 1024 ] && ! grep -q "$expect" "$W/out/check.body"; }; then
    NOTES+=("$s: $what check failed: curl rc=$rc, got '$out' $(head -c 120 "$W/out/check.body" 2>/dev/null | tr '\n' ' ')")
    log "$s: $what check FAILED ($out)"
  fi
}
for s in $SERVERS; do
  [ -n "${UP[$s]:-}" ] || continue
  hp=$(http_port $s) tp=$(https_port $s)
  check $s "http/1.1" "hello from upstream" "http://127.0.0.1:$hp/"
  check $s "https (SNI bench.test)" "hello from upstream" -k --http1.1 --resolve "bench.test:$tp:127.0.0.1" "https://bench.test:$tp/"
  check $s "https (no SNI)" "hello from upstream" -k --http1.1 "https://127.0.0.1:$tp/"
  check $s "h2" "hello from upstream" -k --http2 --resolve "bench.test:$tp:127.0.0.1" "https://bench.test:$tp/"
  if has_static $s; then check $s "static" 1024 -H 'Host: static.test' "http://127.0.0.1:$hp/1k.txt"; fi
done

if [ "$SETUP_ONLY" = 1 ]; then
  for n in "${NOTES[@]}"; do log "problem: $n"; done
  for s in $SERVERS; do
    if [ -n "${UP[$s]:-}" ]; then log "$s (pid ${PID[$s]}): http://127.0.0.1:$(http_port $s)/  https://127.0.0.1:$(https_port $s)/"; fi
  done
  log "servers are up; configs and logs in $W; Ctrl-C to stop them"
  while :; do sleep 1; done
fi

# --- load ------------------------------------------------------------------------------------------
RES=$W/results.tsv; : >"$RES"   # scenario server rps p50_ms p99_ms errors
to_ms() { awk '{ v = $1
  if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
  else if (v ~ /ms$/) { sub(/ms$/, "", v); v = v + 0 }
  else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
  printf "%.3f\n", v }'; }

# Noise: CPU time used during a measurement by processes other than this script, its clients and
# its servers (kernel threads not counted), and CPU steal. A row that had either gets a
# "noisy" note in the errors column: run again when the machine is quiet.
CLK_TCK=$(getconf CLK_TCK)
OURS="$$"
for s in "${!PID[@]}"; do OURS="$OURS,${PID[$s]}"; done
# The counts include reaped children (cutime, cstime), so summing the second snapshot and
# subtracting the first also covers processes that started or ended during the measurement.
foreign_snap() { # FILE: "pid cputicks" of every process that is not ours
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v ours=",$OURS," '{
    pid = $1; line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
    if (pid == 2 || f[2] == 2 || index(ours, "," pid ",") || index(ours, "," f[2] ",")) next
    print pid, f[12] + f[13] + f[14] + f[15] }' >"$1"
}
steal_ticks() { awk '/^cpu / { print $9 }' /proc/stat; }
noise_begin() { foreign_snap "$W/snap0"; NOISE_T0=$EPOCHREALTIME; NOISE_ST0=$(steal_ticks); }
noise_end() { # prints a note, or nothing
  foreign_snap "$W/snap1"
  awk -v t0="$NOISE_T0" -v t1="$EPOCHREALTIME" -v hz="$CLK_TCK" -v st="$(($(steal_ticks) - NOISE_ST0))" '
    NR == FNR { sum -= $2; next }
    { sum += $2 }
    END { secs = t1 - t0; if (secs <= 0) exit
      o = sum / hz / secs * 100; s = st / hz / secs * 100
      if (o >= 10) printf "noisy: other processes used %d%% of a core; ", o
      if (s >= 5) printf "noisy: %d%% CPU steal; ", s }' "$W/snap0" "$W/snap1"
}

wrk_run() { # scenario server conns url [wrk args...]
  local sc=$1 s=$2 c=$3 url=$4; shift 4
  log "$sc / $s: wrk -c$c $* $url"
  [ "$WARMUP" = 0 ] || wrk -t1 -c"$c" -d"$WARMUP" "$@" "$url" >/dev/null 2>&1 || true
  local out f=$W/out/$sc.$s.txt noise
  noise_begin
  out=$(wrk -t1 -c"$c" -d"$DUR" --latency "$@" "$url" 2>&1) || true
  noise=$(noise_end)
  echo "$out" >"$f"
  local rps p50 p99 err
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
  p50=$(awk '$1 == "50%" {print $2}' "$f" | to_ms)
  p99=$(awk '$1 == "99%" {print $2}' "$f" | to_ms)
  err=$(awk '/Non-2xx/ {printf "non-2xx %s; ", $NF} /Socket errors/ {sub(/^ *Socket errors: */, ""); printf "socket errors: %s; ", $0}' "$f")
  [ -n "$rps" ] || err="wrk failed: $(head -c 200 "$f" | tr '\n' ' ')"
  err="$err$noise"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$s" "${rps:--}" "${p50:--}" "${p99:--}" "${err%; }"
}

secs() { awk -v d="$1" 'BEGIN { m = 1; if (d ~ /ms$/) { sub(/ms$/, "", d); m = 0.001 } else if (d ~ /m$/) { sub(/m$/, "", d); m = 60 } else sub(/s$/, "", d); print d * m }'; }

h2_run() { # server port
  local s=$1 port=$2 sc=h2
  log "$sc / $s: h2load -c$H2_CONN -m$H2_STREAMS https://bench.test:$port/"
  local f=$W/out/$sc.$s.txt lf=$W/out/$sc.$s.log warm=()
  [ "$WARMUP" = 0 ] || warm=(--warm-up-time="$WARMUP")
  local noise
  noise_begin
  h2load -t1 -c"$H2_CONN" -m"$H2_STREAMS" -D "$DUR" "${warm[@]}" --connect-to="127.0.0.1:$port" \
    --log-file="$lf" "https://bench.test:$port/" >"$f" 2>&1 || true
  noise=$(noise_end)
  local rps p50=- p99=- err n warm_us
  rps=$(awk '/^finished in/ {print $4}' "$f")
  err=$(awk '/^requests:/ { if ($10 + $12 + $14 > 0) printf "failed %s, errored %s, timeout %s; ", $10, $12, $14 }
             /^status codes:/ { bad = $5 + $7 + $9; if (bad > 0) printf "non-2xx %s; ", bad }' "$f")
  # Latency percentiles from the per-request log (2xx only, warm-up excluded by start time).
  warm_us=$(awk -v w="$(secs "$WARMUP")" 'BEGIN { printf "%d", w * 1000000 }')
  if [ -s "$lf" ]; then
    awk -F'\t' -v w="$warm_us" 'NR == FNR { if (t0 == "" || $1 < t0) t0 = $1; next }
      $1 >= t0 + w && $2 >= 200 && $2 < 300 { print $3 }' "$lf" "$lf" | sort -n >"$lf.sorted"
    n=$(wc -l <"$lf.sorted")
    if [ "$n" -gt 0 ]; then
      p50=$(sed -n "$(((n * 50 + 99) / 100))p" "$lf.sorted" | awk '{printf "%.3f", $1 / 1000}')
      p99=$(sed -n "$(((n * 99 + 99) / 100))p" "$lf.sorted" | awk '{printf "%.3f", $1 / 1000}')
    fi
    rm -f "$lf.sorted"
  fi
  [ -n "$rps" ] || err="h2load failed: $(tail -c 300 "$f" | tr '\n' ' ')"
  err="$err$noise"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$s" "${rps:--}" "$p50" "$p99" "${err%; }"
}

# measure CMD...: run one measurement (wrk_run or h2_run), again up to NOISE_RETRIES times while
# it is marked noisy, and record the last attempt.
measure() {
  local i line
  for ((i = 0; ; i++)); do
    line=$("$@")
    [[ $line == *noisy* ]] && ((i < NOISE_RETRIES)) || break
    log "  noisy ($(awk -F'\t' '{print $6}' <<<"$line")); measuring again"
  done
  printf '%s\n' "$line" >>"$RES"
}

for s in $SERVERS; do [ -n "${UP[$s]:-}" ] && measure wrk_run ka "$s" "$CONN" "http://127.0.0.1:$(http_port $s)/"; done
for s in $SERVERS; do [ -n "${UP[$s]:-}" ] && measure wrk_run tls_ka "$s" "$CONN" "https://127.0.0.1:$(https_port $s)/"; done
for s in $SERVERS; do [ -n "${UP[$s]:-}" ] && measure wrk_run tls_close "$s" "$CLOSE_CONN" "https://127.0.0.1:$(https_port $s)/" -H 'Connection: close'; done
for s in $SERVERS; do [ -n "${UP[$s]:-}" ] && measure h2_run "$s" "$(https_port $s)"; done
for s in $SERVERS; do
  if [ -n "${UP[$s]:-}" ] && has_static $s; then
    measure wrk_run static "$s" "$CONN" "http://127.0.0.1:$(http_port $s)/1k.txt" -H 'Host: static.test'
  fi
done

# --- memory: idle, and holding IDLE_CONNS idle keep-alive connections -------------------------------
for s in nginx haproxy caddy berth; do
  [ -n "${UP[$s]:-}" ] || continue
  kill -0 "${PID[$s]}" 2>/dev/null || { NOTES+=("$s died during the load runs (see $W)"); unset "UP[$s]"; continue; }
  RSS_LOADED[$s]=$(rss_kib "${PID[$s]}")
  log "memory / $s: $IDLE_CONNS idle keep-alive connections"
  f=$W/out/idle.$s.txt
  python3 "$ROOT/bench/idle_conns.py" 127.0.0.1 "$(http_port $s)" -n "$IDLE_CONNS" --hold 3 >"$f" 2>&1 &
  IDLE_PID=$!
  deadline=$((SECONDS + 120))
  until grep -q '^ready' "$f" 2>/dev/null; do
    kill -0 $IDLE_PID 2>/dev/null || break
    ((SECONDS < deadline)) || break
    sleep 0.1
  done
  if grep -q '^ready' "$f"; then
    sleep 1
    RSS_IDLE[$s]=$(rss_kib "${PID[$s]}")
  else
    NOTES+=("$s: idle_conns.py did not get ready: $(tail -c 200 "$f" | tr '\n' ' ')")
  fi
  wait $IDLE_PID 2>/dev/null || true
  IDLE_PID=
  IDLE_ALIVE[$s]="$(awk '/^ready/ {ok = $2; bad = $3} /^alive/ {a = $2} END { printf "%s/%s opened, %s alive", ok, ok + bad, a }' "$f")"
  kill -0 "${PID[$s]}" 2>/dev/null || NOTES+=("$s died during the idle-connection run (see $W)")
done

# --- report ----------------------------------------------------------------------------------------
ver() { "$@" 2>&1 | head -n 1; }
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$ROOT" status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ] || rev="$rev+dirty"
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)

echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — \`DUR=$DUR CONN=$CONN bash bench/run.sh\`"
echo
echo "Machine: $cpu, $(nproc) cores, $(uname -sr). berth $rev; nginx $(ver nginx -v | sed 's|.*/||'); $(ver haproxy -v | awk '{print "HAProxy", $3}'); Caddy $(caddy version | awk '{print $1}'); $(wrk -v 2>&1 | awk 'NR == 1 {print "wrk", $2}'); $(h2load --version | awk '{print $2}')."
echo "Each server has one worker; upstream is nginx (1 worker) on 127.0.0.1:$UP_HTTP; \"direct\" is the upstream without a proxy. Latencies in ms; ratios are to nginx (req/s: higher is better, p99: lower is better)."
echo
echo "| scenario | server | req/s | req/s ÷ nginx | p50 ms | p99 ms | p99 ÷ nginx | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---|"
awk -F'\t' '
  BEGIN {
    name["ka"] = "keep-alive HTTP/1.1, '"$CONN"' conns"
    name["tls_ka"] = "HTTPS keep-alive, '"$CONN"' conns"
    name["tls_close"] = "HTTPS new conn per request, '"$CLOSE_CONN"' conns"
    name["h2"] = "HTTP/2, '"$H2_CONN"' conns × '"$H2_STREAMS"' streams"
    name["static"] = "static 1 KiB, keep-alive, '"$CONN"' conns"
  }
  { row[NR] = $0; if ($2 == "nginx") { nrps[$1] = $3; np99[$1] = $5 } }
  function ratio(a, b) { return (a == "-" || a == "" || b == "-" || b + 0 == 0) ? "—" : sprintf("%.2f", a / b) }
  END {
    for (i = 1; i <= NR; i++) {
      split(row[i], f, "\t")
      sc = f[1]; label = (sc == last) ? "" : name[sc]; last = sc
      printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", label, f[2],
        (f[3] == "-" ? "—" : sprintf("%.0f", f[3])), ratio(f[3], nrps[sc]),
        (f[4] == "-" ? "—" : f[4]), (f[5] == "-" ? "—" : f[5]), ratio(f[5], np99[sc]), f[6]
    }
  }' "$RES"
echo
echo "Memory (RSS, MiB; nginx = master + worker):"
echo
echo "| server | idle at start | idle after load | with $IDLE_CONNS idle keep-alive conns | connections |"
echo "|---|---:|---:|---:|---|"
for s in nginx haproxy caddy berth; do
  [ -n "${RSS_START[$s]:-}" ] || continue
  printf '| %s | %s | %s | %s | %s |\n' "$s" "$(mib "${RSS_START[$s]}")" \
    "$([ -n "${RSS_LOADED[$s]:-}" ] && mib "${RSS_LOADED[$s]}" || echo —)" \
    "$([ -n "${RSS_IDLE[$s]:-}" ] && mib "${RSS_IDLE[$s]}" || echo —)" "${IDLE_ALIVE[$s]:-—}"
done

# Targets from issue 2, item 10.
get() { awk -F'\t' -v sc="$1" -v s="$2" -v c="$3" '$1 == sc && $2 == s { print $c }' "$RES"; }
target() { # label value op limit
  local met
  met=$(awk -v v="$2" -v l="$4" -v op="$3" 'BEGIN {
    if (v == "" || v == "-" || l == "" || l == "-") { print "?"; exit }
    ok = (op == ">=") ? (v + 0 >= l + 0) : (v + 0 <= l + 0); print ok ? "yes" : "**no**" }')
  printf '| %s | %s | %s %s | %s |\n' "$1" "${2:--}" "$3" "${4:--}" "$met"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
if [ -n "${UP[berth]:-}${RSS_START[berth]:-}" ]; then
  echo
  echo "Targets (berth):"
  echo
  echo "| target | measured | wanted | met |"
  echo "|---|---:|---:|---|"
  target "keep-alive req/s ÷ nginx" "$(ratio "$(get ka berth 3)" "$(get ka nginx 3)")" ">=" 1.25
  target "keep-alive req/s ÷ HAProxy" "$(ratio "$(get ka berth 3)" "$(get ka haproxy 3)")" ">=" 1.10
  target "keep-alive p99 (ms) vs nginx" "$(get ka berth 5)" "<=" "$(get ka nginx 5)"
  target "HTTPS keep-alive req/s ÷ nginx" "$(ratio "$(get tls_ka berth 3)" "$(get tls_ka nginx 3)")" ">=" 1.0
  target "HTTPS new-conn req/s ÷ nginx" "$(ratio "$(get tls_close berth 3)" "$(get tls_close nginx 3)")" ">=" 1.0
  target "HTTP/2 req/s ÷ nginx" "$(ratio "$(get h2 berth 3)" "$(get h2 nginx 3)")" ">=" 1.0
  target "static req/s ÷ nginx" "$(ratio "$(get static berth 3)" "$(get static nginx 3)")" ">=" 1.0
  target "RSS with $IDLE_CONNS idle conns (MiB)" "$([ -n "${RSS_IDLE[berth]:-}" ] && mib "${RSS_IDLE[berth]}")" "<=" 64
fi
# berth's own warnings and errors during the run (its log is on stderr).
if [ -s "$W/berth.log" ]; then
  while read -r count msg; do
    NOTES+=("berth logged $count× \`${msg:0:200}\`")
  done < <(sed 's/\x1b\[[0-9;]*m//g' "$W/berth.log" | awk '$2 == "WARN" || $2 == "ERROR" { $1 = ""; print }' |
    sort | uniq -c | sort -rn | head -n 5)
fi
noisy=$(awk -F'\t' '$6 ~ /noisy/ { n++ } END { print n + 0 }' "$RES")
((noisy == 0)) || NOTES+=("$noisy of the runs were disturbed by other processes or CPU steal (marked \"noisy\"): run again on a quiet machine before recording")
if ((${#NOTES[@]})); then
  echo
  echo "Problems:"
  echo
  for n in "${NOTES[@]}"; do echo "- $n"; done
fi
log "raw outputs in $W/out"

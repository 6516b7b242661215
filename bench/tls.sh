#!/usr/bin/env bash
# TLS figures (issue 6), on this machine:
#
#   (1) full TLS handshakes per second with N (1000) certificates loaded from files, against the
#       rate with one: the SNI lookup must stay flat (target: >= 0.95x). Two berths (one with
#       h0.bench.test's certificate, one with h0..h<N-1>'s), workers = 1, pinned to CPU 0; the
#       load generator (tlsload, a small rustls client built here, see below) runs CONC threads
#       pinned to CPU 1. Each connection is new: TCP connect, full handshake (resumption off),
#       GET /ok.txt with Connection: close, read to EOF. SNI names go round all N hosts in the
#       N-certificate case (h0 in the one-certificate case), and every handshake checks that
#       the certificate names its SNI host. Each round measures both
#       cases back to back (order 1-N, then N-1, ...); the ratio is the median of the rounds'
#       ratios, so a slow drift of the machine cancels out. berth's CPU time per handshake too.
#   (2) certificate issuance against Pebble (Let's Encrypt's test CA, Debian's `pebble`), set up
#       as crates/test-support/src/pebble.rs does: K hosts (a1..aK.issue.test, static routes),
#       per challenge type; berth's own time per certificate (its "certificate issued" log line:
#       order to certificate served), and from berth's start until all K are `valid` in
#       GET /api/v1/certs; also the most orders seen under way at once (polled `issuing` states).
#
# Usage: bash bench/tls.sh [> report.md]   (report on stdout, progress on stderr)
# Variables: BERTH_BIN (use this binary instead of building), BERTH_REV (the commit to report),
# N (1000 certificates), DUR (10 s per measured run), WARMUP (2 s), ROUNDS (5), CONC (8
# client threads), BERTH_CPU (0) and LOAD_CPU (1) (CPUs to pin to; empty: no pinning),
# NOISE_RETRIES (3: a run during which other processes used >= 10% of a core is measured again
# after 5 s), K (10 hosts to issue for), CHALLENGES ("http-01 tls-alpn-01"),
# PARTS ("handshakes issuance"), PROFILE (0; 1: after the rounds, perf-record berth under load
# in each case and keep the top symbols in the work dir), KEEP (0; 1 keeps the work directory).
# Needs openssl, curl, python3, cargo (tlsload is built once, offline from the crates berth
# uses, in target/bench-tlsload), taskset, and for (2) pebble and pebble-challtestsrv
# (apt-get install pebble).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${N:-1000}
DUR=${DUR:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-5}
CONC=${CONC:-8}
BERTH_CPU=${BERTH_CPU-0}
LOAD_CPU=${LOAD_CPU-1}
NOISE_RETRIES=${NOISE_RETRIES:-3}
K=${K:-10}
CHALLENGES=${CHALLENGES:-http-01 tls-alpn-01}
PARTS=${PARTS:-handshakes issuance}
PROFILE=${PROFILE:-0}
KEEP=${KEEP:-0}
log() { echo "[tls-bench] $*" >&2; }
die() { log "error: $*"; exit 1; }
part() { [[ " $PARTS " == *" $1 "* ]]; }
for t in openssl curl python3; do command -v $t >/dev/null || die "$t is missing"; done
if part handshakes; then
  command -v cargo >/dev/null || die "cargo is missing"
  if [ "$(nproc)" -lt 2 ]; then BERTH_CPU= LOAD_CPU=; fi
  { [ -z "$BERTH_CPU$LOAD_CPU" ] || command -v taskset >/dev/null; } || die "taskset is missing"
  [ "$PROFILE" = 0 ] || command -v perf >/dev/null || die "perf is missing (apt-get install linux-perf)"
fi
if part issuance; then
  for t in pebble pebble-challtestsrv; do command -v $t >/dev/null || die "$t is missing (apt-get install pebble)"; done
fi

if [ -n "${BERTH_BIN:-}" ]; then
  BERTH=$BERTH_BIN
else
  log "cargo build --release -p berth"
  (cd "$ROOT" && cargo build --release -p berth >&2) || die "berth does not build"
  BERTH=${CARGO_TARGET_DIR:-$ROOT/target}/release/berth
fi
REV=${BERTH_REV:-$(cd "$ROOT" && git rev-parse --short HEAD)}

T=$(mktemp -d /tmp/berth-tls.XXXXXX)
PIDS=()        # everything started in the background, stopped on exit
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then log "work directory kept: $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
stop() { # PID...: stop these now (SIGTERM, then SIGKILL after 10 s), and forget them
  local p q keep
  for p in "$@"; do
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    keep=()
    for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    PIDS=("${keep[@]}")
  done
}
pin() { # CPU: a taskset prefix, or nothing
  if [ -n "$1" ]; then echo "taskset -c $1"; fi
}
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# start_berth DIR [CPU]: berth on DIR/berth.toml (data in DIR/data), log in DIR/berth.log. Sets
# B_PID and B_START (seconds from spawn to listen.json).
start_berth() {
  local dir=$1 cpu=${2:-} t0
  t0=$EPOCHREALTIME
  # shellcheck disable=SC2046
  $(pin "$cpu") "$BERTH" serve --config "$dir/berth.toml" >"$dir/berth.log" 2>&1 &
  B_PID=$!
  PIDS+=("$B_PID")
  for _ in $(seq 600); do [ -s "$dir/data/listen.json" ] && break; sleep 0.05; done
  [ -s "$dir/data/listen.json" ] || die "berth did not start: $(tail -c 800 "$dir/berth.log")"
  B_START=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
}
berth_conf() { # DIR: the [server] table, ephemeral ports unless HTTP/HTTPS are set
  printf '[server]\nhttp = "127.0.0.1:%s"\nhttps = "127.0.0.1:%s"\nadmin = "127.0.0.1:0"\nworkers = 1\naccess_log = "off"\ndata_dir = "%s/data"\n\n' \
    "${HTTP_PORT:-0}" "${HTTPS_PORT:-0}" "$1"
}

# --- noise: CPU used meanwhile by processes other than ours, and steal (as bench/run.sh) ----------
CLK_TCK=$(getconf CLK_TCK)
foreign_snap() { # FILE: "pid cputicks" of every process that is not ours (kernel threads skipped)
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v ours=",$OURS," '{
    pid = $1; comm = $2; line = $0; sub(/^.*\) /, "", line); split(line, f, " ")
    if (pid == 2 || f[2] == 2 || comm == "(tlsload)" || index(ours, "," pid ",") || index(ours, "," f[2] ",")) next
    print pid, f[12] + f[13] + f[14] + f[15] }' >"$1"
}
steal_ticks() { awk '/^cpu / { print $9 }' /proc/stat; }
noise_begin() { foreign_snap "$T/snap0"; NOISE_T0=$EPOCHREALTIME; NOISE_ST0=$(steal_ticks); }
noise_end() { # prints a note, or nothing
  foreign_snap "$T/snap1"
  awk -v t0="$NOISE_T0" -v t1="$EPOCHREALTIME" -v hz="$CLK_TCK" -v st="$(($(steal_ticks) - NOISE_ST0))" '
    NR == FNR { sum -= $2; next }
    { sum += $2 }
    END { secs = t1 - t0; if (secs <= 0) exit
      o = sum / hz / secs * 100; s = st / hz / secs * 100
      if (o >= 10) printf "other processes used %d%% of a core; ", o
      if (s >= 5) printf "%d%% CPU steal; ", s }' "$T/snap0" "$T/snap1"
}
cpu_ticks() { awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }

# --- (1) handshakes per second, 1 vs N certificates -------------------------------------------------
HS_DONE=0
if part handshakes; then
  # The load generator: a small rustls client (aws-lc-rs, like berth), built once in its own
  # target dir with the workspace's Cargo.lock. An OpenSSL 3.0 client (s_time, h2load, wrk) spends
  # about 5x berth's CPU per handshake, so on the other core it, not berth, would be measured.
  TL=${CARGO_TARGET_DIR:-$ROOT/target}/bench-tlsload
  mkdir -p "$TL/src"
  put() { if ! cmp -s "$T/put" "$1"; then mv "$T/put" "$1"; fi; }   # keeps mtimes: no rebuild
  cat >"$T/put" <<'TOML'
[package]
name = "tlsload"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
rustls = { version = "0.23", default-features = false, features = ["aws_lc_rs", "std", "tls12"] }

[profile.release]
opt-level = 3

[workspace]
TOML
  put "$TL/Cargo.toml"
  cp "$ROOT/Cargo.lock" "$T/put" && put "$TL/Cargo.lock"
  cat >"$T/put" <<'RUST'
//! tlsload IP PORT NHOSTS THREADS SECONDS [MAX]: THREADS threads, each in a loop until SECONDS
//! are up (or MAX connections each): connect, full TLS handshake with SNI h<i>.bench.test (i going
//! round 0..NHOSTS-1), GET /ok.txt with Connection: close, read to EOF, close. Resumption is off,
//! so every handshake is a full one. Prints one line of totals; the first connection's protocol,
//! cipher suite and key exchange group go to stderr.
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, SignatureScheme, StreamOwned};

/// Takes the server's certificate without checking its chain or signature (a load generator: the
/// server's work is the same), but counts certificates without the SNI name as a DNS SAN.
#[derive(Debug)]
struct NameOnly {
    wrong: AtomicU64,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for NameOnly {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let host = match name {
            ServerName::DnsName(d) => d.as_ref().as_bytes().to_vec(),
            _ => Vec::new(),
        };
        // A dNSName in the SAN extension: [0x82, length, name].
        let mut needle = vec![0x82, host.len() as u8];
        needle.extend_from_slice(&host);
        if !leaf.windows(needle.len()).any(|w| w == needle) {
            self.wrong.fetch_add(1, Relaxed);
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

#[derive(Default)]
struct Counts {
    ok: u64,
    failed: u64,
    wrong_cert: u64,
    resumed: u64,
}

fn one(config: &Arc<ClientConfig>, v: &NameOnly, addr: SocketAddr, host: &str, describe: bool, c: &mut Counts) {
    let wrong0 = v.wrong.load(Relaxed);
    let good = (|| -> Option<bool> {
        let sock = TcpStream::connect(addr).ok()?;
        sock.set_nodelay(true).ok()?;
        let conn = ClientConnection::new(config.clone(), ServerName::try_from(host.to_string()).ok()?).ok()?;
        let mut tls = StreamOwned::new(conn, sock);
        let req = format!("GET /ok.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).ok()?; // completes the handshake first
        if describe {
            eprintln!(
                "{:?} {:?} {:?}",
                tls.conn.protocol_version()?,
                tls.conn.negotiated_cipher_suite()?.suite(),
                tls.conn.negotiated_key_exchange_group()?.name()
            );
        }
        if tls.conn.handshake_kind() == Some(HandshakeKind::Resumed) {
            c.resumed += 1;
        }
        let (mut resp, mut buf) = (Vec::new(), [0u8; 4096]);
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                Err(_) => return None,
            }
        }
        Some(resp.starts_with(b"HTTP/1.1 200"))
    })();
    let wrong = v.wrong.load(Relaxed) != wrong0;
    if wrong {
        c.wrong_cert += 1;
    }
    if good == Some(true) && !wrong {
        c.ok += 1;
    } else {
        c.failed += 1;
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // utime, stime (USER_HZ = 100)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 && a.len() != 7 {
        eprintln!("usage: tlsload IP PORT NHOSTS THREADS SECONDS [MAX]");
        std::process::exit(2);
    }
    let addr: SocketAddr = format!("{}:{}", a[1], a[2]).parse().expect("IP and port");
    let nhosts: u64 = a[3].parse().expect("NHOSTS");
    let threads: u64 = a[4].parse().expect("THREADS");
    let secs: f64 = a[5].parse().expect("SECONDS");
    let max: u64 = a.get(6).map_or(0, |m| m.parse().expect("MAX"));
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let v = Arc::new(NameOnly {
                    wrong: AtomicU64::new(0),
                    schemes: provider.signature_verification_algorithms.supported_schemes(),
                });
                let mut config = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("protocol versions")
                    .dangerous()
                    .with_custom_certificate_verifier(v.clone())
                    .with_no_client_auth();
                config.resumption = Resumption::disabled();
                let config = Arc::new(config);
                let (mut c, mut i, mut done) = (Counts::default(), t, 0);
                loop {
                    one(&config, &v, addr, &format!("h{}.bench.test", i % nhosts), t == 0 && done == 0, &mut c);
                    i += threads;
                    done += 1;
                    if if max > 0 { done >= max } else { Instant::now() >= end } {
                        return c;
                    }
                }
            })
        })
        .collect();
    let mut sum = Counts::default();
    for h in handles {
        let c = h.join().expect("a client thread panicked");
        sum.ok += c.ok;
        sum.failed += c.failed;
        sum.wrong_cert += c.wrong_cert;
        sum.resumed += c.resumed;
    }
    println!(
        "ok {} failed {} wrong_cert {} resumed {} seconds {:.3} client_cpu {:.3}",
        sum.ok,
        sum.failed,
        sum.wrong_cert,
        sum.resumed,
        t0.elapsed().as_secs_f64(),
        cpu_seconds()
    );
}
RUST
  put "$TL/src/main.rs"
  log "building the load generator (rustls) in $TL"
  (cd "$TL" && { CARGO_TARGET_DIR=$TL/target cargo build --release --offline -q 2>/dev/null ||
    CARGO_TARGET_DIR=$TL/target cargo build --release >&2; }) || die "tlsload does not build"
  TLSLOAD=$TL/target/release/tlsload

  log "(1) $N self-signed EC P-256 certificates"
  mkdir -p "$T/certs" "$T/www"
  echo ok >"$T/www/ok.txt"
  t0=$EPOCHREALTIME
  seq 0 $((N - 1)) | xargs -P "$(nproc)" -I{} openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -nodes -days 30 -subj "/CN=h{}.bench.test" -addext "subjectAltName=DNS:h{}.bench.test" \
    -keyout "$T/certs/h{}.key" -out "$T/certs/h{}.pem" 2>/dev/null || die "openssl could not make the certificates"
  log "    made in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"

  hs_config() { # DIR COUNT
    mkdir -p "$1"
    {
      berth_conf "$1"
      printf '[tls]\nlocal_ca = false\ncerts = [\n'
      for i in $(seq 0 $(($2 - 1))); do printf '  { cert = "%s/certs/h%d.pem", key = "%s/certs/h%d.key" },\n' "$T" "$i" "$T" "$i"; done
      printf ']\n\n[[route]]\nhost = "*.bench.test"\nstatic = "%s/www"\n' "$T"
    } >"$1/berth.toml"
  }
  declare -A HPID HPORT HSTART HRSS HOSTS
  HOSTS[one]=1 HOSTS[many]=$N
  for c in one many; do
    hs_config "$T/$c" "${HOSTS[$c]}"
    start_berth "$T/$c" "$BERTH_CPU"
    HPID[$c]=$B_PID HSTART[$c]=$B_START
    HPORT[$c]=$(json_field "$T/$c/data/listen.json" https)
    HPORT[$c]=${HPORT[$c]##*:}
    HRSS[$c]=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$B_PID/status")
    log "    berth with ${HOSTS[$c]} certificate(s): pid $B_PID, https port ${HPORT[$c]}, up in ${B_START} s, RSS ${HRSS[$c]} MiB"
  done
  OURS="$$,${HPID[one]},${HPID[many]}"

  # Check: every host of the N case answers with its own certificate (one pass over all hosts).
  read -r _ ok _ failed _ wrong _ resumed _ _ _ _ < <("$TLSLOAD" 127.0.0.1 "${HPORT[many]}" "$N" 1 0 "$N" 2>"$T/describe.txt")
  [ "$ok" = "$N" ] && [ "$failed" = 0 ] ||
    die "check over the $N hosts: ok $ok, failed $failed, wrong certificate $wrong, resumed $resumed"
  read -r _ ok _ failed _ _ _ _ < <("$TLSLOAD" 127.0.0.1 "${HPORT[one]}" 1 1 0 1 2>/dev/null)
  [ "$ok" = 1 ] || die "the one-certificate berth does not answer for h0.bench.test"
  PROTO=$(head -1 "$T/describe.txt")
  log "    all $N hosts answer with their own certificate ($PROTO)"

  : >"$T/hs.tsv"   # case round rate berth_us_per_hs berth_cpu_pct client_cpu_pct errors noise
  measure() { # CASE ROUND
    local c=$1 r=$2 try pid=${HPID[$1]} port=${HPORT[$1]} n=${HOSTS[$1]} out b0 b1 noise line
    # shellcheck disable=SC2046
    [ "$WARMUP" = 0 ] || $(pin "$LOAD_CPU") "$TLSLOAD" 127.0.0.1 "$port" "$n" "$CONC" "$WARMUP" >/dev/null 2>&1 || true
    for try in $(seq 0 "$NOISE_RETRIES"); do
      noise_begin
      b0=$(cpu_ticks "$pid")
      # shellcheck disable=SC2046
      out=$($(pin "$LOAD_CPU") "$TLSLOAD" 127.0.0.1 "$port" "$n" "$CONC" "$DUR" 2>/dev/null) || true
      b1=$(cpu_ticks "$pid")
      noise=$(noise_end)
      echo "$c round $r try $try: $out ${noise:+(noisy: $noise)}" >>"$T/hs-raw.txt"
      line=$(awk -v c="$c" -v r="$r" -v bt="$((b1 - b0))" -v hz="$CLK_TCK" -v noise="$noise" '{
        ok = $2; secs = $10; err = ""
        if ($4 > 0) err = err "failed " $4 "; "
        if ($6 > 0) err = err "wrong certificate " $6 "; "
        if ($8 > 0) err = err "resumed " $8 "; "
        printf "%s\t%d\t%.0f\t%.1f\t%.0f\t%.0f\t%s\t%s\n", c, r, ok / secs, bt / hz * 1e6 / (ok > 0 ? ok : 1),
          bt / hz / secs * 100, $12 / secs * 100, err, noise }' <<<"$out")
      [ -n "$line" ] || line=$(printf '%s\t%d\t0\t0\t0\t0\ttlsload failed\t%s' "$c" "$r" "$noise")
      [ -n "$noise" ] && [ "$try" -lt "$NOISE_RETRIES" ] && { log "    $c, round $r: noisy (${noise%; }), again in 5 s"; sleep 5; continue; }
      echo "$line" >>"$T/hs.tsv"
      log "    $(cut -f1-6 <<<"$line" | awk -F'\t' '{ printf "%s, round %s: %s handshakes/s, berth %s us CPU each (%s%% of a core), client %s%%", $1, $2, $3, $4, $5, $6 }') ${noise:+(noisy: $noise)}"
      return
    done
  }
  log "(1) $ROUNDS rounds of $DUR s (warm-up $WARMUP s), $CONC client threads${LOAD_CPU:+ on CPU $LOAD_CPU}, berth${BERTH_CPU:+ on CPU $BERTH_CPU}"
  for r in $(seq "$ROUNDS"); do
    if ((r % 2)); then order="one many"; else order="many one"; fi
    for c in $order; do measure "$c" "$r"; done
  done

  if [ "$PROFILE" = 1 ]; then
    for c in one many; do
      log "    perf record of berth ($c) under load"
      # shellcheck disable=SC2046
      $(pin "$LOAD_CPU") "$TLSLOAD" 127.0.0.1 "${HPORT[$c]}" "${HOSTS[$c]}" "$CONC" $((DUR + 2)) >/dev/null 2>&1 &
      lp=$!
      PIDS+=("$lp")
      sleep 1
      perf record -q -e cpu-clock -F 999 -p "${HPID[$c]}" -o "$T/perf.$c.data" -- sleep "$DUR" >/dev/null 2>&1 || log "perf record failed"
      stop "$lp"
      perf report -i "$T/perf.$c.data" --no-children --sort dso,symbol --percent-limit 0.7 --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' | grep '%' | head -40 >"$T/perf.$c.txt" || true
      head -15 "$T/perf.$c.txt" >&2
    done
    KEEP=1
  fi
  stop "${HPID[one]}" "${HPID[many]}"
  HS_DONE=1
fi

# --- (2) issuance against Pebble ---------------------------------------------------------------------
: >"$T/issue.tsv"   # challenge median max first start_to_first start_to_all failures done
if part issuance; then
  for ch in $CHALLENGES; do
    D=$T/issue-$ch
    mkdir -p "$D/pebble" "$D/www"
    echo "issued" >"$D/www/index.html"
    # Ports: berth's two must be known before Pebble starts (its VA connects there).
    read -r HTTP_PORT HTTPS_PORT ACME_PORT MGMT_PORT CTS_PORT DNS_PORT < <(python3 - <<'PY'
import socket
held, ports = [], []
for _ in range(5):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); held.append(s); ports.append(s.getsockname()[1])
for _ in range(50):  # DNS: free for TCP and UDP
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p)); u.close(); held.append(t); ports.append(p); break
    except OSError:
        t.close()
print(*ports)
PY
)
    # Pebble's own listener certificate, from a throwaway CA (Debian's package ships none).
    P=$D/pebble
    cat >"$P/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = berth bench: Pebble listener CA
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
    {
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/ca-key.pem" &&
        openssl req -new -x509 -config "$P/openssl.cnf" -extensions ca_ext -key "$P/ca-key.pem" -days 30 -out "$P/ca.pem" &&
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$P/key.pem" &&
        openssl req -new -config "$P/openssl.cnf" -subj /CN=localhost -key "$P/key.pem" -out "$P/leaf.csr" &&
        openssl x509 -req -in "$P/leaf.csr" -CA "$P/ca.pem" -CAkey "$P/ca-key.pem" -set_serial 2 -days 30 \
          -extfile "$P/openssl.cnf" -extensions leaf_ext -out "$P/cert.pem"
    } >"$P/openssl.log" 2>&1 || die "openssl could not make Pebble's certificate: $(cat "$P/openssl.log")"
    cat >"$P/config.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$ACME_PORT", "managementListenAddress": "127.0.0.1:$MGMT_PORT",
  "certificate": "$P/cert.pem", "privateKey": "$P/key.pem", "httpPort": $HTTP_PORT, "tlsPort": $HTTPS_PORT,
  "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
    # challtestsrv answers every A query with 127.0.0.1 (no AAAA); its responders are off.
    pebble-challtestsrv -dns01 "127.0.0.1:$DNS_PORT" -http01 "" -https01 "" -tlsalpn01 "" \
      -management "127.0.0.1:$CTS_PORT" -defaultIPv4 127.0.0.1 -defaultIPv6 "" >"$P/challtestsrv.log" 2>&1 &
    CTS_PID=$!
    PIDS+=("$CTS_PID")
    PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
      pebble -config "$P/config.json" -dnsserver "127.0.0.1:$DNS_PORT" >"$P/pebble.log" 2>&1 &
    PEBBLE_PID=$!
    PIDS+=("$PEBBLE_PID")
    for _ in $(seq 400); do
      curl -sf --max-time 2 --cacert "$P/ca.pem" "https://127.0.0.1:$ACME_PORT/dir" >/dev/null 2>&1 && break
      kill -0 "$PEBBLE_PID" 2>/dev/null || break
      sleep 0.05
    done
    curl -sf --max-time 2 --cacert "$P/ca.pem" "https://127.0.0.1:$ACME_PORT/dir" >/dev/null ||
      die "Pebble did not start: $(tail -c 800 "$P/pebble.log") $(tail -c 400 "$P/challtestsrv.log")"
    grep -q "address already in use" "$P/challtestsrv.log" && die "challtestsrv: $(tail -c 400 "$P/challtestsrv.log")"

    {
      berth_conf "$D"
      printf '[tls.acme]\ndirectory = "https://127.0.0.1:%s/dir"\nca = "%s/ca.pem"\nemail = "ops@example.com"\nchallenge = "%s"\n' \
        "$ACME_PORT" "$P" "$ch"
      for i in $(seq "$K"); do printf '\n[[route]]\nhost = "a%d.issue.test"\nstatic = "%s/www"\n' "$i" "$D"; done
    } >"$D/berth.toml"
    log "(2) $ch: $K certificates from Pebble (berth on :$HTTP_PORT/:$HTTPS_PORT, Pebble on :$ACME_PORT)"
    T0=$EPOCHREALTIME
    start_berth "$D"
    IPID=$B_PID
    # Poll GET /api/v1/certs every 10 ms: when each host is first seen issuing and valid.
    python3 - "$D/data" "$T0" "$K" $((30 + 15 * K)) >"$D/poll.txt" <<'PY' || true
import json, sys, time, urllib.request
data, t0, k, limit = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
admin = json.load(open(f"{data}/listen.json"))["admin"]
while True:
    try:
        token = open(f"{data}/admin-token").read().strip()
        break
    except OSError:
        time.sleep(0.01)
req = urllib.request.Request(f"http://{admin}/api/v1/certs", headers={"Authorization": f"Bearer {token}"})
hosts = {f"a{i}.issue.test" for i in range(1, k + 1)}
seen = {}  # (host, status) -> seconds since berth's start
while time.time() - t0 < limit:
    now = time.time() - t0
    for c in json.load(urllib.request.urlopen(req, timeout=5)):
        st = (c.get("acme") or {}).get("status")
        if c["host"] in hosts and st:
            seen.setdefault((c["host"], st), now)
    if all((h, "valid") in seen for h in hosts):
        break
    time.sleep(0.01)
for h in sorted(hosts, key=lambda h: int(h[1:].split(".")[0])):
    print(h, *(f"{seen[(h, s)]:.3f}" if (h, s) in seen else "-" for s in ("issuing", "valid")))
PY
    stop "$IPID" "$PEBBLE_PID" "$CTS_PID"
    # berth's own time per certificate: its "certificate issued" lines (issuing → served).
    sed 's/\x1b\[[0-9;]*m//g' "$D/berth.log" | grep 'certificate issued' |
      sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' >"$D/secs.txt" || true
    FAILS=$(sed 's/\x1b\[[0-9;]*m//g' "$D/berth.log" | grep -c 'certificate not issued' || true)
    python3 - "$D/secs.txt" "$D/poll.txt" "$ch" "$K" "$FAILS" >>"$T/issue.tsv" <<'PY'
import statistics, sys
secs = [float(l) for l in open(sys.argv[1]) if l.strip()]
poll = [l.split() for l in open(sys.argv[2])]
valid = [float(p[2]) for p in poll if p[2] != "-"]
# Orders under way at once: the most hosts seen between `issuing` and `valid` at one poll.
spans = [(float(p[1]), float(p[2])) for p in poll if p[1] != "-" and p[2] != "-"]
overlap = max((sum(a <= t < b for a, b in spans) for t, _ in spans), default=0)
ch, k, fails = sys.argv[3], int(sys.argv[4]), sys.argv[5]
f = lambda v: f"{v:.3f}"
print("\t".join([ch,
    f(statistics.median(secs)) if secs else "-", f(max(secs)) if secs else "-", f(secs[0]) if secs else "-",
    f(min(valid)) if valid else "-", f(max(valid)) if len(valid) == k else "-", fails, f"{len(valid)}/{k}",
    str(overlap) if spans else "-"]))
PY
    log "    $(tail -1 "$T/issue.tsv" | awk -F'\t' '{ printf "median %s s, max %s s, first %s s, start → all valid %s s, %s valid, %s failed attempts", $2, $3, $4, $6, $8, $7 }')"
  done
fi

# --- report ---------------------------------------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "### TLS (issue 6), $(date -u '+%Y-%m-%d %H:%M') UTC on $REV"
echo
echo "Command: \`bash bench/tls.sh\` (N=$N, DUR=$DUR, ROUNDS=$ROUNDS, CONC=$CONC, K=$K); $(nproc) cores ($cpu); $(openssl version | cut -d' ' -f1-2)."
if [ "$HS_DONE" = 1 ]; then
  python3 - "$T/hs.tsv" "$N" "$ROUNDS" "$DUR" "$CONC" "$PROTO" "${BERTH_CPU:-any}" "${LOAD_CPU:-any}" \
    "${HSTART[one]}" "${HSTART[many]}" "${HRSS[one]}" "${HRSS[many]}" <<'PY'
import statistics, sys
allrows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
n, rounds, dur, conc, proto, bcpu, lcpu, s1, sn, r1, rn = sys.argv[2:]
# The figures come from the rounds in which neither case was noisy (all rounds if none was clean).
noisy = {r[1] for r in allrows if r[7]}
rows = [r for r in allrows if r[1] not in noisy] or allrows
used = len({r[1] for r in rows})
by = {c: [r for r in rows if r[0] == c] for c in ("one", "many")}
med = lambda c, i: statistics.median(float(r[i]) for r in by[c]) if by[c] else float("nan")
rate1, raten = med("one", 2), med("many", 2)
us1, usn = med("one", 3), med("many", 3)
# Per round: the N-certificate figure over the one-certificate figure, measured back to back.
rnd = {(r[0], r[1]): r for r in rows}
pairs = [(rnd[("one", k)], rnd[("many", k)]) for (c, k) in rnd if c == "one" and ("many", k) in rnd]
rates = [float(m[2]) / float(o[2]) for o, m in pairs if float(o[2]) > 0]
caps = [float(o[3]) / float(m[3]) for o, m in pairs if float(m[3]) > 0]
ratio = statistics.median(rates) if rates else float("nan")
cap = statistics.median(caps) if caps else float("nan")
print()
print(f"**(1) Full TLS handshakes per second** ({proto}; berth `workers = 1` on CPU {bcpu}, "
      f"tlsload (rustls) with {conc} threads on CPU {lcpu}; each connection: connect, full handshake, "
      f"GET of a 3-byte static file with `Connection: close`, read to EOF; medians of {used} "
      f"rounds of {dur} s" + (f" (of {rounds}; the noisy ones left out)" if used < int(rounds) else "")
      + "; each round measures both cases back to back, and the ratio is the median of the "
      "rounds' ratios)")
print()
print(f"| figure | 1 certificate | {n} certificates | ratio | target | met? |")
print("|---|---|---|---|---|---|")
print(f"| handshakes/s | {rate1:,.0f} | {raten:,.0f} | **{ratio:.3f}** | ≥ 0.95 | {'yes' if ratio >= 0.95 else '**no**'} |")
print(f"| berth CPU per handshake | {us1:.0f} µs | {usn:.0f} µs | {1 / cap:.3f} | — | — |")
print(f"| berth's capacity: handshakes per CPU-second (10⁶ / µs) | {1e6 / us1:,.0f} | {1e6 / usn:,.0f} | **{cap:.3f}** | ≥ 0.95 | {'yes' if cap >= 0.95 else '**no**'} |")
print(f"| berth CPU use (of one core) | {med('one', 4):.0f}% | {med('many', 4):.0f}% | — | — | — |")
print(f"| tlsload CPU use | {med('one', 5):.0f}% | {med('many', 5):.0f}% | — | — | — |")
print("| rounds used, handshakes/s | " + ", ".join(f"{float(r[2]):,.0f}" for r in by["one"]) + " | "
      + ", ".join(f"{float(r[2]):,.0f}" for r in by["many"]) + " | " + ", ".join(f"{x:.3f}" for x in rates)
      + " | — | — |")
print(f"| berth start to listening / RSS at start | {s1} s / {r1} MiB | {sn} s / {rn} MiB | — | — | — |")
probs = [f"{r[0]} round {r[1]} ({float(r[2]):,.0f}/s): " + "; ".join(x.strip("; ") for x in r[6:8] if x)
         for r in allrows if r[6] or r[7]]
if probs:
    print()
    note = ""
    if noisy and used < int(rounds):
        note = " Rounds with a noisy run (other processes or CPU steal) are left out of the figures."
    elif noisy:
        note = " No round was clean, so the figures use them all: don't record them."
    print("Problems: " + "; ".join(probs) + "." + note)
PY
fi
if [ -s "$T/issue.tsv" ]; then
  echo
  echo "**(2) Certificate issuance against Pebble** ($K hosts \`a1..a$K.issue.test\`, static routes; Pebble $(dpkg-query -W -f '${Version}' pebble 2>/dev/null || echo '?') with PEBBLE_VA_NOSLEEP=1, no authorization reuse)"
  echo
  printf '| figure |'; cut -f1 "$T/issue.tsv" | while read -r c; do printf ' %s |' "$c"; done; echo
  printf '|---|'; cut -f1 "$T/issue.tsv" | while read -r _; do printf -- '---|'; done; echo
  row() { printf '| %s |' "$1"; cut -f"$2" "$T/issue.tsv" | while read -r v; do printf ' %s%s |' "$v" "$3"; done; echo; }
  row "per certificate, median (berth's log: order → certificate served)" 2 " s"
  row "per certificate, max" 3 " s"
  row "first certificate issued (berth's log; the first orders also wait for the ACME account)" 4 " s"
  row "berth start → first certificate valid (GET /api/v1/certs)" 5 " s"
  row "berth start → all $K valid" 6 " s"
  row "certificates valid" 8 ""
  row "most orders seen under way at once (polled \`issuing\` states)" 9 ""
  printf '| failed attempts |'; cut -f7 "$T/issue.tsv" | while read -r v; do printf ' %s |' "$v"; done; echo
fi

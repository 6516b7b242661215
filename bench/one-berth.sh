# Sourced by bench/git.sh and bench/docker.sh: the release binary (BERTH_BIN, else built), a
# work dir $T (kept with KEEP=1), and one berth on ephemeral loopback ports in it, stopped with
# SIGTERM on exit. Needs ROOT, KEEP, log, die and NAME (for the work dir) set; BERTH_PATH is the
# PATH berth runs its apps with (default: $PATH). Sets BERTH, REV, T, BERTH_PID, HTTP, ADMIN,
# TOKEN and the function `cli`.

if [ -n "${BERTH_BIN:-}" ]; then
  BERTH=$BERTH_BIN
else
  log "cargo build --release -p berth"
  (cd "$ROOT" && cargo build --release -p berth >&2) || die "berth does not build"
  BERTH=${CARGO_TARGET_DIR:-$ROOT/target}/release/berth
fi
REV=$(cd "$ROOT" && git rev-parse --short HEAD)

T=$(mktemp -d "/tmp/berth-$NAME.XXXXXX")
BERTH_PID=
cleanup() {
  if [ -n "$BERTH_PID" ]; then
    kill -TERM "$BERTH_PID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$BERTH_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ "$KEEP" = 1 ]; then log "work directory kept: $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

printf '[server]\nhttp = "127.0.0.1:0"\nhttps = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nworkers = 1\naccess_log = "off"\ndata_dir = "%s/data"\n' "$T" >"$T/berth.toml"
PATH=${BERTH_PATH:-$PATH} "$BERTH" serve --config "$T/berth.toml" >"$T/berth.log" 2>&1 &
BERTH_PID=$!
for _ in $(seq 150); do [ -s "$T/data/listen.json" ] && break; sleep 0.1; done
[ -s "$T/data/listen.json" ] || die "berth did not start: $(tail -c 500 "$T/berth.log")"
listen_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$T/data/listen.json" "$1"; }
HTTP=$(listen_field http) ADMIN=$(listen_field admin)
TOKEN=$(cat "$T/data/admin-token")
cli() { "$BERTH" --data-dir "$T/data" "$@"; }

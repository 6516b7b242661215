#!/usr/bin/env bash
# CI/CD figures (issue 4), measured on this machine with the example app (examples/hello) and the
# real git client pushing to berth's /git/<app>.git endpoint (git http-backend behind berth):
#
#   (a) git push → serving: from the start of `git push` of a new commit to the app's URL answering
#       with the release that commit made (PUSHES consecutive pushes; median and p90). The push
#       itself waits for the deploy (pre-receive hook), so most of the time is inside `git push`.
#   (b) burst: BURST_APPS apps × BURST_PUSHES pushes each, the apps pushed in parallel (each app's
#       pushes one after another, as a developer's would be); total time, deploys per second, and
#       whether every app serves its newest commit at the end.
#
# Usage: bash bench/git.sh [> report.md]   (report on stdout, progress on stderr)
# Variables: BERTH_BIN (use this binary instead of building), PUSHES (11), BURST_APPS (10),
# BURST_PUSHES (5), APP_PY_DIR (as in bench/deploy.sh), KEEP (0; 1 keeps the work directory).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PUSHES=${PUSHES:-11}
BURST_APPS=${BURST_APPS:-10}
BURST_PUSHES=${BURST_PUSHES:-5}
KEEP=${KEEP:-0}
HELLO=$ROOT/examples/hello

log() { echo "[git-bench] $*" >&2; }
die() { log "error: $*"; exit 1; }
for t in git curl python3; do command -v $t >/dev/null || die "$t is missing"; done

APP_PY_DIR=${APP_PY_DIR:-$(dirname "$(python3 -c 'import sys; print(sys.executable)')")}
BERTH_PATH="$APP_PY_DIR:$PATH"
NAME=gitbench
# shellcheck source=one-berth.sh
. "$ROOT/bench/one-berth.sh"

# new_repo APP: a work tree of examples/hello with one commit, its remote at berth.
new_repo() {
  local app=$1 w=$T/work/$1
  cli apps:create "$app" >/dev/null 2>&1
  mkdir -p "$w" && cp -r "$HELLO"/. "$w"
  git -C "$w" init -q -b main
  git -C "$w" -c user.name=bench -c user.email=bench@localhost add .
  git -C "$w" -c user.name=bench -c user.email=bench@localhost commit -qm "v0"
  git -C "$w" remote add berth "http://bench:$TOKEN@$ADMIN/git/$app.git"
}

# push APP N: commit a change and push it; prints the seconds until the app serves release vN.
push() {
  local app=$1 n=$2 w=$T/work/$1 t0 body
  echo "$n" >"$w/VERSION"
  git -C "$w" add VERSION
  git -C "$w" -c user.name=bench -c user.email=bench@localhost commit -qm "push $n" >/dev/null
  t0=$EPOCHREALTIME
  git -C "$w" push -q berth main >"$T/push-$app-$n.log" 2>&1 || { echo "FAIL"; return; }
  for _ in $(seq 200); do
    body=$(curl -s --max-time 2 -H "Host: $app.localhost" "http://$HTTP/" || true)
    [[ $body == *"(v$n,"* ]] && break
    sleep 0.01
  done
  [[ $body == *"(v$n,"* ]] || { echo "FAIL"; return; }
  awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'
}

# --- (a) -------------------------------------------------------------------------------------------
log "(a) $PUSHES pushes of examples/hello"
new_repo hello
: >"$T/a.txt"
for n in $(seq 1 "$PUSHES"); do push hello "$n" >>"$T/a.txt"; done
read -r A_MED A_P90 A_FAIL < <(python3 - "$T/a.txt" <<'EOF'
import sys
v = [l.strip() for l in open(sys.argv[1])]
ok = sorted(float(x) for x in v if x != "FAIL")
q = lambda p: ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")
print(f"{q(0.5):.3f} {q(0.9):.3f} {len(v) - len(ok)}")
EOF
)
log "(a) median ${A_MED}s p90 ${A_P90}s failures $A_FAIL"

# --- (b) -------------------------------------------------------------------------------------------
log "(b) $BURST_APPS apps × $BURST_PUSHES pushes"
for i in $(seq -f '%02g' 1 "$BURST_APPS"); do new_repo "burst$i"; done
t0=$EPOCHREALTIME
PUSHERS=()
for i in $(seq -f '%02g' 1 "$BURST_APPS"); do
  (for n in $(seq 1 "$BURST_PUSHES"); do push "burst$i" "$n"; done >"$T/b-$i.txt") &
  PUSHERS+=($!)
done
wait "${PUSHERS[@]}"
B_TOTAL=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
B_FAIL=$(cat "$T"/b-*.txt | grep -c FAIL || true)
B_LIVE=0
for i in $(seq -f '%02g' 1 "$BURST_APPS"); do
  body=$(curl -s --max-time 2 -H "Host: burst$i.localhost" "http://$HTTP/" || true)
  [[ $body == *"(v$BURST_PUSHES,"* ]] && B_LIVE=$((B_LIVE + 1))
done
TOTAL_PUSHES=$((BURST_APPS * BURST_PUSHES))
B_RATE=$(awk -v n="$TOTAL_PUSHES" -v t="$B_TOTAL" 'BEGIN { printf "%.1f", n / t }')
B_MED=$(cat "$T"/b-*.txt | grep -v FAIL | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
log "(b) ${B_TOTAL}s, $B_RATE deploys/s, $B_LIVE/$BURST_APPS apps on their newest commit, $B_FAIL failed pushes"

cat <<EOF
### git push (issue 4), $(date -u +%Y-%m-%d) on $REV

Command: \`bash bench/git.sh\` (PUSHES=$PUSHES, BURST_APPS=$BURST_APPS, BURST_PUSHES=$BURST_PUSHES); $(nproc) cores.

| figure | value | target |
|---|---|---|
| (a) \`git push\` of a new commit → serving it, median of $PUSHES | **${A_MED} s** (p90 ${A_P90} s, $A_FAIL failed) | ≤ 2 s |
| (b) $TOTAL_PUSHES pushes across $BURST_APPS apps, in parallel | **${B_TOTAL} s** total, $B_RATE deploys/s, median push→serving ${B_MED} s | every app on its newest commit: $B_LIVE/$BURST_APPS, $B_FAIL failed |
EOF

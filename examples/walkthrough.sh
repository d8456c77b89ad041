#!/usr/bin/env bash
# From data to a released, served and monitored model, in one scenario:
#
#   1. lmtune pipeline   train, test on held-out rows, gate, release v1 into a registry
#   2. lmtune registry   list the releases (`current` names the served one)
#   3. lmtune serve      serve REGISTRY/current, classify a few texts over HTTP, read
#                        /metrics, log every prediction; then stop the server
#   4. lmtune monitor    record healthy labelled batches against the released model: exit 0
#   5.                   record a batch from another domain: `monitor status` exits 1 (alert)
#   6.                   write the monitoring report (plots over time)
#
# Usage, from the repository root after `make install` (or `make demo`):
#
#   examples/walkthrough.sh [OUT]            bundled data (no download; about 2 minutes on 1 core)
#   examples/walkthrough.sh --real [OUT]     SST sentences to release, Amazon reviews as the shift:
#                                            needs ../shared/data beside the repo
#
# OUT (default runs/walkthrough, or runs/walkthrough_real with --real; also $WALKTHROUGH_OUT)
# must be absent or empty: every file of the scenario goes there (run folder, registry,
# batches, serving log, monitoring history and report). Environment:
#   LMTUNE                  the lmtune command (default .venv/bin/lmtune)
#   PYTHON                  Python for the data helper and the HTTP calls (default .venv/bin/python)
#   WALKTHROUGH_REAL=1      same as --real
#   WALKTHROUGH_OVERRIDES   extra key=value overrides for the pipeline, e.g. "train.epochs=3"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REAL="${WALKTHROUGH_REAL:-0}"
OUT="${WALKTHROUGH_OUT:-}"
for arg in "$@"; do
  case "$arg" in
    --real) REAL=1 ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "unknown option $arg (see --help)" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
if [ -z "$OUT" ]; then
  if [ "$REAL" = 1 ]; then OUT=runs/walkthrough_real; else OUT=runs/walkthrough; fi
fi
read -r -a LMTUNE_CMD <<< "${LMTUNE:-.venv/bin/lmtune}"
PYTHON="${PYTHON:-.venv/bin/python}"
if ! (cd "$ROOT" && command -v "${LMTUNE_CMD[0]}" && command -v "$PYTHON") > /dev/null; then
  echo "${LMTUNE_CMD[0]} or $PYTHON not found: run \`make install\` first (or set LMTUNE and PYTHON)" >&2
  exit 2
fi
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  echo "$OUT is not empty: remove it (rm -rf $OUT) or pass another folder" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # absolute: the commands below run from the repository root,
case "$OUT" in "$ROOT"/*) OUT="${OUT#"$ROOT"/}" ;; esac  # shown relative to it when inside
cd "$ROOT"                  # (configs name their data relative to the repository root)

read -r -a OVERRIDES <<< "${WALKTHROUGH_OVERRIDES:-}"
RUN="$OUT/run"
REGISTRY="$OUT/registry"
BATCHES="$OUT/batches"

lmtune() { "${LMTUNE_CMD[@]}" "$@"; }
section() { printf '\n==== %s ====\n' "$1"; }
run() { printf '$ %s\n' "$*"; "$@"; }  # show a command, then run it

# A small HTTP client in the venv's Python, so the walkthrough needs no curl.
# http METHOD URL [JSON_BODY]: prints the JSON reply; exits non-zero on an HTTP error.
http() {
  "$PYTHON" - "$@" <<'PY'
import json, sys, urllib.request
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as reply:
    print(json.dumps(json.loads(reply.read()), indent=1))
PY
}

# ---- 1. Train, test, gate, release ---------------------------------------------------------
# The pipeline trains with early stopping, measures the held-out test split, and releases the
# model as REGISTRY/v1 only if the gate's threshold is met (exit 3 otherwise).
if [ "$REAL" = 1 ]; then
  # SST sentences to train on, SST-2 test sentences to release with and as healthy traffic,
  # Amazon beauty reviews as the shift: prepared from ../shared/data into OUT/batches.
  section "0. Prepare the real data"
  run "$PYTHON" examples/walkthrough_data.py real "$BATCHES"
  CONFIG=configs/pipeline_sst2_minilm.yaml
  DATA=("data.train=$BATCHES/sst_train.jsonl" "data.test=$BATCHES/sst2_release_test.jsonl")
  HEALTHY=(sst2_week1 sst2_week2 sst2_week3)
  SHIFTED="$BATCHES/amazon_beauty.jsonl"
  TEXT="a gripping , beautifully acted film that never loses its nerve ."
else
  CONFIG=configs/pipeline_demo.yaml
  DATA=()
  HEALTHY=(week1 week2)
  SHIFTED=examples/data/app_reviews_shifted.jsonl
  TEXT="The battery lasts all week and the sound is crisp. Love them."
fi
section "1. Train, test, gate and release"
run lmtune pipeline "$CONFIG" ${DATA[@]+"${DATA[@]}"} "run.output_dir=$RUN" "gate.registry=$REGISTRY" \
  ${OVERRIDES[@]+"${OVERRIDES[@]}"} --quiet

# ---- 2. The registry ------------------------------------------------------------------------
section "2. The registry"
run lmtune registry list "$REGISTRY"

# ---- 3. Serve the current release -----------------------------------------------------------
# Port 0 lets the server pick a free port; it prints its URL, which we read from its log.
# Every prediction is appended to OUT/predictions.jsonl (`monitor record --predictions` reads it).
section "3. Serve the current release"
printf '$ %s &\n' "lmtune serve $REGISTRY/current --port 0 --log-predictions $OUT/predictions.jsonl"
# The command itself goes to the background (not the lmtune() function, whose subshell would
# get the signal while the server kept running), so SERVER_PID is the server's own process.
"${LMTUNE_CMD[@]}" serve "$REGISTRY/current" --port 0 --log-predictions "$OUT/predictions.jsonl" \
  > "$OUT/serve.log" 2>&1 &
SERVER_PID=$!
stop_server() {  # always stop the server: on success, on error, on Ctrl+C
  if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT
trap 'exit 130' INT TERM

URL=
for _ in $(seq 600); do  # up to 5 minutes for the model to load
  URL="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$OUT/serve.log" | head -n 1 || true)"
  if [ -n "$URL" ] && http GET "$URL/health" > /dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "the server stopped before answering /health:" >&2; cat "$OUT/serve.log" >&2; exit 1
  fi
  URL=
  sleep 0.5
done
if [ -z "$URL" ]; then echo "the server did not answer /health in time" >&2; exit 1; fi
head -n 2 "$OUT/serve.log"

run http GET "$URL/health"
# One text, then a batch of three texts the model has not seen (the first rows of the
# release's test split; their gold labels are in that file).
run http POST "$URL/v1/classify" "$("$PYTHON" -c 'import json, sys; print(json.dumps({"input": sys.argv[1]}))' "$TEXT")"
if [ "$REAL" = 1 ]; then TESTFILE="$BATCHES/sst2_release_test.jsonl"; else TESTFILE="$RUN/data/test.jsonl"; fi
run http POST "$URL/v1/classify" "$("$PYTHON" -c '
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8").readlines()[:3]]
print(json.dumps({"input": [r["text"] for r in rows]}))' "$TESTFILE")"
run http GET "$URL/metrics"
stop_server
echo "server stopped; $(wc -l < "$OUT/predictions.jsonl") predictions logged in $OUT/predictions.jsonl"

# expect_status CODE FILE WHAT: run `monitor status`, keep its table in FILE, and stop the
# walkthrough unless it exited with CODE (0: all checks OK, 1: an alert fired).
expect_status() {
  local want="$1" file="$2" what="$3" code=0
  echo "\$ lmtune monitor status $REGISTRY"
  lmtune monitor status "$REGISTRY" > "$file" || code=$?
  cat "$file"
  if [ "$code" != "$want" ]; then
    echo "monitor status exit code: $code, expected $want" >&2
    exit 1
  fi
  echo "monitor status exit code: $code ($what)"
}

# ---- 4. Monitor the release on healthy batches ----------------------------------------------
# `monitor record REGISTRY` scores a labelled batch with the registry's current version and
# compares its inputs with the training profile the release carries (data_profile.json); the
# history is REGISTRY/monitor.db. `monitor status` judges the latest batch: exit 0 = all OK.
section "4. Healthy batches"
if [ "$REAL" = 0 ]; then
  # week1: the release's own held-out test rows; week2: fresh reviews from the same generator.
  run "$PYTHON" examples/walkthrough_data.py bundled "$RUN" "$BATCHES"
fi
for batch in "${HEALTHY[@]}"; do
  run lmtune monitor record "$REGISTRY" --data "$BATCHES/$batch.jsonl"
done
expect_status 0 "$OUT/status_healthy.txt" "healthy, as expected"

# ---- 5. A batch from another domain ---------------------------------------------------------
# Same labels, other texts: the input checks (token lengths, out-of-vocabulary words) fire.
# Exit 1 is the expected outcome here, so the script checks for it instead of stopping.
section "5. A shifted batch"
run lmtune monitor record "$REGISTRY" --data "$SHIFTED"
expect_status 1 "$OUT/status_shifted.txt" "alert, as expected"
echo "$(grep '^ALERT:' "$OUT/status_shifted.txt")"

# ---- 6. The monitoring report ---------------------------------------------------------------
section "6. Monitoring report"
run lmtune monitor report "$REGISTRY" --out "$OUT/monitor_report"

echo
echo "Done. Released model: $REGISTRY/$(cat "$REGISTRY/current")"
echo "  run folder (report.html, gate.md): $RUN"
echo "  serving log:                       $OUT/predictions.jsonl"
echo "  monitoring history:                $REGISTRY/monitor.db"
echo "  monitoring report:                 $OUT/monitor_report/report.html"

#!/usr/bin/env bash
# make demo: the simulated telescope writes a short night into a drop directory, the daemon
# grades it live with the shipped model, then everything stops cleanly and we say where the
# output is.
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${2:-demo-output}
NIGHT=2026-11-24
N=8
PORT=19108
rm -rf "$OUT"
mkdir -p "$OUT/drop"
cat > "$OUT/demo.yaml" <<YAML
watch: {settle_s: 0.5, poll_s: 0.1}
metrics: {port: $PORT}
YAML

echo "== 1. the daemon starts watching $OUT/drop (model: models/default)"
"$BIN/skygrade" --config "$OUT/demo.yaml" watch --drop "$OUT/drop" --out "$OUT/grades" \
  > "$OUT/daemon.log" 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null || true' EXIT

echo "== 2. the simulated telescope writes $N exposures (4 CCDs of 1024x2306), one every 4 s,"
echo "      each file arriving progressively over 1 s"
"$BIN/skygrade" -q simulate --drop "$OUT/drop" --nights "$NIGHT" --exposures $N --cadence 4 \
  --transfer 1 --n-ccd 4 --ccd-shape 1024x2306 --seed 7 2>/dev/null

echo "== 3. waiting for the daemon to grade them all"
"$BIN/python" - "$OUT" "$N" "$PORT" <<'PY'
import csv, sys, time, urllib.request
from pathlib import Path
import pyarrow.dataset as ds
out, n, port = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
deadline = time.time() + 600
rows = []
while time.time() < deadline:
    root = out / "grades" / "exposures"
    if root.exists():
        rows = ds.dataset(root, partitioning="hive").to_table().to_pylist()
        if len(rows) >= n:
            break
    time.sleep(1)
with open(out / "drop" / "labels.csv") as fh:
    truth = {r["exposure_id"]: r["label"] for r in csv.DictReader(fh)}
right = 0
print(f"{'exposure':>10}  {'truth':8}  {'grade':8}  {'conf':>4}  {'latency':>8}  reason")
for r in sorted(rows, key=lambda r: r["exposure_id"]):
    t = truth.get(r["exposure_id"], "?")
    right += t == r["grade"]
    lat = f"{r['latency_s']:.1f} s" if r["latency_s"] is not None else "-"
    print(f"{r['exposure_id']:>10}  {t:8}  {r['grade'] or '-':8}  {r['confidence']:4.2f}  "
          f"{lat:>8}  {(r['reason'] or '')[:60]}")
print(f"\n{len(rows)}/{n} exposures graded live, {right} as their true class")
metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
print("\nfrom http://127.0.0.1:%s/metrics:" % port)
for line in metrics.splitlines():
    if line.startswith(("skygrade_exposures_graded_total", "skygrade_grading_latency_seconds_count",
                        "skygrade_backlog_exposures", "skygrade_model_info")):
        print("  " + line)
PY

echo
echo "== 4. stopping the daemon (SIGTERM)"
kill -TERM $DAEMON
wait $DAEMON && echo "   daemon exited cleanly" || echo "   daemon exit code $?"
trap - EXIT
echo
echo "demo done. Output:"
echo "  $OUT/drop/$NIGHT/*.fits        exposures the simulated telescope delivered (SIMCLASS = truth)"
echo "  $OUT/drop/labels.csv           exposure_id,label"
echo "  $OUT/grades/exposures/night=$NIGHT/   one parquet row per exposure (grade, p_*, latency, reason)"
echo "  $OUT/grades/ccds/night=$NIGHT/        one parquet row per CCD (grade, p_*, 20 SOM hits)"
echo "  $OUT/grades/ledger.sqlite      the daemon's ledger (seen -> graded | quarantined)"
echo "  $OUT/daemon.log                the daemon's log"
echo "  read them with: $BIN/python -c \"import pandas; print(pandas.read_parquet('$OUT/grades/exposures'))\""

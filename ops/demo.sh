#!/usr/bin/env bash
# make demo: run skygrade end to end on a simulated night with the shipped model and say
# where everything went.
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${2:-demo-output}
NIGHT=2026-11-24
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1. the simulated MegaCam telescope renders one night (12 exposures, 4 CCDs of 1024x2306)"
"$BIN/skygrade" -q simulate --out "$OUT/archive" --nights "$NIGHT" --exposures 12 \
  --n-ccd 4 --ccd-shape 1024x2306 --seed 7 2>/dev/null
echo
echo "== 2. skygrade grades every exposure with the shipped model (models/default)"
"$BIN/skygrade" -q grade "$OUT"/archive/"$NIGHT"/*.fits --out "$OUT/grades" --workers 2 \
  2> "$OUT/grade.log" | tee "$OUT/grades.txt"
echo
echo "== 3. grades against the simulator's ground truth"
"$BIN/python" - "$OUT" <<'PY'
import csv, sys
from pathlib import Path
import pyarrow.dataset as ds
out = Path(sys.argv[1])
with open(out / "archive" / "labels.csv") as fh:
    truth = {r["exposure_id"]: r["label"] for r in csv.DictReader(fh)}
rows = ds.dataset(out / "grades" / "exposures", partitioning="hive").to_table().to_pylist()
hits = 0
print(f"{'exposure':>10}  {'truth':8}  {'grade':8}  conf")
for r in sorted(rows, key=lambda r: r["exposure_id"]):
    t = truth.get(r["exposure_id"], "?")
    hits += t == r["grade"]
    print(f"{r['exposure_id']:>10}  {t:8}  {r['grade'] or '-':8}  {r['confidence']:.2f}")
print(f"{hits}/{len(rows)} exposures graded as their true class")
PY
echo
echo "== 4. the configuration the run used (documented defaults): $OUT/skygrade.yaml"
"$BIN/skygrade" config show > "$OUT/skygrade.yaml"
echo
echo "demo done. Output:"
echo "  $OUT/archive/$NIGHT/*.fits      simulated exposures (MEF, uint16, SIMCLASS = truth)"
echo "  $OUT/archive/labels.csv         exposure_id,label"
echo "  $OUT/grades/exposures/night=$NIGHT/   one parquet row per exposure (grade, p_*, reason...)"
echo "  $OUT/grades/ccds/night=$NIGHT/        one parquet row per CCD (grade, p_*, 20 SOM hits)"
echo "  $OUT/skygrade.yaml              effective configuration"
echo "  read them with: python -c \"import pandas; print(pandas.read_parquet('$OUT/grades/exposures'))\""

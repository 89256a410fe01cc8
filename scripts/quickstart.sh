#!/usr/bin/env bash
# One command from a fresh clone to a trained, evaluated model, a short MD run and a screening run
# (2-core CPU, about 10 minutes). Nothing is downloaded at run time: the data set is generated
# here with GFN2-xTB (tblite). Outputs land in runs/quickstart/ (QUICKSTART_OUT overrides).
#
#   bash scripts/quickstart.sh
#   QUICKSTART_TRAIN_MINUTES=2 bash scripts/quickstart.sh    # shorter training
# Other knobs: QUICKSTART_GAP_MINUTES, QUICKSTART_GAP_MOLECULES, QUICKSTART_SCREEN_MOLECULES,
# QUICKSTART_WORKERS (Dask workers for the screen), QUICKSTART_FRAMES, QUICKSTART_TEST_FRAMES,
# QUICKSTART_MD_STEPS; MOLEQUI_SKIP_SETUP=1 uses the environment as it is (no pip).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${MOLEQUI_SKIP_SETUP:-}" ]; then  # the test suite runs this script inside a ready .venv
    bash "$root/scripts/setup_env.sh"
fi
venv="${MOLEQUI_VENV:-$root/.venv}"
python="$venv/bin/python"
molequi="$venv/bin/molequi"
out="${QUICKSTART_OUT:-$root/runs/quickstart}"
minutes="${QUICKSTART_TRAIN_MINUTES:-3}"
gap_minutes="${QUICKSTART_GAP_MINUTES:-1.5}"
gap_n="${QUICKSTART_GAP_MOLECULES:-4000}"
screen_n="${QUICKSTART_SCREEN_MOLECULES:-1000}"
workers="${QUICKSTART_WORKERS:-1}"
frames="${QUICKSTART_FRAMES:-600}"
test_frames="${QUICKSTART_TEST_FRAMES:-200}"
md_steps="${QUICKSTART_MD_STEPS:-1000}"
export MPLBACKEND=Agg
mkdir -p "$out"
cd "$root"
for previous in model md gap_model screen; do  # a rerun starts afresh (the data set is kept)
    if [ -e "$out/$previous" ]; then
        echo "[quickstart] replacing the previous run's $out/$previous"
        rm -rf "${out:?}/$previous"
    fi
done

echo
echo "== 1/6  GFN2-xTB data set: Langevin MD of ethanol at 500 K (datasets/xtb_md.py)"
if [ ! -f "$out/data/xtb_ethanol_train.extxyz" ]; then
    "$python" datasets/xtb_md.py --out "$out/data/xtb_ethanol.extxyz" --split --n-frames "$frames" --test-frames "$test_frames"
else
    echo "   (already there: $out/data)"
fi

echo
echo "== 2/6  train for ${minutes} minutes (config: scripts/quickstart.yaml)"
"$molequi" train --data "$out/data/xtb_ethanol_train.extxyz" --test-data "$out/data/xtb_ethanol_test.extxyz" \
    --out "$out/model" --config scripts/quickstart.yaml --max-minutes "$minutes" --device cpu

echo
echo "== 3/6  evaluate on the ${test_frames} held-out test frames"
"$molequi" evaluate "$out/model/model.molequi" "$out/data/xtb_ethanol_test.extxyz" --plot "$out/model/parity.png"

echo
echo "== 4/6  NVE molecular dynamics with the trained model (${md_steps} steps of 0.5 fs, 4 replicas)"
"$python" - "$out" <<'PY'
import sys, ase.io
out = sys.argv[1]
ase.io.write(f"{out}/ethanol_start.xyz", ase.io.read(f"{out}/data/xtb_ethanol_test.extxyz", 0))
PY
"$molequi" md "$out/model/model.molequi" "$out/ethanol_start.xyz" --steps "$md_steps" --dt 0.5 --ensemble nve \
    --temperature 300 --replicas 4 --out "$out/md" --traj-every 100 --log-every 10

echo
echo "== 5/6  a QM9 HOMO-LUMO gap model: ${gap_n} molecules, ${gap_minutes} minutes (qm9pack, scripts/quickstart_gap.yaml)"
"$molequi" train --data "qm9:train?n=${gap_n}" --test-data "qm9:test?n=500" --target gap \
    --out "$out/gap_model" --config scripts/quickstart_gap.yaml --max-minutes "$gap_minutes" --device cpu

echo
echo "== 6/6  screen ${screen_n} held-out QM9 molecules (SA <= 4.5, PAINS+Brenk, rules, 3D), rank by predicted gap"
"$python" - "$out/candidates.smi" "$screen_n" <<'PY'
import sys
from molequi.data.qm9 import load_qm9
path, n = sys.argv[1], int(sys.argv[2])
molecules = load_qm9("test", n=n)  # held out: the gap model trained on the train split (same seed)
with open(path, "w") as sink:
    sink.writelines(f"{atoms.info['smiles']} qm9_{atoms.info['index']}\n" for atoms in molecules)
print(f"wrote {len(molecules)} SMILES to {path}")
PY
"$molequi" screen "$out/candidates.smi" --model "$out/gap_model/model.molequi" --objective gap:max --top 10 \
    --workers "$workers" --out "$out/screen" --overwrite

echo
echo "Done in $((SECONDS / 60)) min $((SECONDS % 60)) s. Outputs in $out:"
echo "  model/      model.molequi, log.csv, learning_curve.png, test_metrics.json, parity.png"
echo "  md/         energy logs, trajectories, energy.png"
echo "  gap_model/  the QM9 gap model (test_metrics.json: gap MAE in eV)"
echo "  screen/     scored.csv, top.sdf, report.html"

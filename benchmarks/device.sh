#!/usr/bin/env bash
# GPU and many-core figures in one run, for a CUDA machine (sized for one H200 with 16 cores):
#   1. packages   what is missing (hydra, mlflow, ...) from wheels in .whl/ (no internet there) or pip
#   2. data       the TinyImageNet-100-A zip through the pipeline's own jobs: download (data.url=<zip>,
#                 sha256 checked when known), prepare
#   3. train      the GPU preset (the `gpu:` block of conf/train/default.yaml, automatic on CUDA);
#                 targets: >= 70% val top-1 in <= 5 minutes of training
#   4. sweep      benchmarks/sweep.py --workers N (default cores / 4, at least 2) on the CPU cores:
#                 8 class_viz configurations sequential vs N workers; target with 4 workers on 16 cores
#                 <= 0.4x sequential
#   5. benchmarks benchmarks/gradients.py, generation.py, attribution.py on the model step 3 trained
#   then a summary of every figure. Each step runs under `timeout`: its own cap, and never past the
#   deadline (--deadline, 540 s), so the summary always prints inside a 10-minute call.
#
#   bash benchmarks/device.sh [--zip PATH] [--workers N] [--deadline SECONDS] [--out DIR]
#   bash benchmarks/device.sh --smoke [--workers N] [--out DIR]
#   bash benchmarks/device.sh --pack [--zip PATH]
#
#   --zip       the TinyImageNet-100-A zip, or a folder holding it split in parts (*.part*, joined in
#               name order; a `sha256` file beside them is checked). Default: the first of
#               shared/data/, ../shared/data/ (tiny-imagenet-100-A.zip) and build/device/ (parts)
#   --workers   parallel sweep workers (default: cores / 4, at least 2)
#   --deadline  seconds after which no step runs on (default 540; smoke: 3600)
#   --out       keep every step's log and summary.txt in DIR (e.g. $OUT on the device machine)
#   --smoke     a tiny synthetic dataset, a tiny model and tiny benchmark sizes: the whole script end
#               to end on a CPU in minutes (tests/test_device_script.py)
#   --pack      on a machine WITH internet: put the wheels the device image lacks in .whl/ and split
#               the zip into build/device/zip1, zip2 (<= 58 MiB each: one call carries 64 MiB), then
#               print the device calls that carry them
# Environment: ZIP, WORKERS, DEADLINE, OUT_DIR, SMOKE=1, PYTHON (default python3) do the same.
#
# Everything runs in a scratch copy of the checkout (data/, models/, mlflow.db, metrics/ there are the
# copy's own), so the checkout's DVC outputs are never touched. Exit status: 0 when every step ran,
# 1 when one failed or ran out of time (its row in the summary says which), 2 for bad arguments.
set -euo pipefail

die() { echo "device.sh: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ZIP=${ZIP:-}
WORKERS=${WORKERS:-}
DEADLINE=${DEADLINE:-}
OUT_DIR=${OUT_DIR:-}
SMOKE=${SMOKE:-0}
PACK=0
PY=${PYTHON:-python3}
ZIP_NAME=tiny-imagenet-100-A.zip
PART_MIB=58

while [ $# -gt 0 ]; do
  case "$1" in
    --zip|--workers|--deadline|--out)
      [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"
      case "$1" in
        --zip) ZIP=$2 ;; --workers) WORKERS=$2 ;; --deadline) DEADLINE=$2 ;; --out) OUT_DIR=$2 ;;
      esac
      shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --pack) PACK=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ "$SMOKE" = 0 ] || [ "$SMOKE" = 1 ] || die "SMOKE must be 0 or 1, got '$SMOKE'"
if [ -n "$WORKERS" ] && ! [[ "$WORKERS" =~ ^[0-9]+$ && "$WORKERS" -ge 2 ]]; then
  die "--workers must be a whole number >= 2, got '$WORKERS'"
fi
if [ -n "$DEADLINE" ] && ! [[ "$DEADLINE" =~ ^[0-9]+$ && "$DEADLINE" -ge 60 ]]; then
  die "--deadline must be a whole number of seconds >= 60, got '$DEADLINE'"
fi
if [ "$SMOKE" = 1 ] && [ -n "$ZIP" ]; then
  die "--smoke makes its own synthetic dataset; drop --zip"
fi
if [ "$SMOKE" = 1 ] && [ "$PACK" = 1 ]; then
  die "--pack and --smoke exclude each other"
fi
if [ -n "$ZIP" ] && [ ! -e "$ZIP" ]; then
  die "--zip $ZIP: no such file or folder"
fi
[ -z "$ZIP" ] || ZIP=$(realpath -- "$ZIP")  # the steps run in a scratch copy
if [ -z "$ZIP" ] && [ "$SMOKE" = 0 ]; then  # the default places, in order
  for candidate in "$REPO/shared/data/$ZIP_NAME" "$REPO/../shared/data/$ZIP_NAME" "$REPO/build/device"; do
    if [ -f "$candidate" ] || compgen -G "$candidate/zip*/*.part*" >/dev/null || compgen -G "$candidate/*.part*" >/dev/null
    then ZIP=$candidate; break; fi
  done
  [ -n "$ZIP" ] || die "no $ZIP_NAME found in shared/data/, ../shared/data/ or build/device/; pass --zip PATH"
fi
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS
WORKERS=${WORKERS:-$(( CORES / 4 > 2 ? CORES / 4 : 2 ))}
if [ "$SMOKE" = 1 ]; then DEADLINE=${DEADLINE:-3600}; CAP_SCALE=4; else DEADLINE=${DEADLINE:-540}; CAP_SCALE=1; fi

started=$(date +%s)
step() { printf '\n== %s (%s, %d s in)\n' "$1" "$(date +%H:%M:%S)" "$(( $(date +%s) - started ))"; }

# ----------------------------------------------------------------------------------------- --pack
# Wheels the device image lacks (it has torch, numpy, pandas, pillow, joblib, matplotlib, requests,
# pyyaml, ...: /work/.library/device/KINDS.md), for CPython 3.12 on x86-64. Versions: the ones
# installed here when they are (what the tests ran with), else pip's newest.
PACK_WHEELS="hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher mlflow mlflow-skinny mlflow-tracing
sqlalchemy alembic mako sqlparse cachetools opentelemetry-api opentelemetry-sdk opentelemetry-proto
opentelemetry-semantic-conventions importlib-metadata pydantic pydantic-core annotated-types typing-inspection
fastapi starlette cryptography cffi
databricks-sdk google-auth pyasn1 pyasn1-modules rsa python-dotenv gitpython gitdb smmap captum"
if [ "$PACK" = 1 ]; then
  cd "$REPO"
  step "wheels for the device machine (CPython 3.12, x86-64) into .whl/"
  rm -rf .whl && mkdir -p .whl
  pins=$("$PY" - $PACK_WHEELS <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
             --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  for pin in $pins; do
    case $pin in
      antlr4-python3-runtime*) "$PY" -m pip wheel -q --no-deps -w .whl "$pin" ;;  # an sdist only: build it here
      *) "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
           "${platforms[@]}" -d .whl "$pin" 2> >(grep -v "is ignored: it is neither" >&2) ;;
    esac
  done
  "$PY" -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" --target "$(mktemp -d)" .whl/*.whl  # each one installs on 3.12
  echo "$(ls .whl | wc -l) wheels, $(du -sm .whl | cut -f1) MiB"
  step "the zip, in parts of at most $PART_MIB MiB, into build/device/"
  if [ -d "$ZIP" ]; then die "--pack needs the zip file itself, got the folder $ZIP"; fi
  rm -rf build/device && mkdir -p build/device/parts
  split -b "${PART_MIB}M" -d -a 2 "$ZIP" "build/device/parts/$ZIP_NAME.part"
  sha=$(sha256sum "$ZIP" | cut -d' ' -f1)
  n=0
  for part in build/device/parts/*.part*; do
    n=$((n + 1)); mkdir -p "build/device/zip$n"; mv "$part" "build/device/zip$n/"
    echo "$sha" > "build/device/zip$n/sha256"
  done
  rmdir build/device/parts
  mib() { echo $(( ( $(du -sb "$@" | awk '{ n += $1 } END { print n }') + 1048575 ) / 1048576 )); }
  tree=$(git ls-files -co --exclude-standard -z 2>/dev/null | xargs -0 du -cb 2>/dev/null | awk '/\ttotal$/ { n += $1 } END { print n + 0 }')
  tree=$(( (tree + 1048575) / 1048576 ))
  echo "each call carries the working tree ($tree MiB) + what it names, 64 MiB in all:"
  for d in build/device/zip* .whl; do echo "  $d: $(mib "$d") MiB"; done
  grep -qx '/build/' .gitignore 2>/dev/null || echo "note: build/ must be ignored by git for carry to take it"
  echo
  echo "Device calls, back to back (a machine stays warm 30 s after a call; /tmp there lasts while it is held):"
  run="bash benchmarks/device.sh --zip /tmp/tiny --out \$OUT"
  for ((i = 1; i <= n; i++)); do
    copy="mkdir -p /tmp/tiny && cp build/device/zip$i/* /tmp/tiny/"
    if [ "$i" = "$n" ] && [ $(( tree + $(mib "build/device/zip$i" .whl) )) -le 62 ]; then
      echo "  run carry=[\"build/device/zip$i\", \".whl\"] timeout_s=600: $copy && $run"
      exit 0
    fi
    echo "  run carry=[\"build/device/zip$i\"]: $copy && ls -l /tmp/tiny"
  done
  echo "  run carry=[\".whl\"] timeout_s=600: $run"
  exit 0
fi

# ----------------------------------------------------------------------------------------- the run
SCRATCH=$(mktemp -d -t device-bench.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
LOGS=${OUT_DIR:-$SCRATCH/logs}
mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)
FIGURES="$LOGS/summary.txt"
: > "$FIGURES"
DEADLINE_AT=$(( started + DEADLINE ))
RESERVE=15   # seconds kept for the summary
STATUS=0
unset MLFLOW_TRACKING_URI CS231N_MIRROR  # every run logs to the scratch copy's own store
export PYTHONUNBUFFERED=1

figure() { printf '%-48s %s\n' "$1" "$2" | tee -a "$FIGURES"; }
# run_step NAME CAP LOG COMMAND...: COMMAND with its output in LOG, under `timeout` of CAP seconds or
# what is left before the deadline; a failure or time-out becomes the step's row in the summary.
run_step() {
  local name=$1 cap=$2 log=$3 left limit rc=0
  shift 3
  left=$(( DEADLINE_AT - RESERVE - $(date +%s) ))
  cap=$(( cap * CAP_SCALE ))  # smoke mode: a slow, shared CPU
  limit=$(( cap < left ? cap : left ))
  step "$name (limit $limit s)"
  if [ "$limit" -lt 10 ]; then
    figure "$name" "SKIPPED: the $DEADLINE s deadline is reached"; STATUS=1; return 1
  fi
  STEP_STARTED=$(date +%s%N)
  timeout -k 10 "$limit" "$@" > "$log" 2>&1 || rc=$?
  STEP_SECONDS=$(awk -v a="$STEP_STARTED" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    tail -n 15 "$log"; figure "$name" "TIMEOUT after $limit s (log: $log)"; STATUS=1; return 1
  elif [ "$rc" != 0 ]; then
    tail -n 30 "$log"; figure "$name" "FAILED, exit $rc (log: $log)"; STATUS=1; return 1
  fi
}
summary() {
  printf '\n== summary: %d s in all (deadline %d s)%s\n' "$(( $(date +%s) - started ))" "$DEADLINE" \
    "$([ "$SMOKE" = 1 ] && echo ', SMOKE mode: synthetic data, tiny model, tiny sizes: not figures to quote')"
  cat "$FIGURES"
}
essential() {  # a failed essential step leaves nothing to measure
  figure "stopped" "the later steps need this step's output"; summary; exit 1
}

step "packages"
have_packages() { "$PY" -c "import hydra, omegaconf, mlflow, sqlalchemy, alembic, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; }
if ! have_packages; then
  if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    echo "installing $(ls "$REPO"/.whl/*.whl | wc -l) wheels from .whl/ into the scratch folder"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SCRATCH/site" \
      "$REPO"/.whl/*.whl
    export PYTHONPATH="$SCRATCH/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "installing the package's requirements with pip (no .whl/ here)"
    "$PY" -m pip install -q -e "$REPO[sweep,bench]"
  fi
  have_packages || { echo "device.sh: hydra / mlflow still missing after the install" >&2; exit 1; }
fi
"$PY" -c "import torch, mlflow, hydra; print('python', __import__('sys').version.split()[0], '| torch', torch.__version__,
'| mlflow', mlflow.__version__, '| hydra', hydra.__version__)"

step "a scratch copy of the checkout"
ROOT="$SCRATCH/repo"
mkdir -p "$ROOT"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then  # tracked + untracked, not ignored
  (cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) \
    | tar -xf - -C "$ROOT"
else  # a copy without git metadata: leave out what .gitignore names
  tar -cf - -C "$REPO" --exclude=./data --exclude=./models --exclude=./mlruns --exclude=./mlflow.db \
    --exclude=./outputs --exclude=./multirun --exclude=./checkpoints --exclude=./results --exclude=./report \
    --exclude=./build --exclude=./.whl --exclude=./.venv --exclude='*.zip' --exclude='*.pt' . | tar -xf - -C "$ROOT"
fi
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import pipeline, sys; sys.exit(0 if pipeline.__file__.startswith('$ROOT') else 'pipeline imported from ' + pipeline.__file__)"
echo "working copy: $ROOT ($(du -sm . | cut -f1) MiB); logs: $LOGS"

step "device"
"$PY" - <<'EOF' | tee -a "$FIGURES"
import os, subprocess, torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    gpu = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip()
        gpu += f", driver {driver}" if driver else ""
    except (OSError, subprocess.SubprocessError):
        pass
else:
    gpu = "none (CPU only)"
print(f"{'GPU':<48} {gpu}")
print(f"{'CPU cores':<48} {os.cpu_count()} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
EOF
if [ "$SMOKE" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "device.sh: no CUDA device: training runs the CPU preset (about 28 minutes on 2 cores) and will" \
       "likely reach the deadline; the GPU figures need a CUDA machine" >&2
fi

step "data"
SHA=""
if [ "$SMOKE" = 1 ]; then
  ZIP="$SCRATCH/synthetic.zip"
  "$PY" -c "import sys, pathlib; sys.path.insert(0, 'tests'); import synthetic
synthetic.make_zip(pathlib.Path(sys.argv[1]), num_classes=4, train_per_class=12, val_per_class=6, num_test=2)" "$ZIP"
elif [ -d "$ZIP" ]; then  # the zip in parts (benchmarks/device.sh --pack)
  mapfile -t parts < <(find "$ZIP" -maxdepth 2 -type f -name '*.part*' -printf '%f\t%p\n' | sort | cut -f2)
  [ "${#parts[@]}" -gt 0 ] || die "--zip $ZIP: no *.part* files in that folder"
  echo "joining ${#parts[@]} parts from $ZIP"
  cat "${parts[@]}" > "$SCRATCH/$ZIP_NAME"
  SHA=$(cat "$(dirname "${parts[0]}")/sha256" 2>/dev/null || true)
  ZIP="$SCRATCH/$ZIP_NAME"
fi
if [ -z "$SHA" ] && [ -f "$(dirname "$ZIP")/SHA256SUMS" ]; then
  SHA=$(awk -v n="$(basename "$ZIP")" '$2 == n || $2 == "*" n {print $1}' "$(dirname "$ZIP")/SHA256SUMS")
fi
echo "zip: $ZIP ($(( $(stat -c %s "$ZIP") / 1048576 )) MiB)${SHA:+, expected sha256 $SHA}"
data_started=$(date +%s)
run_step "download" 120 "$LOGS/download.log" "$PY" -m pipeline.download "data.url=$ZIP" ${SHA:+data.sha256=$SHA} \
  progress=false || essential
run_step "prepare" 180 "$LOGS/prepare.log" "$PY" -m pipeline.prepare "data.prepare.workers=$(( CORES < 8 ? CORES : 8 ))" \
  progress=false || essential
grep -h "prepared" "$LOGS/prepare.log" | sed 's/^.*\] - //' || true
figure "data: download + prepare" "$(( $(date +%s) - data_started )) s"

TRAIN=()
if [ "$SMOKE" = 1 ]; then
  TRAIN=(model.widths=[8,16] model.blocks=[1,1] model.stem_width=8 train.epochs=1 train.gpu.epochs=1 train.batch_size=16
         train.gpu.batch_size=16 train.resize.start=48 train.resize.full_size_epochs=1 train.gpu.resize.full_size_epochs=1)
fi
run_step "train (on CUDA the gpu: preset of conf/train/default.yaml)" 480 "$LOGS/train.log" \
  "$PY" -m pipeline.train progress=false "${TRAIN[@]}" || essential
grep -E "epoch [0-9]+/|val accuracy" "$LOGS/train.log" | sed 's/^.*\] - //' || true
"$PY" - <<'EOF' | tee -a "$FIGURES"
import json, torch
m = json.load(open("metrics/train.json"))
gpu = torch.cuda.is_available()
def mark(ok):
    return ("  MET" if ok else "  MISSED") if gpu else ""
print(f"{'train: val top-1 (target >= 0.70)':<48} {m['val_accuracy']:.4f}{mark(m['val_accuracy'] >= 0.70)}"
      f" (top-5 {m['val_top5']:.4f}, all val images)")
print(f"{'train: minutes of training (target <= 5)':<48} {m['train_minutes']:.2f}{mark(m['train_minutes'] <= 5)}"
      f" ({m['epochs']} epochs, {m['images_per_second']:.0f} images/s, {m['num_parameters'] / 1e6:.1f} M parameters)")
EOF
cp metrics/train.json "$LOGS/train.json"

SWEEP=(--workers "$WORKERS" --override class_viz.device=cpu)
if [ "$SMOKE" = 1 ]; then SWEEP+=(--iterations 5 --batched-classes 2 --batched-iterations 2); fi
if run_step "sweep: 8 class_viz configurations on the CPU, sequential vs $WORKERS workers" 180 "$LOGS/sweep.log" \
     "$PY" benchmarks/sweep.py "${SWEEP[@]}"; then
  grep -v "^SWEEP_RATIO" "$LOGS/sweep.log"
  target=$([ "$WORKERS" = 4 ] && echo "target <= 0.4" || echo "the target is for 4 workers: <= 0.4")
  while read -r _ name workers ratio; do
    mark=""; [ "$WORKERS" = 4 ] && [ "$SMOKE" = 0 ] && mark=$(awk -v r="$ratio" 'BEGIN { print (r <= 0.4 ? "  MET" : "  MISSED") }')
    if [ "$name" = small ]; then note="$target, $CORES cores"; else note="one job fills the cores: ~1 expected"; fi
    figure "sweep ($name): $workers workers / sequential" "$(printf '%.2f' "$ratio")x$mark ($note)"
  done < <(grep "^SWEEP_RATIO" "$LOGS/sweep.log")
  figure "sweep: per-child overhead" "$(tr -s ' ' < "$LOGS/sweep.log" | grep -o 'sequential [0-9.]* s/child, parallel [0-9.]* s/child' || true)"
fi

# the visualization benchmarks, on the model just trained; `keep` copies their headline lines
keep() {  # keep NAME LOG REGEX: each matching line of LOG as a row of the summary
  local line
  while IFS= read -r line; do
    figure "$1" "$(echo "$line" | tr -s ' ' | sed 's/^ //')"
  done < <(grep -E "$3" "$2" || true)
}
GRADIENTS=() GENERATION=() ATTRIBUTION=()
if [ "$SMOKE" = 1 ]; then
  GRADIENTS=(--images 16 --single-images 2 --fooling-images 4 --batch-size 8)
  GENERATION=(--single-classes 1 --iterations 5 --overhead-steps 2 --fourier-steps 2 --repeats 1)
  ATTRIBUTION=(--batch 8 --repeats 1 --slow-images 2)
fi
# each prints its figures as it goes: what a failing or timed-out one printed before still counts
bench() {  # bench NAME CAP LOG COMMAND...: run_step, then the whole output and the seconds it took
  if run_step "$@"; then cat "$3"; figure "${1%%:*}: seconds" "$STEP_SECONDS"; fi
  return 0
}
bench "benchmarks/gradients.py: saliency and fooling" 120 "$LOGS/gradients.log" \
  "$PY" benchmarks/gradients.py "${GRADIENTS[@]}"
keep "gradients (saliency)" "$LOGS/gradients.log" "ours (fp32|bf16) batched|Captum Saliency"
keep "gradients (faithfulness)" "$LOGS/gradients.log" "(deletion|insertion) AUC"
keep "gradients (fooling)" "$LOGS/gradients.log" "^  batched .* one at a time|^  success"
bench "benchmarks/generation.py: class_viz, Fourier, inversion, deepdream" 150 "$LOGS/generation.log" \
  "$PY" benchmarks/generation.py "${GENERATION[@]}"
keep "generation (class_viz)" "$LOGS/generation.log" "^  batched .*one class at a time|^engine overhead"
keep "generation (fourier)" "$LOGS/generation.log" "^fourier_seconds_per_iteration_ratio"
keep "generation (inversion)" "$LOGS/generation.log" "^inversion of val image"
keep "generation (deepdream)" "$LOGS/generation.log" "^deepdream on"
if "$PY" -c "import captum" 2>/dev/null; then
  bench "benchmarks/attribution.py: attribution methods vs Captum" 120 "$LOGS/attribution.log" \
    "$PY" benchmarks/attribution.py "${ATTRIBUTION[@]}"
  keep "attribution (images/s: fp32 bf16 Captum)" "$LOGS/attribution.log" \
    "^(gradient|gradcam|guided_backprop|guided_gradcam|integrated_gradients|noise_tunnel|occlusion) "
  keep "attribution" "$LOGS/attribution.log" "^Grad-CAM .* ms/image|^occlusion, "
  else
  step "benchmarks/attribution.py"
  figure "attribution" "SKIPPED: captum is not installed (the bench extra, or its wheel in .whl/)"
fi

summary
exit "$STATUS"

#!/usr/bin/env bash
# The GPU benchmarks in about 8 minutes: run from the repository root on a machine with a CUDA GPU,
#
#     bash workflow/scripts/gpu_bench.sh OUTDIR
#
# Writes into OUTDIR: torch.txt (which Python/torch/GPU ran), nvidia-smi.txt, bench.log (setup and
# every benchmark's progress lines), backbones_openstl.csv (inference samples/s beside OpenSTL's
# published V100 TaxiBJ FPS), backbones.csv (training samples/s at the reference size, against SimVP
# and the plain timm/torch references), saliency.csv, loader.csv, bank.csv.
#
# Python: NUWA_GPU_PYTHON if set (with this checkout on PYTHONPATH); else a fresh venv (NUWA_GPU_VENV,
# default /tmp/nuwa-gpu-venv) with torch==2.14.1, torchvision==0.29.1 and `pip install -e .`; where
# that fails (no route to the package index, say), the current python3 if it has torch, with this
# checkout on PYTHONPATH (the benchmarks below need torch, timm, numpy and pandas; bank and loader
# want numba, xarray and netCDF4). torch.txt says which was used.
# NUWA_GPU_BENCHES: which to run (default "backbones_openstl backbones saliency loader bank").
set -u
out=${1:?usage: bash workflow/scripts/gpu_bench.sh OUTDIR}
mkdir -p "$out"
log="$out/bench.log"
: >"$log"
venv=${NUWA_GPU_VENV:-/tmp/nuwa-gpu-venv}
benches=${NUWA_GPU_BENCHES:-backbones_openstl backbones saliency loader bank}

py=""
echo "== setup" | tee -a "$log"
if [ -n "${NUWA_GPU_PYTHON:-}" ]; then
    py=$NUWA_GPU_PYTHON
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    used="NUWA_GPU_PYTHON=$py, nuwa from $PWD on PYTHONPATH"
elif python3 -m venv "$venv" >>"$log" 2>&1 \
    && timeout 240 "$venv/bin/pip" install -q --timeout 10 --retries 1 torch==2.14.1 torchvision==0.29.1 >>"$log" 2>&1 \
    && timeout 120 "$venv/bin/pip" install -q --timeout 10 --retries 1 -e . >>"$log" 2>&1; then
    py="$venv/bin/python"
    used="fresh venv $venv (pip install torch==2.14.1 torchvision==0.29.1, pip install -e .)"
elif python3 -c "import torch" >>"$log" 2>&1; then
    py=$(command -v python3)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    used="pip install FAILED (see bench.log); using the existing $py with its own torch, nuwa from $PWD on PYTHONPATH"
else
    echo "pip install failed and python3 has no torch: nothing to run with" | tee -a "$log"
    exit 1
fi
echo "== python: $used" | tee -a "$log"
"$py" -c "import nuwa.cli, nuwa.config, timm" >>"$log" 2>&1 \
    || echo "WARNING: nuwa does not import with $py (bench.log says which module is missing)" | tee -a "$log"
{
    echo "$used"
    "$py" -c 'import sys, torch; print(sys.executable, sys.version.split()[0]); print(torch.__version__, torch.cuda.get_device_name())'
    "$py" -c 'import timm; print("timm", timm.__version__)'
} >"$out/torch.txt" 2>&1
cat "$out/torch.txt"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1

bench() {  # bench SECONDS NAME CSV [options...]
    local seconds=$1 name=$2 csv=$3
    shift 3
    echo "== nuwa bench $name $* (at most ${seconds}s)" | tee -a "$log"
    timeout "$seconds" "$py" -m nuwa bench "$name" "$@" --out "$out/$csv" >>"$log" 2>&1 \
        || echo "   nuwa bench $name failed or timed out (exit $?)" | tee -a "$log"
}

for name in $benches; do
    case $name in
        backbones_openstl) bench 120 backbones backbones_openstl.csv --openstl --device cuda ;;
        backbones) bench 150 backbones backbones.csv --device cuda --sizes reference ;;
        saliency) bench 60 saliency saliency.csv --device cuda --repeats 10 ;;
        # the training-loop case at GPU speed (steps of about 12 ms): many short rounds, best kept
        loader) bench 120 loader loader.csv --device cuda --loop-steps 50 --rounds 10 ;;
        bank) bench 60 bank bank.csv ;;
        *) echo "unknown benchmark $name" | tee -a "$log" ;;
    esac
done
echo "== done: $out" | tee -a "$log"

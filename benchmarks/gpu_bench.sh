#!/usr/bin/env bash
# GPU throughput on a rented H100/H200 without network: the real inference engine (benchmarks/gpu_bench.py,
# the default) or another benchmark script of this folder given first. Run from anywhere:
#   bash benchmarks/gpu_bench.sh [gpu_bench.py options]
#   bash benchmarks/gpu_bench.sh bench_train_step.py --device cuda --config configs/unet_effb3.yaml \
#       --workers 1,2,4,8,12 --images 512 --warmup 5 --steps 25
# (training: unet_effb3 images/s with amp auto, data-wait share per loader worker count, peak memory).
# PYTHON selects the interpreter (default python3). Prints the machine and package versions first, then the
# runs, then ONE JSON line. Expected: ~1-3 minutes of device time each (inference: 512 images, 1 and 5
# models, 3 views, fp16; training: 5 worker counts x 30 batches of 16 crops, plus writing the images).
# Needs torch, numpy, opencv, pandas, tqdm, timm, huggingface_hub, safetensors, albumentations and smp on the
# device; steel_seg comes from this tree's src/. Pure-python packages the device lacks (smp, timm,
# huggingface_hub) can be carried from this repo's venv: any `.venv/lib/python*/site-packages` present in the
# tree is put on PYTHONPATH after src/ (carry only the package folders needed; compiled ones must match the
# device's python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

echo "== nvidia-smi"
nvidia-smi || echo "nvidia-smi: not available"
echo "== cpu: $(nproc) cores; $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB memory"}')"

EXTRA=""
for site in .venv/lib/python*/site-packages; do
    [ -d "$site" ] && EXTRA="$EXTRA:$PWD/$site"
done
export PYTHONPATH="$PWD/src$EXTRA"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONDONTWRITEBYTECODE=1

echo "== python and packages (PYTHONPATH=$PYTHONPATH)"
if ! command -v "$PY" >/dev/null; then
    echo "gpu_bench: no python interpreter '$PY' on this machine" >&2
    exit 2
fi
"$PY" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "torchvision", "numpy", "cv2", "pandas", "tqdm", "timm", "huggingface_hub", "safetensors",
             "albumentations", "segmentation_models_pytorch", "steel_seg"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')} from {module.__file__}")
    except Exception as exc:
        print(f"  {name}: MISSING ({type(exc).__name__}: {exc})")
try:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible to torch"
    print(f"  cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, {gpu}")
except Exception:
    pass
EOF

echo "== benchmark"
SCRIPT=benchmarks/gpu_bench.py
case "${1:-}" in
    *.py) SCRIPT="benchmarks/$(basename "$1")"; shift ;;
esac
exec "$PY" "$SCRIPT" "$@"

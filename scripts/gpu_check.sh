#!/usr/bin/env bash
# One-command GPU check, about 8 minutes on one H100: bash scripts/gpu_check.sh [OUT_FOLDER]
#
# Real-size models of every family, built from their released configs with random weights (no download):
#   1. the engine against the naive loop side by side on SD 1.5 at 512 px (python -m pipeline.bench --baseline naive);
#   2. per family, the cost model's predicted FLOPs and peak memory beside a real step's (python -m pipeline.bench.cost):
#      s/step, torch.cuda.max_memory_allocated, and the model-FLOP utilisation against a bf16 matmul timed in the run.
# It ends with one table (OUT_FOLDER/table.md); the JSON of every row stays beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

BF16=(model.dtype=bf16 model.device=cuda)
$PY -m pipeline.bench --size sd15 --steps 50 --batch-size 4 --iters 2 --plans "draft_k K=1" "drtune K=5" \
  --baseline naive --extra "${BF16[@]}" --json "$OUT/naive.json"
$PY -m pipeline.bench.cost --architecture sd15 --steps 50 --batch-size 4 --reward hpsv2 \
  --plans "draft_k K=1" "drtune K=5" --extra "${BF16[@]}" model.vae_checkpointing=true --json "$OUT/sd15.json"
$PY -m pipeline.bench.cost --architecture sdxl --steps 50 --reward hpsv2 --plans "drtune K=5 m=10" \
  --extra "${BF16[@]}" model.unet_checkpointing=true model.vae_checkpointing=true sampler.guidance_scale=5 \
  trainable.rank=16 --json "$OUT/sdxl.json"
$PY -m pipeline.bench.cost --architecture pixart-512 --steps 20 --batch-size 2 --plans "draft_k K=1" \
  --extra "${BF16[@]}" sampler.guidance_scale=4.5 --json "$OUT/pixart.json"
$PY -m pipeline.bench.cost --architecture sd35-medium --steps 28 --plans "drtune K=5" \
  --extra "${BF16[@]}" model.vae_checkpointing=true sampler.guidance_scale=4.5 --json "$OUT/sd35.json"
$PY -m pipeline.bench.cost --architecture flux-dev --steps 28 --plans "drtune K=5" \
  --extra "${BF16[@]}" model.resolution=512 model.vae_checkpointing=true sampler.guidance_scale=4 --json "$OUT/flux.json"

$PY - "$OUT" <<'EOF'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
gpu = (out / "gpu.txt").read_text().strip()
lines = [f"GPU: {gpu}", "", "| model | plan | s/step | TFLOP predicted / counted | GiB predicted / measured | MFU |",
         "|---|---|---|---|---|---|"]
for name in ("sd15", "sdxl", "pixart", "sd35", "flux"):
    for r in json.loads((out / f"{name}.json").read_text()):
        lines.append(
            f"| {name} | {r['plan']} | {r['s_per_step']:.2f} | {r['predicted_tflop']:.1f} / {r['measured_tflop']:.1f} "
            f"| {r['predicted_gib']:.1f} / {r['measured_gib']:.1f} | {100 * r['mfu']:.0f}% of {r['matmul_tflops']:.0f} |"
        )
naive = json.loads((out / "naive.json").read_text())
lines += ["", "engine against the naive loop (SD 1.5, 512 px, batch 4, T=50):", "```", json.dumps(naive, indent=1), "```"]
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

#!/usr/bin/env bash
# Issue 18's GPU measurements, in one call of at most 9 minutes on the lent GPU machine.
#
# Run it with ../shared/gpu/README.md's recipe (prepare.sh here, then call 1 `bash .gpu/partA/keep.sh` and at once
# call 2 `bash .gpu/partB/run.sh "bash benchmarks/gpu_check.sh"`); run.sh installs xmm with the image and device
# plugins and runs this from the project root. It prints, and writes under $OUT:
#   1. the align-image stage, xmm against a plain PyTorch loop, at batch 16 and at the auto batch: samples/s and the
#      fraction of the time the GPU was busy (goals: >= 2000 samples/s at the auto batch, busy >= 0.8), and the
#      fraction of xmm's step time spent waiting for data;            -> $OUT/trainer.json
#   2. `xmm demo` wall time (goal <= 90 s) with the GPU's busy fraction over it and the held-out table;
#                                                                      -> $OUT/demo.json, $OUT/demo.log
#   3. the model and training tests on CUDA (what time is left; tests/training holds the distributed and torchrun
#      tests, which pin themselves to CPU/gloo);                       -> $OUT/tests.txt
#   4. benchmarks/distributed_check.py on the one GPU (ddp, fsdp; ZeRO when deepspeed is there), if time is left.
#                                                                      -> $OUT/distributed.txt
# Each part has its own time limit, so a slow or failing part leaves the others their time.
set -u
export PYTHONUNBUFFERED=1 XMM_NO_PROGRESS=1
py=${PYTHON:-python3}
out=${OUT:-/tmp/xmm-gpu-check}
mkdir -p "$out"
start=$(date +%s)
budget=${GPU_CHECK_SECONDS:-530}
left() { echo $((budget - ($(date +%s) - start))); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'

echo "== 1. align-image: xmm and a plain loop at batch 16 and at the auto batch"
timeout 200 "$py" benchmarks/trainer.py --device cuda --images 3000 --steps 6 --json \
  --workdir /tmp/xmm-gpu-bench > "$out/trainer.json" 2> "$out/trainer.err"
echo "rc=$? ($(( $(date +%s) - start )) s so far)"
"$py" - "$out/trainer.json" <<'EOF' || tail -20 "$out/trainer.err"
import json, sys
res = json.load(open(sys.argv[1]))["speed"]
for label in ("batch16", "auto"):
    r = res[label]
    x, p = r["xmm"], r["plain"]
    print(f"{label:8s} xmm {x['samples_per_s']:>9.1f} samples/s (micro-batch {x.get('micro_batch', 16)}, "
          f"data wait {x['data_wait_frac']:.1%}, GPU busy {x['gpu_busy']})  plain {p['samples_per_s']:>9.1f} "
          f"samples/s (GPU busy {p['gpu_busy']})  xmm/plain time {r['xmm_over_plain']}")
print("goals:", res["goal"])
EOF

echo "== 2. xmm demo"
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 > "$out/demo_gpu_util.txt" 2>/dev/null &
smi=$!
t0=$(date +%s)
timeout 200 "$py" -m xmm.cli.main demo -o /tmp/xmm-gpu-demo --json > "$out/demo.json" 2> "$out/demo.log"
rc=$?
t1=$(date +%s)
kill "$smi" 2>/dev/null
echo "rc=$rc, xmm demo wall $((t1 - t0)) s (goal <= 90 s)"
"$py" - "$out/demo.json" "$out/demo_gpu_util.txt" <<'EOF' || tail -20 "$out/demo.log"
import json, sys
util = [float(x) for x in open(sys.argv[2]).read().split() if x.replace(".", "", 1).isdigit()]
if util:
    print(f"GPU busy over the demo: {sum(util) / len(util) / 100:.1%} ({len(util)} samples)")
res = json.load(open(sys.argv[1]))
for r in res["results"]:
    print(f"{r['modality']:8s} {r['task']:14s} before {r['before']:.3f} after {r['after']:.3f} n={r['n']}")
print("minutes_total", res["minutes_total"])
EOF
grep -h "^\[" "$out/demo.log" | tail -8

echo "== 3. model and training tests on CUDA ($(left) s left)"
if [ "$(left)" -gt 60 ]; then
  timeout "$(left)" "$py" -m pytest -q -p no:cacheprovider -n 8 --dist loadfile --xmm-device cuda \
    tests/model tests/training > "$out/tests.txt" 2>&1
  echo "rc=$?"
  tail -25 "$out/tests.txt"
else
  echo "skipped: no time left"
fi
echo "== 4. distributed strategies on this GPU (H2's check; $(left) s left)"
if [ "$(left)" -gt 45 ]; then
  timeout "$(left)" "$py" benchmarks/distributed_check.py --device cuda --nproc 1 --strategies ddp,fsdp,zero2,zero3 \
    > "$out/distributed.txt" 2>&1
  echo "rc=$?"
  tail -8 "$out/distributed.txt"
else
  echo "skipped: no time left"
fi
echo "total $(( $(date +%s) - start )) s"

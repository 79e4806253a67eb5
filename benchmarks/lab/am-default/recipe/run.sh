#!/bin/bash
# The embedded model's training run, on a GPU machine, from the repository root, with
# .gpu/ holding the Opus-packed corpus (pack.py: .gpu/train-K.ogg + .gpu/train.json, the
# same for dev) and wheels of soundfile, cffi, pycparser, jiwer and rapidfuzz (.gpu/whl).
# Computes the features, trains big.toml (the embedded model) and cont.toml (the previous
# CPU model continued) side by side to a shared time budget, and exports both.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchaudio; print(torch.__version__, torchaudio.__version__, torch.cuda.is_available())"
python3 benchmarks/lab/am-default/recipe/gpu_train.py features .gpu/train .gpu/dev /tmp/feats || exit 1
echo "features done at $(( $(date +%s) - T0 )) s"
# the whole command must end by LIMIT seconds: training gets what is left, less a
# minute for exports, and is stopped (it checkpoints on SIGTERM) 40 s after its budget
LIMIT=${LIMIT:-580}
LEFT=$(( LIMIT - ($(date +%s) - T0) ))
export BUDGET_MIN=$(python3 -c "print(round(($LEFT - 100) / 60, 2))")
echo "training budget $BUDGET_MIN min"
# cont.toml continued the model embedded then, the CPU-trained d-144 one
# (git show 390e5c3:fusion/models/am-default/model.pt); model.pt is now big.toml's result
timeout -s TERM $(( LEFT - 55 )) python3 benchmarks/lab/am-default/recipe/gpu_train.py train /tmp/feats benchmarks/lab/am-default/recipe/cont.toml /tmp/cont fusion/models/am-default/model.pt > $OUT/cont.log 2>&1 &
timeout -s TERM $(( LEFT - 55 )) python3 benchmarks/lab/am-default/recipe/gpu_train.py train /tmp/feats benchmarks/lab/am-default/recipe/big.toml /tmp/big > $OUT/big.log 2>&1 &
sleep 20; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait
echo "training done at $(( $(date +%s) - T0 )) s"
for r in cont big; do
  python3 benchmarks/lab/am-default/recipe/gpu_train.py export /tmp/$r $OUT/$r
  cp /tmp/$r/log.jsonl $OUT/$r-log.jsonl
done
tail -n 4 $OUT/cont.log $OUT/big.log
ls -la $OUT

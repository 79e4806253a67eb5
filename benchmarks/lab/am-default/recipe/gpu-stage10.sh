#!/bin/bash
# Stages 10, 12, 13, 14 and 18, step 2 (on a lent GPU machine, from the repository root): unpack
# what gpu-stage10-pack.sh put beside this script, synthesise fresh training speech on the
# machine's CPUs, continue the embedded model on its GPU (gpu_stage10.py), and leave the
# model in $OUT. Everything ends by LIMIT seconds (the call's limit is 600).
#   LIMIT=560 bash .dev/carry/gpu-stage10.sh
# Synthesis beside training (stage 14): LIMIT=575 SYNTH=420 CONFIG=.dev/carry/gpu-stage14.toml
#   EXTRA="--overlap --first-hours 4 --step-hours 3 --sources mhcc tdavid --from-hours 0"
#   (packed with TEXTS="mhcc tdavid"); the GPU trained from 57 s on, as the set grew 7.5 -> 36 h.
# Local dry run on a CPU: OUT=/tmp/o ROOT=/tmp/root NO_PIP=1 PY=.venv/bin/python
#   CONFIG=cpu.toml LIMIT=240 SYNTH=50 JOBS=2 EXTRA="--step-hours 0.05" bash ...
set -u
T0=$(date +%s)
C=$(dirname "$0")
LIMIT=${LIMIT:-560}
ROOT=${ROOT:-/}
PY=${PY:-python3}
CONFIG=${CONFIG:-$C/gpu-stage10.toml}
JOBS=${JOBS:-$(nproc)}
PACKED=""  # every Opus-packed set that travelled (pack.py's index beside its streams)
for f in $C/piper/train.json $C/rhvoice/train.json $C/pico/train.json; do
  [ -f "$f" ] && PACKED="$PACKED --packed ${f%.json}"
done
if [ -z "${NO_PIP:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $C/whl/*.whl || exit 1
fi
mkdir -p /tmp/site /tmp/home/text "$ROOT"
$PY $C/untar.py $C/py.tar.xz /tmp/site || exit 1
$PY $C/untar.py $C/tts-root.tar.xz "$ROOT" || exit 1
[ "$ROOT" = / ] && ldconfig
$PY -c "
import lzma, pathlib
for f in pathlib.Path('$C/text').glob('*.xz'):
    pathlib.Path('/tmp/home/text', f.stem).write_bytes(lzma.decompress(f.read_bytes()))
" || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 ASRFUSE_HOME=/tmp/home ASRFUSE_REAL_SPEECH=$C/real-speech.jsonl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
echo "cpus: $(nproc); $(which espeak-ng flite festival text2wave | tr '\n' ' ')"
LEFT=$(( LIMIT - ($(date +%s) - T0) ))
echo "set-up took $(( $(date +%s) - T0 )) s; $LEFT s left"
timeout -s INT $(( LEFT + 15 )) $PY $C/gpu_stage10.py --deadline $LEFT --synth-until ${SYNTH:-190} \
  --jobs $JOBS $PACKED --config $CONFIG --out $OUT ${EXTRA:-} > $OUT/stage10.log 2>&1
echo "stage10 rc $? at $(( $(date +%s) - T0 )) s"
grep -v "^\s*$" $OUT/stage10.log | tail -n 70
ls -la $OUT

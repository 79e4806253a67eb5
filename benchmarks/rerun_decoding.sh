#!/bin/bash
# Rebuild every input of the decoder and fusion benchmarks for the embedded acoustic model,
# then run both benchmarks: the committed decoder.* and fusion.* results come from this.
#
#   bash benchmarks/rerun_decoding.sh [MODEL]     (default: the embedded model)
#
# Steps (each skipped when its output is already there, so a killed run resumes; the
# posteriors and tuning folders are keyed by the model's digest, so a new model starts afresh):
#   1. the speech corpus's dev/test/unseen-voices splits ($H/corpus: `fusion data build`,
#      deterministic) and the LM text ($H/lm/text: `fusion lm text`, real speech excluded);
#   2. the word 4-gram and character 6-gram (`fusion lm build`, modified Kneser-Ney) and
#      the cmusphinx 3-gram as a KenLM binary;
#   3. posteriors of dev, test and test-unseen-voices (`fusion posteriors`);
#   4. fusion weights tuned on dev (`fusion tune --nlm none --hmm no`, with a sweep of the
#      unknown-word penalty, OOV_PENALTIES): each LM at beams 32, 8 and 128;
#   5. bench_decoder.py (flashlight's lexicon-free weights: LEXFREE_ALPHA/LEXFREE_BETA, by
#      default the best of an earlier `--tune-lexfree` dev grid; TUNE_LEXFREE=1 reruns that
#      grid) and bench_fusion.py (its own tuning, cached under $H/bench-fusion).
# Environment: H (default ~/.cache/asrfuse), PY (default .venv/bin/python), WORKERS (2),
# OOV_PENALTIES (default 0,2.5,5,10).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$(realpath --relative-to="$REPO" "${1:-$REPO/fusion/models/am-default/model.pt}")
cd "$REPO"
H=${H:-${ASRFUSE_HOME:-$HOME/.cache/asrfuse}}
PY=${PY:-$REPO/.venv/bin/python}
FUSION=${FUSION:-$(dirname "$PY")/fusion}
WORKERS=${WORKERS:-2}
OOV_PENALTIES=${OOV_PENALTIES:-0,2.5,5,10}
CMUSPHINX=$REPO/../shared/data/lm/cmusphinx-en-us.arpa.gz
DIGEST=$(sha256sum "$MODEL" | cut -c1-12)
W=$H/bench-decoder-$DIGEST
NG=$H/lm/ngram
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
step() { echo "[$(date +%T)] $*" >&2; }

# 1. corpus splits and LM text
if [ ! -f "$H/corpus/test-unseen-voices.jsonl" ]; then
  step "corpus splits -> $H/corpus"
  "$FUSION" data build --out "$H/corpus" --hours 0.02 --no-progress
fi
if [ ! -f "$H/lm/text/train.txt" ]; then
  step "LM text -> $H/lm/text"
  "$FUSION" lm text --out "$H/lm/text"
fi

# 2. n-grams
mkdir -p "$NG"
[ -f "$NG/word-4gram.bin" ] || {
  step "word 4-gram"
  "$FUSION" lm build "$H/lm/text/train.txt" -o "$NG/word-4gram.arpa" --order 4 --binary
}
[ -f "$NG/char-6gram.arpa" ] || {
  step "character 6-gram"
  "$FUSION" lm build "$H/lm/text/train.txt" -o "$NG/char-6gram.arpa" --order 6 --level char
}
[ -f "$NG/cmusphinx-en-us.bin" ] || {
  step "cmusphinx 3-gram binary"
  "$PY" -c "import sys; from lm.ngram import build_binary; build_binary(sys.argv[1], sys.argv[2])" \
    "$CMUSPHINX" "$NG/cmusphinx-en-us.bin"
}

# 3. posteriors
mkdir -p "$W"
for split in dev test test-unseen-voices; do
  [ -f "$W/$split.npz" ] || {
    step "posteriors: $split"
    "$FUSION" posteriors "$H/corpus/$split.jsonl" -o "$W/$split.npz.part.npz" --model "$MODEL" \
      --no-progress
    mv "$W/$split.npz.part.npz" "$W/$split.npz"
  }
done

# 4. tuning on dev (fusion tune resumes from its own log)
tune() {  # NAME LM VOCAB BEAM
  [ -f "$W/$1/best.toml" ] && return 0
  step "fusion tune: $1 (beam $4)"
  "$FUSION" tune "$W/dev.npz" --dev "$H/corpus/dev.jsonl" --lm "$2" --lm-vocab "$3" \
    -o "$W/$1" --beam-size "$4" --oov-penalties "$OOV_PENALTIES" --nlm none --hmm no \
    --workers "$WORKERS"
}
for beam in 32 8 128; do
  tune "tune-b$beam" "$NG/word-4gram.bin" "$NG/word-4gram.arpa" "$beam"
  tune "tune-cmu-b$beam" "$NG/cmusphinx-en-us.bin" "$CMUSPHINX" "$beam"
done

# 5. the benchmarks
LEXFREE=(--lexfree-alpha "${LEXFREE_ALPHA:-0.05}" --lexfree-beta "${LEXFREE_BETA:--1.0}")
[ -n "${TUNE_LEXFREE:-}" ] && LEXFREE=(--tune-lexfree "$W/dev.npz")
step "bench_decoder"
"$PY" benchmarks/bench_decoder.py --split "test=$W/test.npz" \
  --split "test-unseen-voices=$W/test-unseen-voices.npz" --manifests "$H/corpus" \
  --lm "$NG/word-4gram.arpa" --char-lm "$NG/char-6gram.arpa" \
  --tuned "ours-4gram=$W/tune-b32/best.toml" --tuned "ours-4gram=$W/tune-b8/best.toml" \
  --tuned "ours-4gram=$W/tune-b128/best.toml" --tuned "cmusphinx-3gram=$W/tune-cmu-b32/best.toml" \
  --tuned "cmusphinx-3gram=$W/tune-cmu-b8/best.toml" \
  --tuned "cmusphinx-3gram=$W/tune-cmu-b128/best.toml" \
  "${LEXFREE[@]}" --cmusphinx
step "bench_fusion"
"$PY" benchmarks/bench_fusion.py --model "$MODEL" --lm "$NG/word-4gram.bin" \
  --lm-vocab "$NG/word-4gram.arpa" --workers "$WORKERS"
step "done: benchmarks/results/decoder.* and fusion.*"

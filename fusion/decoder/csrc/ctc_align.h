// CTC forced alignment (Viterbi) of one unit sequence, for fusion.decoder.search's hypotheses.
//
// The same dynamic programme as torchaudio.functional.forced_align on the CPU (2.11): the
// same window of reachable states per frame, float32 arithmetic, the same tie-breaking
// and the same error when the frames are too few. Its ties, as its binary breaks them
// (checked against it on posteriors full of ties, tests/test_ctcalign.py): skip a blank
// only if strictly best; come from the previous state only if strictly better than both
// others; else stay, even where the previous state and the skip tie above staying (the
// path found is then not the best one); at the end, the last unit only if strictly
// better than the final blank. Then what BeamSearchDecoder._align did
// with its frame labels: one span per run of a non-blank label, paired with the units in
// order; and optionally span_confidences (fusion.core.types) of the spans: the mean posterior
// of each unit over its frames, summed as NumPy sums them. The posteriors come from the
// caller (NumPy's exp and the C library's differ in the last bit), so the confidences
// are span_confidences' to the bit.
// No Python here: ctc_search.cpp binds it.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace ctcalign {

struct Spans {
  std::vector<int32_t> start, end;  // [start, end) per unit, in frames
  std::vector<double> confidence;   // per unit, given the posteriors
};

// How a unit bears on word grouping (TokenTable.words_from_ids): an ordinary unit, the
// boundary unit (ends a word and belongs to none), or a unit that begins a new word
// (prefix-style tables: sentencepiece's "\u2581...").
enum WordKind : int8_t { kInWord = 0, kBoundary = 1, kStartsWord = 2 };

struct Words {
  std::vector<int32_t> first, last;  // each word's first and last unit (indices into units)
};

// The words of a blank-free unit sequence, as TokenTable.words_from_ids groups them
// (boundary units dropped, no empty words), as unit index ranges; ``kind`` per unit id.
inline Words group_words(const int32_t* units, int64_t L, const int8_t* kind, int64_t V) {
  Words out;
  int32_t open = -1;  // first unit of the word being read, or none
  for (int32_t j = 0; j < static_cast<int32_t>(L); ++j) {
    const int32_t u = units[j];
    if (u < 0 || u >= V) throw std::invalid_argument("unit out of range of the word kinds");
    const int8_t k = kind[u];
    if (k == kBoundary || (k == kStartsWord && open >= 0)) {
      if (open >= 0) {
        out.first.push_back(open);
        out.last.push_back(j - 1);
      }
      open = k == kBoundary ? -1 : j;
    } else if (open < 0) {
      open = j;
    }
  }
  if (open >= 0) {
    out.first.push_back(open);
    out.last.push_back(static_cast<int32_t>(L) - 1);
  }
  return out;
}

// One frame of the trellis: states [lo, hi) of frame t in ``cur`` from frame t - 1 in
// ``prev`` (both indexed by state; ``prev`` is read on [lo - 2, hi) only), within the
// window [start, end) of reachable states: cells outside it are -inf and keep the
// back-pointer -1 (torchaudio leaves them unwritten). ``bp`` (indexed by state, may be
// null) gets each cell's move: 0 stay, 1 from the previous state, 2 skip a blank.
// ``labels``: each state's unit (blank at even states); ``skips``: whether a state may
// be entered by skipping the blank before it (a unit other than the one before).
inline void trellis_row(const float* prev, float* cur, int8_t* bp, const float* row,
                        const int32_t* labels, const uint8_t* skips, int64_t lo, int64_t hi,
                        int64_t start, int64_t end) {
  const float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t from = std::max(lo, start), to = std::min(hi, end);
  for (int64_t i = lo; i < std::min(from, hi); ++i) cur[i] = kNegInf;
  for (int64_t i = std::max(to, lo); i < hi; ++i) cur[i] = kNegInf;
  if (bp != nullptr) {
    for (int64_t i = lo; i < std::min(from, hi); ++i) bp[i] = -1;
    for (int64_t i = std::max(to, lo); i < hi; ++i) bp[i] = -1;
  }
  int64_t i = from;
  if (i == 0 && i < to) {
    cur[0] = prev[0] + row[labels[0]];
    if (bp != nullptr) bp[0] = 0;
    i = 1;
  }
  for (; i < to; ++i) {
    const float x0 = prev[i], x1 = prev[i - 1];
    const float x2 = skips[i] ? prev[i - 2] : kNegInf;
    // x1 == x2 > x0 takes x0, as torchaudio does
    const int8_t move = x2 > x1 && x2 > x0 ? 2 : x1 > x0 && x1 > x2 ? 1 : 0;
    const float best = move == 2 ? x2 : move == 1 ? x1 : x0;
    if (bp != nullptr) bp[i] = move;
    cur[i] = best + row[labels[i]];
  }
}

// Back-pointers kept at most (T x (2L + 1) cells) before viterbi checkpoints: 16 MiB.
constexpr int64_t kFullTrellisCells = int64_t{1} << 24;

// The frame labels of the best CTC path of ``targets`` through ``lp`` (T x V, row-major):
// torchaudio's forced_align_impl, batch of one. ``path`` gets T labels.
//
// Memory is linear in the length: where the T x S back-pointers (S = 2L + 1) would exceed
// kFullTrellisCells (or ``block`` > 0 asks for it), the forward pass keeps only every
// block-th row of scores (checkpoints), and the back-trace recomputes one block of frames
// at a time from its checkpoint, in a band of states: going back from state s at the
// block's last frame, a path moves down at most 2 states a frame, so frame u of the block
// needs back-pointers of states [s - 2 (last - u), s] only, and those need the scores of
// that band alone. Same arithmetic on the same values: the same path, ties included.
// With block = cbrt(T S): about 4 T S / block bytes of checkpoints and 2 block^2 bytes of
// back-pointers (30 minutes at 25 ms with 22k units: 10 MB, against 3.2 GB kept whole),
// and the recomputation costs about T x block cells more than the T x S forward pass.
inline void viterbi(const float* lp, int64_t T, int64_t V, const int32_t* targets, int64_t L,
                    int32_t blank, std::vector<int32_t>& path, int64_t block = 0) {
  if (blank < 0 || blank >= V) throw std::invalid_argument("blank must be within [0, num classes)");
  if (L < 1) throw std::invalid_argument("targets must not be empty");
  for (int64_t i = 0; i < L; ++i) {
    if (targets[i] == blank)
      throw std::invalid_argument("targets must not contain the blank id " + std::to_string(blank));
    if (targets[i] < 0 || targets[i] >= V)
      throw std::invalid_argument("targets values must be in [0, " + std::to_string(V) + ")");
  }
  int64_t R = 0;  // repeats: each needs a blank frame between
  for (int64_t i = 1; i < L; ++i) R += targets[i] == targets[i - 1];
  if (T < L + R)
    throw std::runtime_error("targets length is too long for CTC. Found log_probs length: " +
                             std::to_string(T) + ", targets length: " + std::to_string(L) +
                             ", and number of repeats: " + std::to_string(R));
  const float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t S = 2 * L + 1;
  if (block <= 0) {
    if (T * S <= kFullTrellisCells) {
      block = T;
    } else {
      block = static_cast<int64_t>(std::cbrt(static_cast<double>(T) * static_cast<double>(S)));
      block = std::max<int64_t>(block, 16);
    }
  }
  const bool whole = block >= T - 1;  // one block: back-pointers kept in the forward pass
  // the window [start, end) of reachable states of each frame, as torchaudio moves it
  std::vector<int64_t> starts(static_cast<size_t>(T)), ends(static_cast<size_t>(T));
  {
    int64_t start = T - (L + R) > 0 ? 0 : 1, end = S == 1 ? 1 : 2;
    starts[0] = start;
    ends[0] = end;
    for (int64_t t = 1; t < T; ++t) {
      if (T - t <= L + R) {
        if (start % 2 == 1 && targets[start / 2] != targets[start / 2 + 1]) ++start;
        ++start;
      }
      if (t <= L + R) {
        if (end % 2 == 0 && end < 2 * L && targets[end / 2 - 1] != targets[end / 2]) ++end;
        ++end;
      }
      starts[t] = start;
      ends[t] = end;
    }
  }
  std::vector<int32_t> labels(static_cast<size_t>(S), blank);
  std::vector<uint8_t> skips(static_cast<size_t>(S), 0);
  for (int64_t i = 1; i < S; i += 2) {
    labels[i] = targets[i / 2];
    skips[i] = i != 1 && targets[i / 2] != targets[i / 2 - 1];
  }
  std::vector<float> alphas(2 * S, kNegInf);
  auto label = [&](int64_t i) { return labels[i]; };
  for (int64_t i = starts[0]; i < ends[0]; ++i) alphas[i] = lp[label(i)];
  std::vector<int8_t> back;  // whole: T x S; else one block's band, (frames x width)
  std::vector<float> checkpoints;  // the scores of frames 0, block, 2 block, ... (not whole)
  if (whole) {
    back.assign(static_cast<size_t>(T * S), -1);
  } else {
    checkpoints.reserve(static_cast<size_t>(((T - 2) / block + 1) * S));
    checkpoints.insert(checkpoints.end(), alphas.begin(), alphas.begin() + S);
  }
  for (int64_t t = 1; t < T; ++t) {
    float* cur = &alphas[(t % 2) * S];
    trellis_row(&alphas[((t - 1) % 2) * S], cur, whole ? &back[t * S] : nullptr, lp + t * V,
                labels.data(), skips.data(), 0, S, starts[t], ends[t]);
    if (!whole && t % block == 0 && t < T - 1) checkpoints.insert(checkpoints.end(), cur, cur + S);
  }
  const float* last = &alphas[((T - 1) % 2) * S];
  int64_t state = last[S - 1] > last[S - 2] ? S - 1 : S - 2;
  // every path -inf: torchaudio's back-pointers then lead anywhere, out of bounds too
  // (an IndexError, or made-up frames); ours says so
  const char* none = "no alignment of finite score: the posteriors rule out these targets";
  if (last[state] == kNegInf) throw std::runtime_error(none);
  path.resize(static_cast<size_t>(T));
  if (whole) {
    for (int64_t t = T - 1; t >= 0; --t) {
      if (state < 0 || state >= S) throw std::runtime_error(none);  // NaNs in lp can do it
      path[t] = label(state);
      state -= back[t * S + state];
    }
    return;
  }
  // back-trace, one block of frames (c, top] at a time, c a checkpoint
  std::vector<float> band(2 * S, kNegInf);
  for (int64_t top = T - 1; top > 0;) {
    if (state < 0 || state >= S) throw std::runtime_error(none);
    const int64_t c = (top - 1) / block * block;
    const float* first = &checkpoints[(c / block) * S];
    // the band of states at frame u: [state - 2 (top - u), state]; the whole trellis when
    // the path leaves it (a -1 back-pointer moves up: only NaNs in lp lead there)
    bool wide = false;
    for (;;) {
      const int64_t hi = wide ? S : state + 1;
      auto lo_at = [&](int64_t u) { return wide ? int64_t{0} : std::max<int64_t>(0, state - 2 * (top - u)); };
      const int64_t base = lo_at(c), width = hi - base;
      back.assign(static_cast<size_t>((top - c) * width), -1);
      const float* prev = first;
      for (int64_t u = c + 1; u <= top; ++u) {
        float* cur = &band[(u % 2) * S];
        // the row's back-pointers, indexed by state
        int8_t* bp = back.data() + (u - c - 1) * width - base;
        trellis_row(prev, cur, bp, lp + u * V, labels.data(), skips.data(), lo_at(u), hi, starts[u],
                    ends[u]);
        prev = cur;
      }
      int64_t s = state, u = top;
      for (; u > c; --u) {
        if (s < lo_at(u) || s >= hi) break;
        path[u] = label(s);
        s -= back[(u - c - 1) * width + s - base];
      }
      if (u == c) {
        state = s;
        break;
      }
      if (wide || s < 0 || s >= S) throw std::runtime_error(none);
      wide = true;
    }
    top = c;
  }
  if (state < 0 || state >= S) throw std::runtime_error(none);
  path[0] = label(state);
}

// The spans of ``targets`` in ``lp``: one per run of a non-blank frame label, in order
// (as many as both have); given ``probs`` (T x V, the posteriors: exp of ``lp`` in
// float64, as NumPy computes it), each one's confidence too.
inline Spans align(const float* lp, int64_t T, int64_t V, const int32_t* targets, int64_t L,
                   int32_t blank, const double* probs, int64_t block = 0) {
  std::vector<int32_t> path;
  viterbi(lp, T, V, targets, L, blank, path, block);
  Spans out;
  for (int64_t t = 0; t < T && static_cast<int64_t>(out.start.size()) < L;) {
    int64_t e = t + 1;
    while (e < T && path[e] == path[t]) ++e;
    if (path[t] != blank) {
      out.start.push_back(static_cast<int32_t>(t));
      out.end.push_back(static_cast<int32_t>(e));
    }
    t = e;
  }
  if (probs != nullptr) {
    // span_confidences: a unit's column summed from frame 0 (np.cumsum adds in order),
    // its span's sum a difference of two such sums; one running sum per distinct unit
    const int64_t upto = out.end.empty() ? 0 : out.end.back();  // spans come in order
    std::vector<int64_t> filled(static_cast<size_t>(V), -1);  // unit -> its sums' offset
    std::vector<double> sums;
    for (size_t j = 0; j < out.start.size(); ++j) {
      const int32_t u = targets[j];
      if (filled[u] < 0) {
        filled[u] = static_cast<int64_t>(sums.size());
        sums.resize(sums.size() + upto + 1);
        double* c = &sums[filled[u]];
        c[0] = 0.0;
        for (int64_t t = 0; t < upto; ++t) c[t + 1] = c[t] + probs[t * V + u];
      }
      const double* c = &sums[filled[u]];
      const int32_t s = out.start[j], e = out.end[j];
      out.confidence.push_back((c[e] - c[s]) / static_cast<double>(e - s));
    }
  }
  return out;
}

}  // namespace ctcalign

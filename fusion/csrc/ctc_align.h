// CTC forced alignment (Viterbi) of one unit sequence, for fusion.decoder's hypotheses.
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
// order; and optionally span_confidences (fusion.types) of the spans: the mean posterior
// of each unit over its frames, summed as NumPy sums them. The posteriors come from the
// caller (NumPy's exp and the C library's differ in the last bit), so the confidences
// are span_confidences' to the bit.
// No Python here: ctc_search.cpp binds it.

#pragma once

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

// The frame labels of the best CTC path of ``targets`` through ``lp`` (T x V, row-major):
// torchaudio's forced_align_impl, batch of one. ``path`` gets T labels.
inline void viterbi(const float* lp, int64_t T, int64_t V, const int32_t* targets, int64_t L,
                    int32_t blank, std::vector<int32_t>& path) {
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
  std::vector<float> alphas(2 * S, kNegInf);
  std::vector<int8_t> back(static_cast<size_t>(T * S), -1);
  auto label = [&](int64_t i) { return i % 2 == 0 ? blank : targets[i / 2]; };
  int64_t start = T - (L + R) > 0 ? 0 : 1;
  int64_t end = S == 1 ? 1 : 2;
  for (int64_t i = start; i < end; ++i) alphas[i] = lp[label(i)];
  for (int64_t t = 1; t < T; ++t) {
    if (T - t <= L + R) {
      if (start % 2 == 1 && targets[start / 2] != targets[start / 2 + 1]) ++start;
      ++start;
    }
    if (t <= L + R) {
      if (end % 2 == 0 && end < 2 * L && targets[end / 2 - 1] != targets[end / 2]) ++end;
      ++end;
    }
    const float* row = lp + t * V;
    float* cur = &alphas[(t % 2) * S];
    const float* prev = &alphas[((t - 1) % 2) * S];
    int8_t* bp = &back[t * S];
    std::fill(cur, cur + S, kNegInf);
    int64_t loop = start;
    if (start == 0) {
      cur[0] = prev[0] + row[blank];
      bp[0] = 0;
      loop = 1;
    }
    for (int64_t i = loop; i < end; ++i) {
      const float x0 = prev[i], x1 = prev[i - 1];
      float x2 = kNegInf;
      if (i % 2 != 0 && i != 1 && targets[i / 2] != targets[i / 2 - 1]) x2 = prev[i - 2];
      float best;
      if (x2 > x1 && x2 > x0) {
        best = x2;
        bp[i] = 2;
      } else if (x1 > x0 && x1 > x2) {  // x1 == x2 > x0 takes x0, as torchaudio does
        best = x1;
        bp[i] = 1;
      } else {
        best = x0;
        bp[i] = 0;
      }
      cur[i] = best + row[label(i)];
    }
  }
  const float* last = &alphas[((T - 1) % 2) * S];
  int64_t state = last[S - 1] > last[S - 2] ? S - 1 : S - 2;
  // every path -inf: torchaudio's back-pointers then lead anywhere, out of bounds too
  // (an IndexError, or made-up frames); ours says so
  const char* none = "no alignment of finite score: the posteriors rule out these targets";
  if (last[state] == kNegInf) throw std::runtime_error(none);
  path.resize(static_cast<size_t>(T));
  for (int64_t t = T - 1; t >= 0; --t) {
    if (state < 0 || state >= S) throw std::runtime_error(none);  // NaNs in lp can do it
    path[t] = label(state);
    state -= back[t * S + state];
  }
}

// The spans of ``targets`` in ``lp``: one per run of a non-blank frame label, in order
// (as many as both have); given ``probs`` (T x V, the posteriors: exp of ``lp`` in
// float64, as NumPy computes it), each one's confidence too.
inline Spans align(const float* lp, int64_t T, int64_t V, const int32_t* targets, int64_t L,
                   int32_t blank, const double* probs) {
  std::vector<int32_t> path;
  viterbi(lp, T, V, targets, L, blank, path);
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

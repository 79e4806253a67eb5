// The compiled search of fusion.decoder.search.BeamSearchDecoder (module fusion.decoder._ctcsearch).
//
// Its Python counterpart, line for line, is the tests' oracle (tests/search_oracle.py,
// PythonSearchDecoder): the same candidate units per frame in the same order, the same
// pruning bounds, the same order of floating-point operations (tests/test_ctcsearch.py
// compares them). Scorers describe themselves (fusion.decoder.scorers.WordScorer.compiled): a
// word-level KenLM n-gram (LMScorer over fusion's KenLM, with its partial-word estimate),
// WordBonus, LexiconScorer (constraint or OOV penalty, with its optional partial-word
// penalty) and HotwordScorer (its Aho-Corasick automaton) run natively; any other scorer
// (a neural LM) is called back with the GIL taken (Kind::kPython). The Python decoder
// turns what the search returns into hypotheses.
// Thresholds on log-probabilities compare in float32, as NumPy does with float32 arrays.
//
// Per utterance, KenLM states are interned (an int per distinct state) and each
// (scorer, state, word) completion is scored once; partial words follow character tries
// (the LM's unigrams, the lexicon, the words that continue a hotword match) one unit at
// a time instead of being looked up as strings, and a prefix's children are found by
// index. The GIL is released during a search; one searcher runs one search at a time.
//
// The module also aligns hypotheses to their frames (``align``, ctc_align.h): the forced
// alignment the decoder gives every hypothesis its times and confidences with.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/stat.h>  // stat: a changed n-gram file is loaded anew

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "ctc_align.h"
#include "lm/model.hh"
#include "lm/state.hh"
#include "lm/virtual_interface.hh"

namespace py = pybind11;

namespace {

// A KenLM file loaded once while any searcher holds it: fusion tune makes a searcher for
// every trial, and an ARPA file would otherwise be parsed again each time. A file
// rewritten in place (other size or time) is loaded anew.
std::shared_ptr<lm::base::Model> load_kenlm(const std::string& path) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<lm::base::Model>> loaded;
  std::string key = path;
  struct stat st {};
  if (stat(path.c_str(), &st) == 0)
    key += "|" + std::to_string(st.st_size) + "|" + std::to_string(st.st_mtime);
  std::lock_guard<std::mutex> lock(mu);
  if (auto model = loaded[key].lock()) return model;
  lm::ngram::Config config;
  config.messages = nullptr;
  std::shared_ptr<lm::base::Model> model(lm::ngram::LoadVirtual(path.c_str(), config));
  loaded[key] = model;
  return model;
}

constexpr double NEG_INF = -std::numeric_limits<double>::infinity();

// log(exp(a) + exp(b)), -inf safe: search_oracle._lae.
inline double lae(double a, double b) {
  if (a < b) std::swap(a, b);
  if (b == NEG_INF) return a;
  return a + std::log1p(std::exp(b - a));
}

// A character trie over byte strings; node 0 is the root, -1 is "no such prefix". Built
// with a hash map, then laid out flat: each node's children sorted by byte, side by side.
class Trie {
 public:
  explicit Trie(const std::vector<std::string>& words) {
    std::unordered_map<uint64_t, int32_t> next;
    std::vector<uint8_t> is_word(1, 0);
    for (const auto& w : words) {
      if (w.empty()) continue;
      int32_t node = 0;
      for (unsigned char c : w) {
        uint64_t key = (static_cast<uint64_t>(node) << 8) | c;
        auto it = next.find(key);
        if (it == next.end()) {
          int32_t child = static_cast<int32_t>(is_word.size());
          is_word.push_back(0);
          next.emplace(key, child);
          node = child;
        } else {
          node = it->second;
        }
      }
      is_word[node] = 1;
    }
    const size_t n = is_word.size();
    std::vector<std::pair<uint64_t, int32_t>> edges(next.begin(), next.end());
    std::sort(edges.begin(), edges.end());  // by parent, then byte
    first_.assign(n + 1, 0);
    for (const auto& e : edges) ++first_[(e.first >> 8) + 1];
    for (size_t i = 0; i < n; ++i) first_[i + 1] += first_[i];
    bytes_.reserve(edges.size());
    child_.reserve(edges.size());
    for (const auto& e : edges) {
      bytes_.push_back(static_cast<uint8_t>(e.first & 0xff));
      child_.push_back(e.second);
    }
    is_word_ = std::move(is_word);
  }
  int32_t walk(int32_t node, const std::string& s) const {
    for (unsigned char c : s) {
      if (node < 0) return -1;
      int32_t found = -1;
      for (int32_t e = first_[node], end = first_[node + 1]; e < end; ++e)
        if (bytes_[e] == c) {
          found = child_[e];
          break;
        }
      node = found;
    }
    return node;
  }
  bool is_word(int32_t node) const { return node >= 0 && is_word_[node]; }
  int32_t size() const { return static_cast<int32_t>(is_word_.size()); }

 private:
  std::vector<int32_t> first_;  // node -> its first edge; first_[n] = number of edges
  std::vector<uint8_t> bytes_;
  std::vector<int32_t> child_;
  std::vector<uint8_t> is_word_;
};

struct StateHash {
  size_t operator()(const lm::ngram::State& s) const { return lm::ngram::hash_value(s); }
};

struct WordKey {
  int32_t state;
  std::string word;
  bool operator==(const WordKey& o) const { return state == o.state && word == o.word; }
};
struct WordKeyHash {
  size_t operator()(const WordKey& k) const {
    return std::hash<std::string>()(k.word) * 1000003u ^ static_cast<size_t>(k.state);
  }
};

enum class Kind { kKenLM, kBonus, kLexicon, kHotwords, kPython };

// One scorer: what it needs to score words and partial words.
struct Scorer {
  Kind kind;
  double weight = 0.0;
  // kKenLM
  std::shared_ptr<lm::base::Model> model;
  std::unique_ptr<Trie> prefixes;  // the LM's unigrams, for the partial-word estimate
  double unk_score = 0.0;
  double ln10 = std::log(10.0);
  // lm.ngram.KenLM's rule: a model without <unk> (KenLM puts log10 -100 there) scores an
  // unknown word at KenLM.missing_unk_log10 (None: KenLM's -100 stays)
  bool unk_missing = false;
  double missing_unk_log10 = -10.0;
  double word_log10(const lm::ngram::State& in, lm::WordIndex index, lm::ngram::State& out) const {
    const double log10 = static_cast<double>(model->BaseScore(&in, index, &out));
    return unk_missing && index == 0 ? missing_unk_log10 : log10;
  }
  // kLexicon: its words; a constraint, or an OOV penalty that with ``partial`` charges -1
  // to a word in progress no listed word starts with (LexiconScorer.partial_score)
  std::unique_ptr<Trie> words;
  bool constraint = false;
  bool partial = false;
  // kHotwords: fusion.decoder.scorers.HotwordScorer's Aho-Corasick automaton over words (the state
  // is a node), and per node a trie of the words that continue it with, at each trie
  // node, the best bonus of a word through it (its partial-word estimate)
  std::vector<std::unordered_map<std::string, int32_t>> go;
  std::vector<int32_t> fail;
  std::vector<double> bonus;
  std::vector<uint8_t> final;
  std::vector<Trie> cont;
  std::vector<std::vector<double>> best;
  // kPython: a fusion.decoder.scorers.WordScorer called back (the GIL taken for each call): its
  // word scores in one score_words call per frame, its states interned as ints (PyStates);
  // with ``prefixes`` (LMScorer over any LM), its partial-word estimate is the KenLM kind's
  // rule, else partial_score is called back (``py_partial``), per state where it uses one.
  // A constraint (``constraint``) is asked accepts / viable_prefix.
  py::object py;
  bool py_partial = false;
  bool py_partial_state = false;
  // where this scorer keeps its partial-word trie positions in a prefix's slots
  int slot = -1;
};

// The states of the Python scorers in an utterance, interned as ints; a copy (a stream's
// snapshot) gets an index of its own. Touched only with the GIL held.
struct PyStates {
  std::vector<py::object> states;
  py::dict index;
  PyStates() = default;
  PyStates(const PyStates& o)
      : states(o.states), index(py::reinterpret_steal<py::dict>(PyDict_Copy(o.index.ptr()))) {}
  PyStates& operator=(const PyStates& o) {
    if (this != &o) {
      states = o.states;
      index = py::reinterpret_steal<py::dict>(PyDict_Copy(o.index.ptr()));
    }
    return *this;
  }
  int32_t intern(const py::handle& state) {
    PyObject* hit = PyDict_GetItemWithError(index.ptr(), state.ptr());
    if (hit != nullptr) return py::cast<int32_t>(py::handle(hit));
    if (PyErr_Occurred()) throw py::error_already_set();
    const auto id = static_cast<int32_t>(states.size());
    states.push_back(py::reinterpret_borrow<py::object>(state));
    index[state] = id;
    return id;
  }
};

// Per-utterance bookkeeping of one prefix: search_oracle._Prefix.
struct Info {
  bool valid = true;
  std::string partial;
  double fused = 0.0;
  double pterm = 0.0;
};

struct Beam {
  int32_t id;
  int32_t last;
  double p_b;
  double p_nb;
};

struct Final {
  std::vector<int32_t> units;
  double acoustic;
  std::vector<double> scores;
  double fused;
};

class Searcher {
 public:
  Searcher(const std::vector<std::string>& spellings, const std::vector<std::optional<std::string>>& starts,
           int blank, int boundary, double w_ac, int beam_size, double beam_threshold,
           int token_top_k, double token_min_logprob, std::optional<double> blank_skip, int nbest,
           const py::list& scorers, bool floor_every_label = false, bool split_blank_ends = false,
           bool recombine = false)
      : spellings_(spellings), starts_(starts), blank_(blank), boundary_(boundary), w_ac_(w_ac),
        beam_size_(beam_size), nbest_(nbest), beam_threshold_(beam_threshold), top_k_(token_top_k),
        min_lp_(static_cast<float>(token_min_logprob)), floor_all_(floor_every_label),
        split_(split_blank_ends), recombine_(recombine) {
    vocab_ = static_cast<int>(spellings_.size());
    if (static_cast<int>(starts_.size()) != vocab_)
      throw std::invalid_argument("starts and spellings differ in length");
    if (blank_ < 0 || blank_ >= vocab_) throw std::invalid_argument("blank id out of range");
    has_skip_ = blank_skip.has_value();
    if (has_skip_) skip_lp_ = static_cast<float>(std::log(*blank_skip));
    for (auto item : scorers) {
      auto d = item.cast<py::dict>();
      auto kind = d["kind"].cast<std::string>();
      Scorer s;
      s.weight = d["weight"].cast<double>();
      if (kind == "kenlm") {
        s.kind = Kind::kKenLM;
        s.model = load_kenlm(d["path"].cast<std::string>());
        {
          lm::ngram::State null, out;
          s.model->NullContextWrite(&null);
          const bool raw = d.contains("missing_unk_log10") && d["missing_unk_log10"].is_none();
          s.unk_missing = !raw && s.model->BaseScore(&null, 0, &out) == -100.0f;
          if (s.unk_missing && d.contains("missing_unk_log10"))
            s.missing_unk_log10 = d["missing_unk_log10"].cast<double>();
        }
        if (!d["unigrams"].is_none()) {
          s.prefixes = std::make_unique<Trie>(d["unigrams"].cast<std::vector<std::string>>());
          lm::ngram::State begin, out;
          s.model->BeginSentenceWrite(&begin);
          s.unk_score = s.word_log10(begin, s.model->BaseVocabulary().Index(std::string("<unk>")), out) * s.ln10;
        }
      } else if (kind == "bonus") {
        s.kind = Kind::kBonus;
      } else if (kind == "lexicon") {
        s.kind = Kind::kLexicon;
        s.words = std::make_unique<Trie>(d["words"].cast<std::vector<std::string>>());
        s.constraint = d["constraint"].cast<bool>();
        s.partial = d.contains("partial") && d["partial"].cast<bool>();
      } else if (kind == "hotwords") {
        s.kind = Kind::kHotwords;
        s.go = d["goto"].cast<std::vector<std::unordered_map<std::string, int32_t>>>();
        s.fail = d["fail"].cast<std::vector<int32_t>>();
        s.bonus = d["bonus"].cast<std::vector<double>>();
        for (bool f : d["final"].cast<std::vector<bool>>()) s.final.push_back(f);
        const size_t n = s.go.size();
        if (s.fail.size() != n || s.bonus.size() != n || s.final.size() != n)
          throw std::invalid_argument("hotwords: goto, fail, bonus and final differ in length");
        for (size_t node = 0; node < n; ++node) {
          std::vector<std::string> words;
          for (const auto& [word, child] : s.go[node]) words.push_back(word);
          s.cont.emplace_back(words);
          std::vector<double> best(s.cont.back().size(), 0.0);
          for (const auto& [word, child] : s.go[node]) {
            int32_t pos = 0;
            for (char c : word) {
              pos = s.cont.back().walk(pos, std::string(1, c));
              best[pos] = std::max(best[pos], s.bonus[child]);
            }
          }
          s.best.push_back(std::move(best));
        }
      } else if (kind == "python") {
        s.kind = Kind::kPython;
        s.py = d["scorer"];
        s.constraint = d["constraint"].cast<bool>();
        if (d.contains("unigrams") && !d["unigrams"].is_none()) {
          s.prefixes = std::make_unique<Trie>(d["unigrams"].cast<std::vector<std::string>>());
          s.unk_score = d["unk_score"].cast<double>();
        } else {
          s.py_partial = d["partial"].cast<bool>();
          s.py_partial_state = d["partial_uses_state"].cast<bool>();
        }
      } else {
        throw std::invalid_argument("unknown scorer kind " + kind);
      }
      scorers_.push_back(std::move(s));
    }
    // the trie positions a prefix keeps (slots): one per LM with unigrams and per lexicon
    // constraint or partial-word penalty, two per hotword scorer (in its state's trie and
    // in the root's)
    for (size_t i = 0; i < scorers_.size(); ++i) {
      Scorer& sc = scorers_[i];
      const bool lexicon = sc.kind == Kind::kLexicon, python = sc.kind == Kind::kPython;
      if (sc.kind == Kind::kKenLM || sc.kind == Kind::kHotwords || (lexicon && sc.partial) ||
          (python && (sc.prefixes || sc.py_partial)))
        partial_.push_back(i);
      if ((lexicon || python) && sc.constraint) constraints_.push_back(i);
      if (python) python_.push_back(i);
      spelled_ = spelled_ || (python && !sc.prefixes && sc.py_partial);
      int used = ((sc.kind == Kind::kKenLM || python) && sc.prefixes) ||
                         (lexicon && (sc.constraint || sc.partial))
                     ? 1 : sc.kind == Kind::kHotwords ? 2 : 0;
      if (used) {
        sc.slot = static_cast<int>(n_slots_);
        n_slots_ += used;
      }
    }
    // an upper bound of every partial-word term (none: +inf), summed as partial_term sums
    // (rounding is monotone): an LM's term is 0 or its weighted <unk> score, a lexicon's
    // 0 or its weight times -1
    for (size_t i : partial_) {
      const Scorer& sc = scorers_[i];
      if (sc.kind == Kind::kHotwords || (sc.kind == Kind::kPython && !sc.prefixes)) {
        pt_bound_ = std::numeric_limits<double>::infinity();  // none known
        break;
      }
      if (sc.kind == Kind::kLexicon)
        pt_bound_ += std::max(sc.weight * 0.0, sc.weight * -1.0);
      else
        pt_bound_ += sc.prefixes == nullptr ? sc.weight * 0.0 : std::max(sc.weight * 0.0, sc.weight * sc.unk_score);
    }
    letter_.resize(vocab_);
    for (int u = 0; u < vocab_; ++u) letter_[u] = !starts_[u].has_value();
    py_accepts_.resize(scorers_.size());
    py_viable_.resize(scorers_.size());
  }

  // One utterance at once: begin, step over every frame, end. The tables are emptied
  // afterwards (their capacity kept), so that a copy of the searcher (stream) is cheap.
  std::vector<Final> search(const float* lp, int64_t n_frames, int64_t vocab) {
    if (vocab != vocab_) throw std::invalid_argument("posteriors and token table differ in width");
    begin();
    step(lp, n_frames, vocab);
    std::vector<Final> out = end();
    reset();
    return out;
  }

  // Start an utterance: the root prefix is the only beam.
  void begin() {
    reset();
    new_prefix(-1, -1);
    for (size_t i = 0; i < scorers_.size(); ++i) states_.push_back(start_state(i));
    for (size_t i = 0; i < scorers_.size(); ++i) scores_.push_back(0.0);
    for (size_t j = 0; j < n_slots_; ++j) nodes_.push_back(0);
    beams_.assign(1, Beam{0, -1, 0.0, NEG_INF});
  }

  // The end of the utterance: each beam's last word completed, end-of-utterance scores
  // added, the N best. The beams stay (finishing twice gives the same).
  std::vector<Final> end() { return finish(beams_); }

  // Frames taken since begin().
  int64_t frames() const { return frames_; }

  // The best beam so far by the total the search ranks by (no end-of-utterance scores; the
  // word in progress counts by its partial-word estimate): its units and that total.
  std::pair<std::vector<int32_t>, double> best() const {
    size_t top = 0;
    double top_total = NEG_INF;
    for (size_t j = 0; j < beams_.size(); ++j) {
      const Info& info = infos_[beams_[j].id];
      const double total = w_ac_ * lae(beams_[j].p_b, beams_[j].p_nb) + info.fused + info.pterm;
      if (j == 0 || total > top_total) {
        top = j;
        top_total = total;
      }
    }
    std::vector<int32_t> units;
    if (beams_.empty()) return {units, NEG_INF};
    for (int32_t n = beams_[top].id; n != 0; n = parents_[n].first) units.push_back(parents_[n].second);
    std::reverse(units.begin(), units.end());
    return {units, top_total};
  }

  // Take ``n_frames`` more frames (rows of ``lp``, n_frames x vocab), the beams carried
  // over from the frames before: a search stepped over any split of the frames is the
  // search over all of them at once.
  void step(const float* lp, int64_t n_frames, int64_t vocab) {
    if (vocab != vocab_) throw std::invalid_argument("posteriors and token table differ in width");
    if (infos_.empty()) throw std::logic_error("step before begin");
    frames_ += n_frames;
    std::vector<Beam>& beams = beams_;
    // the candidate units of each frame, best first (ties: lower id first)
    const int k = std::min(top_k_, vocab_ - 1);
    std::vector<int32_t> order(vocab_);
    std::vector<std::pair<int32_t, double>> units;
    std::vector<Beam> nxt;
    std::vector<double> lows, totals;
    std::vector<int32_t> idx;
    for (int64_t t = 0; t < n_frames; ++t) {
      const float* row = lp + t * vocab_;
      if (floor_all_) row = floored(row);
      const double lp_blank = row[blank_];
      units.clear();
      if (!(has_skip_ && row[blank_] >= skip_lp_)) {
        // the k best of the units above the floor: the floor first, it leaves few (with
        // floor_all_, the frame's best unit passes below it: the one finite one there)
        int m = 0;
        for (int u = 0; u < vocab_; ++u)
          if (u != blank_ && (row[u] >= min_lp_ || (floor_all_ && row[u] > NEG_INF))) order[m++] = u;
        auto better = [row](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); };
        const int kept = std::min(k, m);
        std::partial_sort(order.begin(), order.begin() + kept, order.begin() + m, better);
        for (int j = 0; j < kept; ++j) units.emplace_back(order[j], static_cast<double>(row[order[j]]));
      }
      if (units.empty()) {
        for (auto& b : beams) {
          double total = lae(b.p_b, b.p_nb);
          b.p_nb = b.last >= 0 ? b.p_nb + row[b.last] : NEG_INF;
          b.p_b = total + lp_blank;
        }
        continue;
      }
      if (!python_.empty() &&
          std::any_of(units.begin(), units.end(), [this](const auto& u) { return starts_[u.first].has_value(); }))
        prefetch(beams);
      const double cut = frame_cut(beams, row, lp_blank, lows);
      ++stamp_;
      for (const auto& b : beams) mark(live_, b.id);
      nxt.clear();
      for (const auto& b : beams) {
        const int32_t bid = b.id, last = b.last;
        const double p_b = b.p_b, p_nb = b.p_nb;
        const double total = lae(p_b, p_nb);
        int32_t same = find_next(bid);
        if (same < 0) same = add_next(nxt, Beam{bid, last, NEG_INF, NEG_INF});
        nxt[same].p_b = lae(nxt[same].p_b, total + lp_blank);
        if (last >= 0) nxt[same].p_nb = lae(nxt[same].p_nb, p_nb + row[last]);
        const bool has_partial = !infos_[bid].partial.empty();
        const double fused = infos_[bid].fused;
        const size_t base = children_of(bid);
        for (const auto& [unit, unit_lp] : units) {
          const double p = (unit == last ? p_b : total) + unit_lp;
          if (p == NEG_INF) continue;
          if (unit == boundary_ && !has_partial) {
            if (last >= 0)
              nxt[same].p_nb = lae(nxt[same].p_nb, p);
            else
              nxt[same].p_b = lae(nxt[same].p_b, p);
            continue;
          }
          const size_t key = base + unit;
          int32_t cid = children_[key];
          if (cid < 0) {
            if (letter_[unit] && w_ac_ > 0) {
              // a new prefix that keeps its parent's word scores: its total is known now,
              // and below the cut whatever its partial-word term when its bound is
              if (w_ac_ * p + fused + pt_bound_ < cut) continue;
              double& pt = letter_pt_[key];
              if (std::isnan(pt)) pt = letter_term(bid, unit);
              if (w_ac_ * p + fused + pt < cut) continue;
            }
            cid = extend(bid, unit);
            children_[key] = cid;
          }
          int32_t child = find_next(cid);
          if (child < 0) {
            const Info& info = infos_[cid];
            if (info.valid && (w_ac_ * p + info.fused + info.pterm >= cut || marked(live_, cid)))
              add_next(nxt, Beam{cid, unit, NEG_INF, p});
          } else {
            nxt[child].p_nb = lae(nxt[child].p_nb, p);
          }
        }
      }
      if (recombine_) recombine(nxt);
      prune(nxt, beams, totals, idx);
      if (static_cast<int64_t>(infos_.size()) > compact_at_) {
        compact();
        compact_at_ = std::max<int64_t>(compact_min, 2 * static_cast<int64_t>(infos_.size()));
      }
    }
  }

  // Prefixes kept before the tables drop pruned branches (see compact); tests lower it.
  int64_t compact_min = int64_t{1} << 16;

 private:
  // -- per-utterance tables -------------------------------------------------------------
  // Drop the prefixes no beam descends from (pruned branches), so that the tables hold the
  // beams, their ancestors and what their children are, and grow with the length of the
  // hypotheses, not with every prefix ever tried. Only the numbers change: a dropped
  // prefix proposed again is made again, from its parent, exactly as it was (its scores
  // are a function of its parent and unit, and a word's score of the word and the
  // interned LM state, which are kept).
  void compact() {
    const size_t n = infos_.size(), S = scorers_.size(), N = n_slots_;
    std::vector<char> keep(n, 0);
    for (const Beam& b : beams_)
      for (int32_t id = b.id; id >= 0 && !keep[id]; id = parents_[id].first) keep[id] = 1;
    std::vector<int32_t> remap(n, -1);
    int32_t m = 0;
    for (size_t id = 0; id < n; ++id)
      if (keep[id]) remap[id] = m++;
    std::vector<Info> infos;
    std::vector<std::pair<int32_t, int32_t>> parents;
    std::vector<int32_t> states, nodes, children;
    std::vector<double> scores, letter_pt;
    std::vector<int64_t> block(static_cast<size_t>(m), -1);
    infos.reserve(m);
    parents.reserve(m);
    for (size_t id = 0; id < n; ++id) {
      if (!keep[id]) continue;
      const int32_t up = parents_[id].first;
      parents.emplace_back(up < 0 ? -1 : remap[up], parents_[id].second);
      infos.push_back(std::move(infos_[id]));
      states.insert(states.end(), states_.begin() + id * S, states_.begin() + (id + 1) * S);
      scores.insert(scores.end(), scores_.begin() + id * S, scores_.begin() + (id + 1) * S);
      nodes.insert(nodes.end(), nodes_.begin() + id * N, nodes_.begin() + (id + 1) * N);
      if (block_[id] >= 0) {
        block[remap[id]] = static_cast<int64_t>(children.size());
        for (int u = 0; u < vocab_; ++u) {
          const int32_t c = children_[block_[id] + u];
          children.push_back(c >= 0 && keep[c] ? remap[c] : -1);
          letter_pt.push_back(letter_pt_[block_[id] + u]);
        }
      }
    }
    infos_ = std::move(infos);
    parents_ = std::move(parents);
    states_ = std::move(states);
    scores_ = std::move(scores);
    nodes_ = std::move(nodes);
    children_ = std::move(children);
    letter_pt_ = std::move(letter_pt);
    block_ = std::move(block);
    next_pos_.assign(static_cast<size_t>(m), -1);
    next_stamp_.assign(static_cast<size_t>(m), -1);
    live_.assign(static_cast<size_t>(m), -1);
    for (Beam& b : beams_) b.id = remap[b.id];
    // the word completions scored so far: a cache, scored again on demand, to the same
    // values and (interned) states
    decltype(completions_)().swap(completions_);
  }

  void reset() {
    infos_.clear();
    parents_.clear();
    states_.clear();
    scores_.clear();
    nodes_.clear();
    children_.clear();
    letter_pt_.clear();
    block_.clear();
    next_pos_.clear();
    next_stamp_.clear();
    live_.clear();
    stamp_ = 0;
    lm_states_.clear();
    lm_index_.clear();
    completions_.clear();
    if (!python_.empty()) {  // Python objects: dropped with the GIL held
      py::gil_scoped_acquire gil;
      py_states_ = PyStates();
      py_partials_.clear();
    }
    beams_.clear();
    frames_ = 0;
    compact_at_ = compact_min;
  }

  int32_t new_prefix(int32_t parent, int32_t unit) {
    infos_.emplace_back();
    parents_.emplace_back(parent, unit);
    block_.push_back(-1);
    next_stamp_.push_back(-1);
    next_pos_.push_back(-1);
    live_.push_back(-1);
    return static_cast<int32_t>(infos_.size() - 1);
  }

  // Where prefix ``id``'s children are kept (V slots in children_ and letter_pt_), made
  // when it first extends: most prefixes never do (pruned the frame they are made).
  size_t children_of(int32_t id) {
    if (block_[id] < 0) {
      block_[id] = static_cast<int64_t>(children_.size());
      children_.resize(children_.size() + vocab_, -1);
      letter_pt_.resize(letter_pt_.size() + vocab_, std::numeric_limits<double>::quiet_NaN());
    }
    return static_cast<size_t>(block_[id]);
  }

  void mark(std::vector<int64_t>& v, int32_t id) { v[id] = stamp_; }
  bool marked(const std::vector<int64_t>& v, int32_t id) const { return v[id] == stamp_; }
  int32_t find_next(int32_t id) const { return next_stamp_[id] == stamp_ ? next_pos_[id] : -1; }
  int32_t add_next(std::vector<Beam>& nxt, const Beam& b) {
    next_stamp_[b.id] = stamp_;
    next_pos_[b.id] = static_cast<int32_t>(nxt.size());
    nxt.push_back(b);
    return next_pos_[b.id];
  }

  int32_t intern(const lm::ngram::State& s) {
    auto it = lm_index_.find(s);
    if (it != lm_index_.end()) return it->second;
    int32_t id = static_cast<int32_t>(lm_states_.size());
    lm_states_.push_back(s);
    lm_index_.emplace(s, id);
    return id;
  }

  int32_t start_state(size_t i) {
    const Scorer& s = scorers_[i];
    if (s.kind == Kind::kPython) {
      py::gil_scoped_acquire gil;
      return py_states_.intern(s.py.attr("start")());
    }
    if (s.kind != Kind::kKenLM) return 0;
    lm::ngram::State begin;
    s.model->BeginSentenceWrite(&begin);
    return intern(begin);
  }

  // (next state, score) of ``word`` after ``state`` for scorer ``i``: score_word.
  std::pair<int32_t, double> score_word(size_t i, int32_t state, const std::string& word) {
    const Scorer& s = scorers_[i];
    switch (s.kind) {
      case Kind::kBonus:
        return {0, 1.0};
      case Kind::kLexicon:
        return {0, s.words->is_word(s.words->walk(0, word)) ? 0.0 : -1.0};
      case Kind::kHotwords: {
        int32_t next = state;
        while (next && s.go[next].find(word) == s.go[next].end()) next = s.fail[next];
        auto it = s.go[next].find(word);
        next = it == s.go[next].end() ? 0 : it->second;
        // a completed phrase keeps its bonus: matching starts afresh after it
        return {s.final[next] ? 0 : next, s.bonus[next] - s.bonus[state]};
      }
      case Kind::kKenLM: {
        WordKey key{static_cast<int32_t>(i * 0x1000000 + state), word};
        auto it = completions_.find(key);
        if (it != completions_.end()) return it->second;
        lm::ngram::State in = lm_states_[state], out;
        double score = s.word_log10(in, s.model->BaseVocabulary().Index(word), out) * s.ln10;
        std::pair<int32_t, double> hit{intern(out), score};
        completions_.emplace(std::move(key), hit);
        return hit;
      }
      case Kind::kPython: {  // one word, where prefetch has not scored it (a cache miss)
        WordKey key{static_cast<int32_t>(i * 0x1000000 + state), word};
        auto it = completions_.find(key);
        if (it != completions_.end()) return it->second;
        py::gil_scoped_acquire gil;
        py::tuple hit = s.py.attr("score_word")(py_states_.states[state], word);
        std::pair<int32_t, double> out{py_states_.intern(hit[0]), hit[1].cast<double>()};
        completions_.emplace(std::move(key), out);
        return out;
      }
    }
    return {0, 0.0};
  }

  // Every word the beams' prefixes could complete, scored in one score_words call per
  // Python scorer (score_words): a neural LM gets a frame's words at once.
  void prefetch(const std::vector<Beam>& beams) {
    if (python_.empty()) return;
    const size_t S = scorers_.size();
    py::gil_scoped_acquire gil;
    for (size_t i : python_) {
      std::vector<WordKey> keys;
      std::unordered_set<WordKey, WordKeyHash> seen;
      py::list pairs;
      for (const auto& b : beams) {
        const Info& info = infos_[b.id];
        if (info.partial.empty()) continue;
        const int32_t state = states_[b.id * S + i];
        WordKey key{static_cast<int32_t>(i * 0x1000000 + state), info.partial};
        if (completions_.count(key) || !seen.insert(key).second) continue;
        pairs.append(py::make_tuple(py_states_.states[state], info.partial));
        keys.push_back(std::move(key));
      }
      if (keys.empty()) continue;
      py::list hits(scorers_[i].py.attr("score_words")(pairs));
      if (hits.size() != keys.size())
        throw std::runtime_error("score_words gave " + std::to_string(hits.size()) + " scores for " +
                                 std::to_string(keys.size()) + " words");
      for (size_t n = 0; n < keys.size(); ++n) {
        py::tuple hit = hits[n];
        completions_.emplace(std::move(keys[n]),
                             std::pair<int32_t, double>{py_states_.intern(hit[0]), hit[1].cast<double>()});
      }
    }
  }

  // End-of-utterance scores of the Python scorers for every state in ``states`` (S per
  // hypothesis), in one finish_many call per scorer (a neural LM batches them): py_ends_.
  void prefetch_ends(const std::vector<int32_t>& states) {
    if (python_.empty()) return;
    const size_t S = scorers_.size();
    py::gil_scoped_acquire gil;
    py_ends_.assign(S, {});
    for (size_t i : python_) {
      std::vector<int32_t> keys;
      py::list batch;
      for (size_t k = i; k < states.size(); k += S) {
        if (!py_ends_[i].emplace(states[k], 0.0).second) continue;
        keys.push_back(states[k]);
        batch.append(py_states_.states[states[k]]);
      }
      py::list ends(scorers_[i].py.attr("finish_many")(batch));
      if (ends.size() != keys.size())
        throw std::runtime_error("finish_many gave " + std::to_string(ends.size()) + " scores for " +
                                 std::to_string(keys.size()) + " states");
      for (size_t n = 0; n < keys.size(); ++n) py_ends_[i][keys[n]] = ends[n].cast<double>();
    }
  }

  double end_score(size_t i, int32_t state) {
    const Scorer& s = scorers_[i];
    if (s.kind == Kind::kHotwords) return -s.bonus[state];  // an unfinished phrase
    if (s.kind == Kind::kPython) return py_ends_[i].at(state);  // prefetch_ends
    if (s.kind != Kind::kKenLM) return 0.0;
    lm::ngram::State in = lm_states_[state], out;
    return static_cast<double>(s.model->BaseScore(
               &in, s.model->BaseVocabulary().EndSentence(), &out)) * s.ln10;
  }

  // Complete ``word`` into the states/scores at ``st``/``sc`` (length S); returns fused.
  double complete(int32_t* st, double* sc, double fused, const std::string& word) {
    for (size_t i = 0; i < scorers_.size(); ++i) {
      auto [state, score] = score_word(i, st[i], word);
      st[i] = state;
      sc[i] += score;
      fused += scorers_[i].weight * score;
    }
    return fused;
  }

  bool accepted(const int32_t* nodes, const std::string& word) {
    for (size_t i : constraints_) {
      const Scorer& s = scorers_[i];
      if (s.kind == Kind::kPython ? !py_check(i, "accepts", word) : !s.words->is_word(nodes[s.slot]))
        return false;
    }
    return true;
  }

  bool viable(const int32_t* nodes, const std::string& partial) {
    for (size_t i : constraints_) {
      const Scorer& s = scorers_[i];
      if (s.kind == Kind::kPython ? !py_check(i, "viable_prefix", partial) : nodes[s.slot] < 0)
        return false;
    }
    return true;
  }

  // A Python constraint's answer (``method``: accepts or viable_prefix), asked once a string.
  bool py_check(size_t i, const char* method, const std::string& text) {
    auto& seen = (method[0] == 'a' ? py_accepts_ : py_viable_)[i];
    auto it = seen.find(text);
    if (it != seen.end()) return it->second;
    py::gil_scoped_acquire gil;
    const bool ok = scorers_[i].py.attr(method)(text).cast<bool>();
    seen.emplace(text, ok);
    return ok;
  }

  // The slots of a word that starts with ``partial`` after states ``st``.
  void start_slots(int32_t* nodes, const int32_t* st, const std::string& partial) const {
    for (size_t i = 0; i < scorers_.size(); ++i) {
      const Scorer& s = scorers_[i];
      if (s.slot < 0) continue;
      if (s.kind == Kind::kHotwords) {
        nodes[s.slot] = s.cont[st[i]].walk(0, partial);
        nodes[s.slot + 1] = s.cont[0].walk(0, partial);
      } else {
        nodes[s.slot] = (s.prefixes ? s.prefixes : s.words)->walk(0, partial);
      }
    }
  }

  // The slots after ``spelling`` is appended to the word in progress.
  void advance_slots(int32_t* nodes, const int32_t* up, const int32_t* st, const std::string& spelling) const {
    for (size_t i = 0; i < scorers_.size(); ++i) {
      const Scorer& s = scorers_[i];
      if (s.slot < 0) continue;
      if (s.kind == Kind::kHotwords) {
        nodes[s.slot] = s.cont[st[i]].walk(up[s.slot], spelling);
        nodes[s.slot + 1] = s.cont[0].walk(up[s.slot + 1], spelling);
      } else {
        nodes[s.slot] = (s.prefixes ? s.prefixes : s.words)->walk(up[s.slot], spelling);
      }
    }
  }

  // The weighted partial-word estimate of a (non-empty) word in progress ``partial``:
  // _partial_term.
  double partial_term(const int32_t* nodes, const int32_t* st, const std::string& partial) {
    double term = 0.0;
    for (size_t i : partial_) {
      const Scorer& s = scorers_[i];
      double value;
      if (s.kind == Kind::kPython && !s.prefixes) {  // partial_score, called back once a key
        const int32_t state = s.py_partial_state ? st[i] : 0xffffff;
        WordKey key{static_cast<int32_t>(i * 0x1000000 + state), partial};
        auto it = py_partials_.find(key);
        if (it != py_partials_.end()) {
          value = it->second;
        } else {
          py::gil_scoped_acquire gil;
          value = s.py.attr("partial_score")(py_states_.states[st[i]], partial).cast<double>();
          py_partials_.emplace(std::move(key), value);
        }
      } else if (s.kind == Kind::kKenLM || s.kind == Kind::kPython) {
        value = s.prefixes == nullptr || nodes[s.slot] >= 0 ? 0.0 : s.unk_score;
      } else if (s.kind == Kind::kLexicon) {  // LexiconScorer.partial_score (partial=True)
        value = nodes[s.slot] >= 0 ? 0.0 : -1.0;
      } else {  // hotwords: HotwordScorer.partial_score
        const int32_t node = st[i], pos = nodes[s.slot], root = nodes[s.slot + 1];
        if (pos >= 0) {
          value = s.best[node][pos] - s.bonus[node];
        } else {
          const double restarted = node && root >= 0 ? s.best[0][root] : 0.0;
          value = restarted - s.bonus[node];
        }
      }
      term += s.weight * value;
    }
    return term;
  }

  double letter_term(int32_t parent, int32_t unit) {
    if (partial_.empty()) return 0.0;
    tmp_nodes_.resize(n_slots_);
    const int32_t* st = &states_[parent * scorers_.size()];
    advance_slots(tmp_nodes_.data(), &nodes_[parent * n_slots_], st, spellings_[unit]);
    // the spelling itself only where a Python scorer's partial_score needs it (no copy else)
    return partial_term(tmp_nodes_.data(), st,
                        spelled_ ? infos_[parent].partial + spellings_[unit] : std::string());
  }

  // The prefix ``parent`` + ``unit``: PythonSearchDecoder._extend.
  int32_t extend(int32_t parent, int32_t unit) {
    const size_t S = scorers_.size(), N = n_slots_;
    const int32_t id = new_prefix(parent, unit);
    states_.resize((id + 1) * S);
    scores_.resize((id + 1) * S);
    nodes_.resize((id + 1) * N);
    std::copy_n(&states_[parent * S], S, &states_[id * S]);
    std::copy_n(&scores_[parent * S], S, &scores_[id * S]);
    Info& info = infos_[id];
    const Info& up = infos_[parent];
    info.fused = up.fused;
    int32_t* nodes = &nodes_[id * N];
    const int32_t* st = &states_[id * S];
    if (starts_[unit].has_value()) {  // the unit ends the word in progress
      if (!up.partial.empty()) {
        if (!constraints_.empty() && !accepted(&nodes_[parent * N], up.partial)) {
          info.valid = false;
          return id;
        }
        info.fused = complete(&states_[id * S], &scores_[id * S], info.fused, up.partial);
      }
      info.partial = *starts_[unit];
      start_slots(nodes, st, info.partial);
    } else {
      info.partial = up.partial + spellings_[unit];
      advance_slots(nodes, &nodes_[parent * N], st, spellings_[unit]);
    }
    if (!info.partial.empty()) {
      if (!constraints_.empty() && !viable(nodes, info.partial)) {
        info.valid = false;
        return id;
      }
      if (!partial_.empty()) info.pterm = partial_term(nodes, st, info.partial);
    }
    return id;
  }

  // ``row`` with every label below the floor made impossible, except the frame's most
  // probable label(s) (SearchOptions.floor_every_label; search_oracle.floored)
  const float* floored(const float* row) {
    held_.assign(row, row + vocab_);
    const float best = *std::max_element(row, row + vocab_);
    for (auto& v : held_)
      if (v < min_lp_ && v < best) v = -std::numeric_limits<float>::infinity();
    return held_.data();
  }

  // -- pruning ----------------------------------------------------------------------------
  double frame_cut(const std::vector<Beam>& beams, const float* row, double lp_blank,
                   std::vector<double>& lows) const {
    if (w_ac_ <= 0) return NEG_INF;
    lows.clear();
    for (const auto& b : beams) {
      const Info& info = infos_[b.id];
      const double to_blank = lae(b.p_b, b.p_nb) + lp_blank;
      const double repeat = b.last >= 0 ? b.p_nb + row[b.last] : NEG_INF;
      if (split_) {  // the two ends are candidates of their own
        lows.push_back(w_ac_ * to_blank + info.fused + info.pterm);
        lows.push_back(w_ac_ * repeat + info.fused + info.pterm);
      } else {
        lows.push_back(w_ac_ * lae(to_blank, repeat) + info.fused + info.pterm);
      }
    }
    double cut = *std::max_element(lows.begin(), lows.end()) - beam_threshold_;
    // (with recombine, a beam may give way to a new prefix of its key: no beam_size bound)
    if (!recombine_ && static_cast<int>(lows.size()) >= beam_size_) {
      std::nth_element(lows.begin(), lows.begin() + (beam_size_ - 1), lows.end(), std::greater<double>());
      cut = std::max(cut, lows[beam_size_ - 1]);
    }
    return cut - 1e-6;
  }

  // SearchOptions.recombine: of the candidates whose word scorers' states, word in progress
  // and last unit agree (whose every continuation scores alike), only the one of the best
  // total stays (the first on ties): search_oracle.PythonSearchDecoder._recombine.
  void recombine(std::vector<Beam>& nxt) {
    // an open-addressing table of the kept candidates' places in nxt, keyed by a hash of
    // (states, last unit, word in progress) and checked against the whole key: no
    // allocation per candidate (the lexicon's wide pruning proposes thousands a frame)
    const size_t S = scorers_.size();
    size_t cap = 16;
    while (cap < 2 * nxt.size()) cap *= 2;
    slots_.assign(cap, -1);
    kept_.clear();
    size_t m = 0;
    for (size_t j = 0; j < nxt.size(); ++j) {
      const Beam& b = nxt[j];
      const Info& info = infos_[b.id];
      const int32_t* st = &states_[b.id * S];
      uint64_t h = 1469598103934665603ULL;  // FNV-1a over the key
      auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ULL; };
      for (size_t k = 0; k < S; ++k) mix(static_cast<uint32_t>(st[k]));
      mix(static_cast<uint32_t>(b.last));
      for (unsigned char c : info.partial) mix(c);
      const double total = w_ac_ * lae(b.p_b, b.p_nb) + info.fused;
      size_t at = static_cast<size_t>(h ^ (h >> 29)) & (cap - 1);
      for (;; at = (at + 1) & (cap - 1)) {
        const int32_t k = slots_[at];
        if (k < 0) {  // a new key: kept, in the place of its first candidate
          slots_[at] = static_cast<int32_t>(m);
          nxt[m++] = b;
          kept_.push_back(total);
          break;
        }
        const Beam& o = nxt[static_cast<size_t>(k)];
        if (o.last == b.last && infos_[o.id].partial == info.partial &&
            std::equal(st, st + S, &states_[o.id * S])) {
          if (total > kept_[static_cast<size_t>(k)]) {
            nxt[static_cast<size_t>(k)] = b;
            kept_[static_cast<size_t>(k)] = total;
          }
          break;
        }
      }
    }
    nxt.resize(m);
  }

  void prune(const std::vector<Beam>& nxt, std::vector<Beam>& beams, std::vector<double>& totals,
             std::vector<int32_t>& idx) const {
    if (split_) {
      prune_split(nxt, beams, totals, idx);
      if (!beams.empty()) return;  // no finite candidate (an acoustic weight of 0): as one
    }
    totals.resize(nxt.size());
    idx.resize(nxt.size());
    for (size_t j = 0; j < nxt.size(); ++j) {
      const Info& info = infos_[nxt[j].id];
      totals[j] = w_ac_ * lae(nxt[j].p_b, nxt[j].p_nb) + info.fused + info.pterm;
      idx[j] = static_cast<int32_t>(j);
    }
    beams.clear();
    const double best = *std::max_element(totals.begin(), totals.end());
    if (std::any_of(totals.begin(), totals.end(), [](double x) { return std::isnan(x); })) {
      // no order to select by: the stable sort of _prune, to the letter
      std::stable_sort(idx.begin(), idx.end(), [&totals](int32_t a, int32_t b) { return totals[a] > totals[b]; });
      const double floor = totals[idx[0]] - beam_threshold_;
      const size_t n = std::min(idx.size(), static_cast<size_t>(beam_size_));
      for (size_t j = 0; j < n; ++j)
        if (totals[idx[j]] >= floor) beams.push_back(nxt[idx[j]]);
      return;
    }
    // the first beam_size of a stable sort, best first, above the floor: those above the
    // floor (in order), the best beam_size of them by total, then by position
    const double floor = best - beam_threshold_;
    size_t m = 0;
    for (size_t j = 0; j < idx.size(); ++j)
      if (totals[j] >= floor) idx[m++] = static_cast<int32_t>(j);
    const size_t n = std::min(m, static_cast<size_t>(beam_size_));
    auto before = [&totals](int32_t a, int32_t b) {
      return totals[a] > totals[b] || (totals[a] == totals[b] && a < b);
    };
    if (n < m) std::nth_element(idx.begin(), idx.begin() + n, idx.begin() + m, before);
    std::sort(idx.begin(), idx.begin() + n, before);
    for (size_t j = 0; j < n; ++j) beams.push_back(nxt[idx[j]]);
  }

  // SearchOptions.split_blank_ends: each prefix's blank-ending and label-ending mass rank as
  // two candidates (pyctcdecode's beams, keyed by their last label): the beam_size best
  // candidates within beam_threshold of the best are kept, a prefix with the mass of its
  // kept ends only, prefixes in the order of their best kept candidate.
  void prune_split(const std::vector<Beam>& nxt, std::vector<Beam>& beams, std::vector<double>& totals,
                   std::vector<int32_t>& idx) const {
    const size_t n_cand = 2 * nxt.size();
    totals.resize(n_cand);
    for (size_t j = 0; j < nxt.size(); ++j) {
      const Info& info = infos_[nxt[j].id];
      totals[2 * j] = w_ac_ * nxt[j].p_b + info.fused + info.pterm;
      totals[2 * j + 1] = w_ac_ * nxt[j].p_nb + info.fused + info.pterm;
    }
    beams.clear();
    double best = NEG_INF;
    for (double x : totals)
      if (x > best) best = x;  // NaN never counts as best
    const double floor = best - beam_threshold_;
    idx.clear();
    for (size_t c = 0; c < n_cand; ++c)
      if (totals[c] >= floor && totals[c] > NEG_INF) idx.push_back(static_cast<int32_t>(c));
    const size_t n = std::min(idx.size(), static_cast<size_t>(beam_size_));
    auto before = [&totals](int32_t a, int32_t b) {
      return totals[a] > totals[b] || (totals[a] == totals[b] && a < b);
    };
    if (n < idx.size()) std::nth_element(idx.begin(), idx.begin() + n, idx.end(), before);
    std::sort(idx.begin(), idx.begin() + n, before);
    std::vector<int32_t> at(nxt.size(), -1);  // a prefix's place in beams
    for (size_t j = 0; j < n; ++j) {
      const size_t c = static_cast<size_t>(idx[j]), k = c / 2;
      if (at[k] < 0) {
        at[k] = static_cast<int32_t>(beams.size());
        beams.push_back(Beam{nxt[k].id, nxt[k].last, NEG_INF, NEG_INF});
      }
      Beam& b = beams[static_cast<size_t>(at[k])];
      (c % 2 == 0 ? b.p_b : b.p_nb) = (c % 2 == 0 ? nxt[k].p_b : nxt[k].p_nb);
    }
  }

  // The words of a unit sequence as one key: units, -1 between words (words_from_ids).
  std::vector<int32_t> word_key(const std::vector<int32_t>& units) const {
    std::vector<int32_t> key;
    bool in_word = false;
    for (int32_t u : units) {
      if (starts_[u].has_value()) {  // a boundary or a word-starting unit
        in_word = false;
        if (u == boundary_) continue;
      }
      if (!in_word && !key.empty()) key.push_back(-1);
      key.push_back(u);
      in_word = true;
    }
    return key;
  }

  // The ``nbest`` best finished beams, one per word sequence: PythonSearchDecoder._rank.
  std::vector<Final> rank(std::vector<Final> finals) const {
    std::vector<std::vector<int32_t>> keys;
    std::vector<size_t> best;  // per distinct key, in order of first appearance
    std::vector<double> totals;
    for (size_t j = 0; j < finals.size(); ++j) {
      auto key = word_key(finals[j].units);
      const double total = w_ac_ * finals[j].acoustic + finals[j].fused;
      size_t k = 0;
      while (k < keys.size() && keys[k] != key) ++k;
      if (k == keys.size()) {
        keys.push_back(std::move(key));
        best.push_back(j);
        totals.push_back(total);
      } else if (totals[k] < total) {
        best[k] = j;
        totals[k] = total;
      }
    }
    std::vector<size_t> order(best.size());
    for (size_t k = 0; k < order.size(); ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(), [&totals](size_t a, size_t b) { return totals[a] > totals[b]; });
    std::vector<Final> out;
    for (size_t k = 0; k < order.size() && static_cast<int>(out.size()) < nbest_; ++k)
      out.push_back(std::move(finals[best[order[k]]]));
    return out;
  }

  // Each beam's last word completed and end-of-utterance scores added (rejected: skipped).
  std::vector<Final> finish(const std::vector<Beam>& beams) {
    const size_t S = scorers_.size(), N = n_slots_;
    std::vector<Final> out;
    std::vector<int32_t> st(S);
    prefetch(beams);
    // a beam whose last word a constraint refuses is dropped, unless every beam's is
    std::vector<char> refused(beams.size());
    bool waive = true;
    for (size_t j = 0; j < beams.size(); ++j) {
      const int32_t id = beams[j].id;
      refused[j] = !constraints_.empty() && !infos_[id].partial.empty() &&
                   !accepted(&nodes_[id * N], infos_[id].partial);
      waive = waive && refused[j];
    }
    std::vector<int32_t> ends;  // each final's scorer states once its last word is complete
    for (size_t j = 0; j < beams.size(); ++j) {
      if (refused[j] && !waive) continue;
      const Beam& b = beams[j];
      const Info& info = infos_[b.id];
      Final f;
      std::copy_n(&states_[b.id * S], S, st.begin());
      f.scores.assign(&scores_[b.id * S], &scores_[b.id * S] + S);
      f.fused = info.fused;
      if (!info.partial.empty()) {
        f.fused = complete(st.data(), f.scores.data(), f.fused, info.partial);
      }
      ends.insert(ends.end(), st.begin(), st.end());
      for (int32_t n = b.id; n != 0; n = parents_[n].first) f.units.push_back(parents_[n].second);
      std::reverse(f.units.begin(), f.units.end());
      f.acoustic = lae(b.p_b, b.p_nb);
      out.push_back(std::move(f));
    }
    prefetch_ends(ends);
    for (size_t k = 0; k < out.size(); ++k) {
      for (size_t i = 0; i < S; ++i) {
        double end = end_score(i, ends[k * S + i]);
        out[k].scores[i] += end;
        out[k].fused += scorers_[i].weight * end;
      }
    }
    return rank(std::move(out));
  }

 public:
  // one search at a time per searcher (and per stream); a copy gets a mutex of its own
  struct Busy {
    std::mutex mu;
    Busy() = default;
    Busy(const Busy&) {}
  } busy;

 private:
  std::vector<std::string> spellings_;
  std::vector<std::optional<std::string>> starts_;
  int vocab_ = 0, blank_, boundary_;
  double w_ac_;
  int beam_size_, nbest_;
  double beam_threshold_;
  int top_k_;
  float min_lp_;
  bool floor_all_ = false;  // SearchOptions.floor_every_label
  bool split_ = false;      // SearchOptions.split_blank_ends
  bool recombine_ = false;  // SearchOptions.recombine
  std::vector<int32_t> slots_;  // recombine's table, reused
  std::vector<double> kept_;    // the total of each candidate recombine keeps
  std::vector<float> held_;  // a frame's row as floored() leaves it
  bool has_skip_ = false;
  float skip_lp_ = 0.0f;
  // the scorers, shared by copies (streams): read-only once made
  std::shared_ptr<std::vector<Scorer>> shared_scorers_ = std::make_shared<std::vector<Scorer>>();
  std::vector<Scorer>& scorers_ = *shared_scorers_;
  std::vector<size_t> partial_, constraints_;  // scorers with a partial-word estimate; constraints
  std::vector<size_t> python_;                 // Python scorers (Kind::kPython)
  bool spelled_ = false;  // a Python scorer's partial_score needs the partial word's spelling
  size_t n_slots_ = 0;
  double pt_bound_ = 0.0;  // >= any partial_term
  std::vector<uint8_t> letter_;
  // per utterance
  std::vector<Info> infos_;
  std::vector<std::pair<int32_t, int32_t>> parents_;
  std::vector<int32_t> states_;  // S per prefix
  std::vector<double> scores_;   // S per prefix
  std::vector<int32_t> nodes_;   // n_slots_ per prefix: trie positions of the word in progress
  std::vector<int32_t> tmp_nodes_;
  std::vector<int64_t> block_;     // per prefix: its children's offset (children_of), -1: none yet
  std::vector<int32_t> children_;  // V per block: the prefix + unit, -1 if not made yet
  std::vector<double> letter_pt_;  // V per block: letter_term of the prefix + unit, NaN if not yet
  std::vector<int32_t> next_pos_;
  std::vector<int64_t> next_stamp_, live_;
  int64_t stamp_ = 0;
  std::vector<lm::ngram::State> lm_states_;
  std::unordered_map<lm::ngram::State, int32_t, StateHash> lm_index_;
  std::unordered_map<WordKey, std::pair<int32_t, double>, WordKeyHash> completions_;
  PyStates py_states_;  // Python scorers' states in this utterance
  std::unordered_map<WordKey, double, WordKeyHash> py_partials_;  // their partial_score answers
  std::vector<std::unordered_map<int32_t, double>> py_ends_;  // their finish_many answers, per scorer
  std::vector<std::unordered_map<std::string, bool>> py_accepts_, py_viable_;  // their constraints'
  std::vector<Beam> beams_;  // the beams after the frames taken so far
  int64_t frames_ = 0;
  int64_t compact_at_ = int64_t{1} << 16;  // compact the tables past this many prefixes
};

// ``mu`` locked, waited for without the GIL (a search holding it may be calling back into
// Python), and the GIL held again on return.
std::unique_lock<std::mutex> lock_without_gil(std::mutex& mu) {
  std::unique_lock<std::mutex> lock(mu, std::defer_lock);
  py::gil_scoped_release release;
  lock.lock();
  return lock;
}

// A search in progress (fusion.decoder.search.DecoderStream): its own copy of a searcher's
// tables, stepped chunk by chunk; copying one snapshots it.
struct Stream {
  Searcher search;
  bool finished = false;
};

}  // namespace

PYBIND11_MODULE(_ctcsearch, m) {
  m.doc() = "Compiled CTC prefix beam search with KenLM shallow fusion (see fusion.decoder.search).";
  py::class_<Searcher>(m, "Searcher")
      .def(py::init<const std::vector<std::string>&, const std::vector<std::optional<std::string>>&, int, int,
                    double, int, double, int, double, std::optional<double>, int, const py::list&, bool,
                    bool, bool>(),
           py::arg("spellings"), py::arg("starts"), py::arg("blank"), py::arg("boundary"),
           py::arg("acoustic_weight"), py::arg("beam_size"), py::arg("beam_threshold"),
           py::arg("token_top_k"), py::arg("token_min_logprob"), py::arg("blank_skip"),
           py::arg("nbest"), py::arg("scorers"), py::arg("floor_every_label") = false,
           py::arg("split_blank_ends") = false, py::arg("recombine") = false)
      .def(
          "search",
          [](Searcher& self, py::array_t<float, py::array::c_style | py::array::forcecast> lp) {
            if (lp.ndim() != 2) throw std::invalid_argument("log-probabilities must be T x V");
            std::vector<Final> finals;
            {
              py::gil_scoped_release release;
              std::lock_guard<std::mutex> lock(self.busy.mu);
              finals = self.search(lp.data(), lp.shape(0), lp.shape(1));
            }
            py::list out;
            for (auto& f : finals)
              out.append(py::make_tuple(py::tuple(py::cast(f.units)), f.acoustic,
                                        py::tuple(py::cast(f.scores)), f.fused));
            return out;
          },
          py::arg("log_probs"),
          "Search one utterance: (units, acoustic, scores, fused) of its N best, best first.")
      .def(
          "stream",
          [](Searcher& self) {
            std::unique_ptr<Stream> out;
            {
              auto lock = lock_without_gil(self.busy.mu);
              out.reset(new Stream{self});
            }
            out->search.begin();
            return out;
          },
          "A new search to step chunk by chunk (Stream), with this searcher's settings.");
  py::class_<Stream>(m, "Stream")
      .def(
          "accept",
          [](Stream& self, py::array_t<float, py::array::c_style | py::array::forcecast> lp) {
            if (lp.ndim() != 2) throw std::invalid_argument("log-probabilities must be T x V");
            if (self.finished) throw std::logic_error("the stream is finished");
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(self.search.busy.mu);
            self.search.step(lp.data(), lp.shape(0), lp.shape(1));
          },
          py::arg("log_probs"), "Take the next frames (T x V), the beams carried over.")
      .def(
          "best",
          [](Stream& self) {
            std::pair<std::vector<int32_t>, double> top;
            {
              auto lock = lock_without_gil(self.search.busy.mu);
              top = self.search.best();
            }
            return py::make_tuple(py::tuple(py::cast(top.first)), top.second);
          },
          "(units, total) of the best beam so far, by the total the search ranks by.")
      .def(
          "finish",
          [](Stream& self) {
            if (self.finished) throw std::logic_error("the stream is finished");
            std::vector<Final> finals;
            {
              py::gil_scoped_release release;
              std::lock_guard<std::mutex> lock(self.search.busy.mu);
              finals = self.search.end();
              self.finished = true;
            }
            py::list out;
            for (auto& f : finals)
              out.append(py::make_tuple(py::tuple(py::cast(f.units)), f.acoustic,
                                        py::tuple(py::cast(f.scores)), f.fused));
            return out;
          },
          "End the utterance: what Searcher.search gives for all the frames taken.")
      .def(
          "copy",
          [](Stream& self) {
            auto lock = lock_without_gil(self.search.busy.mu);
            return std::make_unique<Stream>(self);
          },
          "An independent copy of the stream as it is now (a snapshot).")
      .def_property_readonly("frames", [](const Stream& self) { return self.search.frames(); })
      .def_property(
          "compact_min", [](const Stream& self) { return self.search.compact_min; },
          [](Stream& self, int64_t n) {
            if (n < 1) throw std::invalid_argument("compact_min must be >= 1");
            self.search.compact_min = n;
          },
          "Prefixes kept before pruned branches are dropped from the tables (tests lower it).")
      .def_property_readonly("finished", [](const Stream& self) { return self.finished; });
  m.def(
      "align",
      [](py::array_t<float, py::array::c_style | py::array::forcecast> lp, const std::vector<int32_t>& units,
         int32_t blank, std::optional<py::array_t<double, py::array::c_style | py::array::forcecast>> probs,
         int64_t block) {
        if (lp.ndim() != 2) throw std::invalid_argument("log-probabilities must be T x V");
        if (block < 0) throw std::invalid_argument("block must be >= 0 (0: chosen by the length)");
        const double* p = nullptr;
        if (probs) {
          if (probs->ndim() != 2 || probs->shape(0) != lp.shape(0) || probs->shape(1) != lp.shape(1))
            throw std::invalid_argument("probs must have the shape of log_probs");
          p = probs->data();
        }
        ctcalign::Spans spans;
        {
          py::gil_scoped_release release;
          spans = ctcalign::align(lp.data(), lp.shape(0), lp.shape(1), units.data(),
                                  static_cast<int64_t>(units.size()), blank, p, block);
        }
        py::object conf = py::none();
        if (p != nullptr) conf = py::cast(spans.confidence);
        return py::make_tuple(py::cast(spans.start), py::cast(spans.end), conf);
      },
      py::arg("log_probs"), py::arg("units"), py::arg("blank"), py::arg("probs") = py::none(),
      py::arg("block") = 0,
      "CTC forced alignment of ``units`` in ``log_probs`` (T x V): the spans of "
      "torchaudio.functional.forced_align, its ties broken alike, as (starts, ends, "
      "confidences) in frames, [start, end). Confidences (fusion.core.types.span_confidences) "
      "only given ``probs``, the posteriors (np.exp of log_probs in float64); else None. "
      "Memory is linear in the length: long inputs keep every ``block``-th frame's scores "
      "and recompute the back-pointers (0: the block chosen by the size; > 0: for tests).");
  m.def(
      "group_words",
      [](const std::vector<int32_t>& units, py::array_t<int8_t, py::array::c_style | py::array::forcecast> kind) {
        if (kind.ndim() != 1) throw std::invalid_argument("word kinds must be one per unit id");
        const ctcalign::Words w = ctcalign::group_words(units.data(), static_cast<int64_t>(units.size()),
                                                        kind.data(), kind.shape(0));
        return py::make_tuple(py::cast(w.first), py::cast(w.last));
      },
      py::arg("units"), py::arg("kind"),
      "The words of a blank-free unit sequence as TokenTable.words_from_ids groups them: "
      "(first, last) unit indices of each word. ``kind`` (int8, one per unit id): 0 an "
      "ordinary unit, 1 the word boundary (dropped), 2 a unit that begins a word.");
}

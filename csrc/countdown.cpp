// Countdown verifier (answer extraction, parser, exact evaluator) and exhaustive solver.
// See countdown.h for the contract; fastzero/tasks/countdown/reference.py is the independent
// pure-Python oracle the tests compare against.
#include "countdown.h"

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace countdown {
namespace {

using i128 = __int128;
using u128 = unsigned __int128;

// ---------------------------------------------------------------------------------------------
// Exact rational arithmetic. Every result is reduced and range-checked; false means "invalid".
// ---------------------------------------------------------------------------------------------

inline uint64_t gcd64(uint64_t a, uint64_t b) {
  if (a == 0) return b;
  if (b == 0) return a;
  const int shift = __builtin_ctzll(a | b);
  a >>= __builtin_ctzll(a);
  while (b != 0) {
    b >>= __builtin_ctzll(b);
    if (a > b) std::swap(a, b);
    b -= a;
  }
  return a << shift;
}

inline u128 gcd128(u128 a, u128 b) {
  // Euclid while either side needs more than 64 bits (a few steps at most), then binary gcd.
  while ((a >> 64) != 0 || (b >> 64) != 0) {
    if (b == 0) return a;
    const u128 r = a % b;
    a = b;
    b = r;
  }
  return gcd64(static_cast<uint64_t>(a), static_cast<uint64_t>(b));
}

// Builds num/den (den > 0) reduced; fails when the reduced value is out of range.
inline bool make_rational(i128 num, i128 den, Rational& out) {
  const bool negative = num < 0;
  u128 n = negative ? -static_cast<u128>(num) : static_cast<u128>(num);
  u128 d = static_cast<u128>(den);
  if (((n | d) >> 64) == 0) {
    const uint64_t g = gcd64(static_cast<uint64_t>(n), static_cast<uint64_t>(d));
    n = static_cast<uint64_t>(n) / g;
    d = static_cast<uint64_t>(d) / g;
  } else {
    const u128 g = gcd128(n, d);
    n /= g;
    d /= g;
  }
  if (n >= static_cast<u128>(kValueLimit) || d >= static_cast<u128>(kValueLimit)) return false;
  out.num = negative ? -static_cast<int64_t>(n) : static_cast<int64_t>(n);
  out.den = static_cast<int64_t>(d);
  return true;
}

inline bool in_range(int64_t v) { return v > -kValueLimit && v < kValueLimit; }

inline bool add(const Rational& a, const Rational& b, Rational& out) {
  if (a.den == 1 && b.den == 1) {  // |a|, |b| < 2^62: the sum cannot wrap int64
    out = {a.num + b.num, 1};
    return in_range(out.num);
  }
  return make_rational(static_cast<i128>(a.num) * b.den + static_cast<i128>(b.num) * a.den,
                       static_cast<i128>(a.den) * b.den, out);
}

inline bool sub(const Rational& a, const Rational& b, Rational& out) {
  return add(a, Rational{-b.num, b.den}, out);
}

inline bool mul(const Rational& a, const Rational& b, Rational& out) {
  if (a.den == 1 && b.den == 1) {
    const i128 p = static_cast<i128>(a.num) * b.num;
    if (p <= -kValueLimit || p >= kValueLimit) return false;
    out = {static_cast<int64_t>(p), 1};
    return true;
  }
  return make_rational(static_cast<i128>(a.num) * b.num, static_cast<i128>(a.den) * b.den, out);
}

inline bool div(const Rational& a, const Rational& b, Rational& out) {
  if (b.num == 0) return false;
  if (a.den == 1 && b.den == 1 && a.num % b.num == 0) {  // exact integer quotient: no gcd needed
    out = {a.num / b.num, 1};  // |quotient| <= |a.num| < 2^62
    return true;
  }
  i128 num = static_cast<i128>(a.num) * b.den;
  i128 den = static_cast<i128>(a.den) * b.num;
  if (den < 0) {
    num = -num;
    den = -den;
  }
  return make_rational(num, den, out);
}

inline bool apply(char op, const Rational& a, const Rational& b, Rational& out) {
  switch (op) {
    case '+': return add(a, b, out);
    case '-': return sub(a, b, out);
    case '*': return mul(a, b, out);
    default: return div(a, b, out);
  }
}

inline bool same(const Rational& a, const Rational& b) { return a.num == b.num && a.den == b.den; }

// ---------------------------------------------------------------------------------------------
// Answer extraction: the last match of re.findall(r"<answer>(.*?)</answer>", s, re.DOTALL).
// findall scans left to right: the first "<answer>" opens a match that closes at the first
// "</answer>" after it; scanning resumes after that close. An opening tag with no close after it
// ends the scan (no later one can have a close either). Both tags start with the only '<' they
// contain, so one pass over the '<' positions, in a two-state machine, finds every match.
// ---------------------------------------------------------------------------------------------

template <typename CharT>
inline bool tag_at(const CharT* p, const char* tag, size_t len) {
  if constexpr (sizeof(CharT) == 1) {
    return std::memcmp(p, tag, len) == 0;  // constant length: one or two word compares
  } else {
    for (size_t k = 0; k < len; ++k) {
      if (p[k] != CharT(static_cast<unsigned char>(tag[k]))) return false;
    }
    return true;
  }
}

// The two-state machine of the findall scan, fed with '<' positions in increasing order.
template <typename CharT>
struct AnswerScan {
  const CharT* end;
  const CharT* open = nullptr;     // inside a match (waiting for "</answer>") when set
  const CharT* resume = nullptr;   // '<' before this lies inside a tag already consumed
  const CharT* content = nullptr;  // the last complete match's content [content, content_end)
  const CharT* content_end = nullptr;

  void visit(const CharT* p) {
    if (p < resume) return;
    const size_t left = static_cast<size_t>(end - p);
    if (open == nullptr) {
      if (left >= 8 && tag_at(p, "<answer>", 8)) {
        open = p;
        resume = p + 8;
      }
    } else if (left >= 9 && tag_at(p, "</answer>", 9)) {
      content = open + 8;
      content_end = p;
      open = nullptr;
      resume = p + 9;
    }
  }
};

// The first '<' in [p, end), or end.
template <typename CharT>
inline const CharT* next_lt(const CharT* p, const CharT* end) {
  if constexpr (sizeof(CharT) == 1) {
    // glibc's memchr (AVX2 where available) outruns a portable SSE2 loop 2-3x on long stretches
    // without '<', which is what reasoning text mostly is.
    const void* hit = std::memchr(p, '<', static_cast<size_t>(end - p));
    return hit ? static_cast<const CharT*>(hit) : end;
  } else {
#if defined(__SSE2__)
    // 16 bytes per step: 8 UCS-2 or 4 UCS-4 code units compared at once.
    constexpr size_t kPerStep = 16 / sizeof(CharT);
    const __m128i lt = sizeof(CharT) == 2 ? _mm_set1_epi16('<') : _mm_set1_epi32('<');
    for (; static_cast<size_t>(end - p) >= kPerStep; p += kPerStep) {
      const __m128i block = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const __m128i eq = sizeof(CharT) == 2 ? _mm_cmpeq_epi16(block, lt) : _mm_cmpeq_epi32(block, lt);
      const int bits = _mm_movemask_epi8(eq);
      if (bits != 0) return p + __builtin_ctz(bits) / sizeof(CharT);
    }
#endif
    while (p < end && *p != CharT('<')) ++p;
    return p;
  }
}

template <typename CharT>
void scan_answers(const CharT* text, size_t length, AnswerScan<CharT>& scan) {
  if (length == 0) return;  // (also keeps a null `text` away from memchr)
  const CharT* const end = text + length;
  for (const CharT* p = next_lt(text, end); p < end; p = next_lt(p + 1, end)) scan.visit(p);
}

inline bool is_strip_space(uint32_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// ---------------------------------------------------------------------------------------------
// Parser and evaluator:  expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ;
// factor := INT | '(' expr ')'. Fails fast: every failure means the same verdict (kInvalid).
// ---------------------------------------------------------------------------------------------

constexpr size_t kMaxLiterals = kMaxAnswerChars / 2 + 1;  // "1+1+...+1" packs the most literals
constexpr size_t kSmallPool = 16;  // up to this many numbers, literals are matched as they appear

class ExpressionParser {
 public:
  // `numbers` are the problem's numbers; each literal must take one of them.
  ExpressionParser(const char* s, size_t n, const int64_t* numbers, size_t count)
      : s_(s), n_(n), count_(count), match_as_we_go_(count <= kSmallPool) {
    if (match_as_we_go_) std::copy(numbers, numbers + count, unused_);
  }

  // Parses and evaluates the whole input; false when it is not one valid expression.
  bool parse(Rational& value) {
    skip_space();
    return parse_expr(value) && i_ == n_;
  }
  // Whether the literals seen are exactly the numbers given, as multisets.
  bool used_all_numbers(const int64_t* numbers) {
    if (literal_count_ != count_) return false;
    if (match_as_we_go_) return true;  // each literal already took a distinct number
    int64_t given[kMaxLiterals];  // count_ == literal_count_ <= kMaxLiterals
    std::copy(numbers, numbers + count_, given);
    std::sort(given, given + count_);
    std::sort(literals_, literals_ + count_);
    return std::equal(literals_, literals_ + count_, given);
  }

 private:
  // Invariant: after every token, i_ sits on the next token (whitespace already skipped).
  void skip_space() {
    while (i_ < n_ && is_strip_space(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  char peek() const { return i_ < n_ ? s_[i_] : '\0'; }
  void advance() {  // past a one-character token
    ++i_;
    skip_space();
  }

  bool parse_expr(Rational& value) {
    if (!parse_term(value)) return false;
    for (char op = peek(); op == '+' || op == '-'; op = peek()) {
      advance();
      Rational rhs;
      if (!parse_term(rhs) || !apply(op, value, rhs, value)) return false;
    }
    return true;
  }

  bool parse_term(Rational& value) {
    if (!parse_factor(value)) return false;
    for (char op = peek(); op == '*' || op == '/'; op = peek()) {
      advance();
      Rational rhs;
      if (!parse_factor(rhs) || !apply(op, value, rhs, value)) return false;
    }
    return true;
  }

  bool parse_factor(Rational& value) {
    const char c = peek();
    if (c == '(') {
      if (++depth_ > kMaxParenDepth) return false;
      advance();
      if (!parse_expr(value) || peek() != ')') return false;
      advance();
      --depth_;
      return true;
    }
    if (c < '0' || c > '9') return false;  // also rejects unary +/-, end of input, junk
    const size_t start = i_;
    uint64_t v = 0;
    for (unsigned d; i_ < n_ && (d = static_cast<unsigned char>(s_[i_]) - '0') <= 9; ++i_) {
      if (i_ - start < 19) v = v * 10 + d;  // 19 digits fit in uint64; more are rejected below
    }
    const size_t digits = i_ - start;
    if (digits > 1 && s_[start] == '0') return false;  // leading zero
    if (digits > 19) return false;                      // >= 10^19 > 2^62
    if (v >= static_cast<uint64_t>(kValueLimit) || !take_number(static_cast<int64_t>(v))) return false;
    value = {static_cast<int64_t>(v), 1};
    skip_space();
    return true;
  }

  bool take_number(int64_t v) {
    if (literal_count_ == std::min(count_, kMaxLiterals)) return false;  // more literals than numbers
    ++literal_count_;
    if (!match_as_we_go_) {
      literals_[literal_count_ - 1] = v;
      return true;
    }
    const size_t left = count_ - (literal_count_ - 1);
    for (size_t k = 0; k < left; ++k) {
      if (unused_[k] == v) {
        unused_[k] = unused_[left - 1];
        return true;
      }
    }
    return false;  // not one of the numbers, or already used up
  }

  const char* s_;
  size_t n_;
  size_t i_ = 0;
  int depth_ = 0;
  size_t count_;
  bool match_as_we_go_;
  size_t literal_count_ = 0;
  int64_t unused_[kSmallPool];     // small pools: numbers no literal has taken yet
  int64_t literals_[kMaxLiterals];  // big pools: literals, compared sorted at the end
};

}  // namespace

Verdict verify_expression(const char* expr, size_t length, const int64_t* numbers, size_t count,
                          int64_t target) {
  if (length > kMaxAnswerChars) return Verdict::kInvalid;
  ExpressionParser parser(expr, length, numbers, count);
  Rational value;
  if (length == 0 || !parser.parse(value) || !parser.used_all_numbers(numbers)) return Verdict::kInvalid;
  return (value.den == 1 && value.num == target) ? Verdict::kCorrect : Verdict::kWrong;
}

template <typename CharT>
Verdict verify(const CharT* text, size_t length, const int64_t* numbers, size_t count, int64_t target) {
  AnswerScan<CharT> scan{text + length};
  scan_answers(text, length, scan);
  const CharT* content = scan.content;
  const CharT* content_end = scan.content_end;
  if (content == nullptr) return Verdict::kNoAnswer;
  while (content < content_end && is_strip_space(content[0])) ++content;
  while (content_end > content && is_strip_space(content_end[-1])) --content_end;
  const size_t n = static_cast<size_t>(content_end - content);
  if (n > kMaxAnswerChars) return Verdict::kInvalid;
  if constexpr (sizeof(CharT) == 1) {
    // Latin-1 units: bytes >= 128 match no token class, so the parser rejects them itself.
    return verify_expression(reinterpret_cast<const char*>(content), n, numbers, count, target);
  }
  char ascii[kMaxAnswerChars];  // wider units: a unit like U+012B must not pass as '+' (0x2B)
  for (size_t k = 0; k < n; ++k) {
    const uint32_t c = static_cast<uint32_t>(content[k]);
    if (c > 127) return Verdict::kInvalid;  // every allowed character is ASCII
    ascii[k] = static_cast<char>(c);
  }
  return verify_expression(ascii, n, numbers, count, target);
}

template Verdict verify<uint8_t>(const uint8_t*, size_t, const int64_t*, size_t, int64_t);
template Verdict verify<uint16_t>(const uint16_t*, size_t, const int64_t*, size_t, int64_t);
template Verdict verify<uint32_t>(const uint32_t*, size_t, const int64_t*, size_t, int64_t);

// ---------------------------------------------------------------------------------------------
// Solver. For every proper subset of the numbers (a bitmask) it builds the set of all values that
// some valid expression over exactly those numbers reaches, with one back-pointer per value. A
// value's validity depends only on its children's values, so keeping one expression per value
// loses nothing. The full set is never built: for each split of all numbers into two parts, it
// looks for a value `a` of one part and the value `b` of the other that `a op b = target` needs.
// Six numbers: 62 subsets, the largest (five numbers) with ~1e5 values; milliseconds.
// ---------------------------------------------------------------------------------------------

namespace {

enum Op : uint8_t { kLeaf = 0, kAdd = '+', kSub = '-', kMul = '*', kDiv = '/' };

struct Node {
  Rational value;
  uint32_t left_index;   // index into the value set of left_mask
  uint32_t right_index;  // index into the value set of mask ^ left_mask
  uint8_t left_mask;
  uint8_t op;
};

// Values reachable from one subset, deduplicated by an open-addressing hash on (num, den).
class ValueSet {
 public:
  const std::vector<Node>& nodes() const { return nodes_; }

  void insert(const Node& node) {
    if ((nodes_.size() + 1) * 2 > slots_.size()) grow();
    size_t i = slot_for(node.value);
    if (slots_[i] != 0) return;  // this value already has an expression
    nodes_.push_back(node);
    slots_[i] = static_cast<uint32_t>(nodes_.size());
  }

  // Index of `value` in nodes(), or -1.
  int64_t find(const Rational& value) const {
    if (slots_.empty()) return -1;
    const uint32_t slot = slots_[slot_for(value)];
    return slot == 0 ? -1 : static_cast<int64_t>(slot) - 1;
  }

 private:
  static uint64_t hash(const Rational& v) {
    uint64_t h = static_cast<uint64_t>(v.num) * 0x9E3779B97F4A7C15ULL ^
                 static_cast<uint64_t>(v.den) * 0xC2B2AE3D27D4EB4FULL;
    return h ^ (h >> 29);
  }
  // The slot holding `value`, or the empty slot where it would go.
  size_t slot_for(const Rational& value) const {
    const size_t mask = slots_.size() - 1;
    for (size_t i = hash(value) & mask;; i = (i + 1) & mask) {
      if (slots_[i] == 0 || same(nodes_[slots_[i] - 1].value, value)) return i;
    }
  }
  void grow() {
    slots_.assign(std::max<size_t>(16, slots_.size() * 2), 0);
    for (uint32_t k = 0; k < nodes_.size(); ++k) slots_[slot_for(nodes_[k].value)] = k + 1;
  }

  std::vector<Node> nodes_;
  std::vector<uint32_t> slots_;  // 0 = empty, else node index + 1
};

class Solver {
 public:
  Solver(const std::vector<int64_t>& numbers, int64_t target)
      : numbers_(numbers), target_{target, 1}, full_((1u << numbers.size()) - 1), sets_(full_ + 1) {}

  std::optional<std::string> run() {
    for (int64_t x : numbers_) {
      if (x < 0 || x >= kValueLimit) return std::nullopt;  // not writable as a literal
    }
    if (!in_range(target_.num)) return std::nullopt;
    if (numbers_.size() == 1) {
      if (numbers_[0] != target_.num) return std::nullopt;
      return std::to_string(numbers_[0]);
    }
    // A submask is numerically smaller than its mask, so ascending order builds parts first.
    for (uint32_t mask = 1; mask < full_; ++mask) build(mask);
    return search_full();
  }

 private:
  void build(uint32_t mask) {
    ValueSet& set = sets_[mask];
    if ((mask & (mask - 1)) == 0) {
      set.insert(Node{{numbers_[__builtin_ctz(mask)], 1}, 0, 0, static_cast<uint8_t>(mask), kLeaf});
      return;
    }
    const uint32_t low = mask & -mask;
    for (uint32_t left = (mask - 1) & mask; left != 0; left = (left - 1) & mask) {
      if ((left & low) == 0) continue;  // each unordered split once; both orders below
      const uint32_t right = mask ^ left;
      const auto& as = sets_[left].nodes();
      const auto& bs = sets_[right].nodes();
      for (uint32_t i = 0; i < as.size(); ++i) {
        for (uint32_t j = 0; j < bs.size(); ++j) {
          const Rational a = as[i].value, b = bs[j].value;
          Rational r;
          if (add(a, b, r)) set.insert(Node{r, i, j, static_cast<uint8_t>(left), kAdd});
          if (mul(a, b, r)) set.insert(Node{r, i, j, static_cast<uint8_t>(left), kMul});
          if (sub(a, b, r)) set.insert(Node{r, i, j, static_cast<uint8_t>(left), kSub});
          if (sub(b, a, r)) set.insert(Node{r, j, i, static_cast<uint8_t>(right), kSub});
          if (div(a, b, r)) set.insert(Node{r, i, j, static_cast<uint8_t>(left), kDiv});
          if (div(b, a, r)) set.insert(Node{r, j, i, static_cast<uint8_t>(right), kDiv});
        }
      }
    }
  }

  // Root = (one part) op (other part) == target, for some split and op.
  std::optional<std::string> search_full() {
    const uint32_t low = full_ & -full_;
    const Rational t = target_;
    for (uint32_t left = (full_ - 1) & full_; left != 0; left = (left - 1) & full_) {
      if ((left & low) == 0) continue;
      uint32_t small = left, large = full_ ^ left;
      if (sets_[small].nodes().size() > sets_[large].nodes().size()) std::swap(small, large);
      const auto& as = sets_[small].nodes();
      for (uint32_t i = 0; i < as.size(); ++i) {
        const Rational a = as[i].value;
        // For each op, the b that would make `a op b` (or `b op a`) the target; a candidate b out
        // of range is in no set, so a failed computation just skips it.
        Rational b;
        std::optional<std::string> found;
        if (!found && sub(t, a, b)) found = lookup(small, i, large, b, '+', true);   // a + b
        if (!found && sub(a, t, b)) found = lookup(small, i, large, b, '-', true);   // a - b
        if (!found && add(t, a, b)) found = lookup(small, i, large, b, '-', false);  // b - a
        if (!found && a.num != 0 && div(t, a, b)) found = lookup(small, i, large, b, '*', true);
        if (!found && t.num != 0 && div(a, t, b)) found = lookup(small, i, large, b, '/', true);
        if (!found && a.num != 0 && mul(t, a, b)) found = lookup(small, i, large, b, '/', false);
        if (!found && a.num == 0 && t.num == 0 && !sets_[large].nodes().empty()) {
          found = accept(small, i, large, 0, '*', true);  // 0 * b = 0 for any b
        }
        if (found) return found;
      }
    }
    return std::nullopt;
  }

  std::optional<std::string> lookup(uint32_t a_mask, uint32_t a_index, uint32_t b_mask,
                                    const Rational& b, char op, bool a_left) {
    const int64_t j = sets_[b_mask].find(b);
    if (j < 0) return std::nullopt;
    return accept(a_mask, a_index, b_mask, static_cast<uint32_t>(j), op, a_left);
  }

  // Re-evaluates the candidate root exactly (cheap insurance) and renders it.
  std::optional<std::string> accept(uint32_t a_mask, uint32_t a_index, uint32_t b_mask,
                                    uint32_t b_index, char op, bool a_left) {
    const uint32_t left_mask = a_left ? a_mask : b_mask;
    const uint32_t left_index = a_left ? a_index : b_index;
    const uint32_t right_mask = a_left ? b_mask : a_mask;
    const uint32_t right_index = a_left ? b_index : a_index;
    Rational r;
    const Rational& l = sets_[left_mask].nodes()[left_index].value;
    const Rational& rr = sets_[right_mask].nodes()[right_index].value;
    if (!apply(op, l, rr, r) || !same(r, target_)) return std::nullopt;
    std::string out;
    render_binary(out, op, left_mask, left_index, right_mask, right_index);
    return out;
  }

  static int precedence(uint8_t op) {
    return op == kLeaf ? 3 : (op == kMul || op == kDiv) ? 2 : 1;
  }

  void render_into(std::string& out, uint32_t mask, uint32_t index) const {
    const Node& node = sets_[mask].nodes()[index];
    if (node.op == kLeaf) {
      out += std::to_string(node.value.num);
      return;
    }
    render_binary(out, static_cast<char>(node.op), node.left_mask, node.left_index,
                  mask ^ node.left_mask, node.right_index);
  }

  // Parentheses exactly where the left-associative grammar would otherwise build another tree,
  // so the verifier re-evaluates the very same intermediate values (the 2^62 rule is per node).
  void render_binary(std::string& out, char op, uint32_t left_mask, uint32_t left_index,
                     uint32_t right_mask, uint32_t right_index) const {
    const int p = precedence(static_cast<uint8_t>(op));
    const bool wrap_left = precedence(sets_[left_mask].nodes()[left_index].op) < p;
    const bool wrap_right = precedence(sets_[right_mask].nodes()[right_index].op) <= p;
    if (wrap_left) out += '(';
    render_into(out, left_mask, left_index);
    if (wrap_left) out += ')';
    out += op;
    if (wrap_right) out += '(';
    render_into(out, right_mask, right_index);
    if (wrap_right) out += ')';
  }

  const std::vector<int64_t>& numbers_;
  const Rational target_;
  const uint32_t full_;
  std::vector<ValueSet> sets_;
};

}  // namespace

std::optional<std::string> solve(const std::vector<int64_t>& numbers, int64_t target) {
  if (numbers.empty() || numbers.size() > kMaxSolveNumbers) return std::nullopt;
  return Solver(numbers, target).run();
}

}  // namespace countdown

// Countdown verifier and solver: exact, bounded, and safe on any text.
//
// The verifier finds the last `<answer>(.*?)</answer>` match (Python `re.findall` semantics, DOTALL)
// in one forward pass, parses the content with a small recursive-descent parser (digits, + - * / ( )
// and four whitespace characters only), and evaluates it in exact rational arithmetic with int64
// numerator/denominator and __int128 intermediates. Nothing is ever executed, nothing can overflow:
// any value whose reduced |numerator| or denominator reaches 2^62 makes the answer invalid.
//
// The text is read as an array of code units of one width (1, 2 or 4 bytes: CPython's own string
// layouts), so the bindings never encode a str to UTF-8 and the answer length is counted in code
// points for free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace countdown {

constexpr size_t kMaxAnswerChars = 1024;          // stripped answer content, in code points
constexpr int kMaxParenDepth = 100;               // deeper nesting is invalid
constexpr int64_t kValueLimit = int64_t(1) << 62;  // |numerator| and denominator stay below this
constexpr size_t kMaxSolveNumbers = 6;            // the solver is exhaustive up to this many

enum class Verdict : uint8_t {
  kNoAnswer = 0,  // no <answer>...</answer> match: reward 0
  kInvalid = 1,   // malformed, wrong numbers, division by zero, out of range: format reward
  kWrong = 2,     // valid expression whose value is not the target: format reward
  kCorrect = 3,   // valid expression equal to the target: full reward
};

struct Rational {
  int64_t num;
  int64_t den;  // always > 0, gcd(|num|, den) == 1
};

// Scores one response given as `length` code units (uint8_t, uint16_t or uint32_t).
// Never throws, never allocates, runs in O(length).
template <typename CharT>
Verdict verify(const CharT* text, size_t length, const int64_t* numbers, size_t count, int64_t target);

// Checks already-extracted, already-stripped answer content of at most kMaxAnswerChars ASCII bytes.
Verdict verify_expression(const char* expr, size_t length, const int64_t* numbers, size_t count,
                          int64_t target);

// An expression that verify() accepts as correct, or nullopt when none exists.
// Requires 1 <= numbers.size() <= kMaxSolveNumbers (the caller checks).
std::optional<std::string> solve(const std::vector<int64_t>& numbers, int64_t target);

}  // namespace countdown

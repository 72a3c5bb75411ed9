// Python bindings for the Countdown verifier/solver (module fastzero._countdown).
//
// Strings are read in CPython's own layout (PyUnicode_KIND + PyUnicode_DATA: 1, 2 or 4 bytes per
// code point) instead of being encoded to UTF-8: no copy, no allocation, lone surrogates are just
// code units, and non-ASCII text costs no more than ASCII. All arguments are validated and all
// buffers gathered under the GIL; the scan then runs with the GIL released on std::threads. The
// gathered tuple keeps every string alive even if the caller's list is mutated meanwhile.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "countdown.h"

namespace py = pybind11;
using countdown::Verdict;

namespace {

// Names an argument or an item of it in error messages ("numbers[3][1]"); formatted only on error.
struct Where {
  const char* arg;
  Py_ssize_t index = -1;
  Py_ssize_t sub_index = -1;
  Where item(Py_ssize_t k) const { return index < 0 ? Where{arg, k, -1} : Where{arg, index, k}; }
  std::string str() const {
    std::string out = arg;
    if (index >= 0) out += "[" + std::to_string(index) + "]";
    if (sub_index >= 0) out += "[" + std::to_string(sub_index) + "]";
    return out;
  }
};

struct Text {
  const void* data;
  size_t length;
  int kind;  // PyUnicode_1BYTE_KIND, _2BYTE_KIND or _4BYTE_KIND
};

// Owned reference to a new or existing object; throws the pending Python error when null.
py::object steal_or_throw(PyObject* obj) {
  if (obj == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(obj);
}

std::string type_name(PyObject* obj) { return Py_TYPE(obj)->tp_name; }

Text text_of(PyObject* obj, const Where& where) {
  if (!PyUnicode_Check(obj)) throw py::type_error(where.str() + " must be a str, got " + type_name(obj));
#if PY_VERSION_HEX < 0x030C0000
  if (PyUnicode_READY(obj) != 0) throw py::error_already_set();
#endif
  return {PyUnicode_DATA(obj), static_cast<size_t>(PyUnicode_GET_LENGTH(obj)), static_cast<int>(PyUnicode_KIND(obj))};
}

// Accepts Python ints and anything with __index__ (numpy integers); rejects bool and floats.
int64_t int_of(PyObject* obj, const Where& where) {
  if (PyLong_CheckExact(obj)) {  // the common case first: a plain int (never a bool)
    int overflow = 0;
    const long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow == 0) return value;
    throw py::value_error(where.str() + " does not fit in a signed 64-bit integer");
  }
  if (PyBool_Check(obj)) throw py::type_error(where.str() + " must be an int, got bool");
  py::object index;
  if (!PyLong_Check(obj)) {
    if (!PyIndex_Check(obj)) throw py::type_error(where.str() + " must be an int, got " + type_name(obj));
    PyObject* converted = PyNumber_Index(obj);
    if (converted == nullptr) {
      PyErr_Clear();
      throw py::type_error(where.str() + " must be an int, got " + type_name(obj));
    }
    index = py::reinterpret_steal<py::object>(converted);
    obj = converted;
  }
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (overflow != 0) throw py::value_error(where.str() + " does not fit in a signed 64-bit integer");
  if (value == -1 && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

// Converts one problem's numbers into the int64_t array that `allocate(count)` returns; returns count.
template <typename Allocate>
size_t convert_numbers(PyObject* seq, const Where& where, Allocate&& allocate) {
  if (PyList_CheckExact(seq) || PyTuple_CheckExact(seq)) {
    // Fast path: exact ints convert without running Python code, so the list cannot change under us.
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject** items = PySequence_Fast_ITEMS(seq);
    bool plain = true;
    for (Py_ssize_t k = 0; k < n && plain; ++k) plain = PyLong_CheckExact(items[k]);
    if (plain) {
      int64_t* out = allocate(static_cast<size_t>(n));
      for (Py_ssize_t k = 0; k < n; ++k) out[k] = int_of(items[k], where.item(k));
      return static_cast<size_t>(n);
    }
  }
  if (PyUnicode_Check(seq) || PyBytes_Check(seq) || !PySequence_Check(seq)) {
    throw py::type_error(where.str() + " must be a sequence of ints, got " + type_name(seq));
  }
  // General path (numpy rows, objects with __index__): our own tuple of the items first.
  PyObject* tuple_raw = PySequence_Tuple(seq);
  if (tuple_raw == nullptr) {
    PyErr_Clear();
    throw py::type_error(where.str() + " must be a sequence of ints, got " + type_name(seq));
  }
  py::object tuple = py::reinterpret_steal<py::object>(tuple_raw);
  const Py_ssize_t n = PyTuple_GET_SIZE(tuple_raw);
  std::vector<int64_t> values(static_cast<size_t>(n));  // __index__ may re-enter: fill a private copy
  for (Py_ssize_t k = 0; k < n; ++k) values[k] = int_of(PyTuple_GET_ITEM(tuple_raw, k), where.item(k));
  std::copy(values.begin(), values.end(), allocate(values.size()));
  return values.size();
}

std::vector<int64_t> numbers_of(PyObject* seq, const Where& where) {
  std::vector<int64_t> values;
  convert_numbers(seq, where, [&](size_t count) {
    values.resize(count);
    return values.data();
  });
  return values;
}

Verdict verify_text(const Text& text, const int64_t* numbers, size_t count, int64_t target) {
  switch (text.kind) {
    case PyUnicode_1BYTE_KIND:
      return countdown::verify(static_cast<const uint8_t*>(text.data), text.length, numbers, count, target);
    case PyUnicode_2BYTE_KIND:
      return countdown::verify(static_cast<const uint16_t*>(text.data), text.length, numbers, count, target);
    default:
      return countdown::verify(static_cast<const uint32_t*>(text.data), text.length, numbers, count, target);
  }
}

// One response to score: its text, its problem's numbers and target.
struct Job {
  Text text;
  const int64_t* numbers;
  size_t count;
  int64_t target;
};

// All numbers of a batch, in blocks that never move: worker threads read earlier problems'
// numbers while later ones are still being appended.
class NumberArena {
 public:
  int64_t* allocate(size_t count) {
    if (blocks_.empty() || used_ + count > blocks_.back().second) {
      const size_t capacity = std::max<size_t>(kBlockNumbers, count);
      blocks_.emplace_back(std::unique_ptr<int64_t[]>(new int64_t[capacity]), capacity);
      used_ = 0;
    }
    int64_t* out = blocks_.back().first.get() + used_;
    used_ += count;
    return out;
  }
  void clear() {  // keeps the first block for the next batch
    if (blocks_.size() > 1) blocks_.resize(1);
    used_ = 0;
  }

 private:
  static constexpr size_t kBlockNumbers = 1 << 15;
  std::vector<std::pair<std::unique_ptr<int64_t[]>, size_t>> blocks_;
  size_t used_ = 0;
};

// Memory of one score_batch call, kept between calls on the same thread: fresh multi-100-KB
// buffers on every call cost page faults comparable to the scan itself.
struct BatchScratch {
  std::vector<Job> jobs;
  std::vector<Verdict> verdicts;
  NumberArena numbers;

  void reset(size_t n) {
    jobs.resize(n);  // sized up front: workers read jobs while later ones are being filled in
    verdicts.resize(n);
    numbers.clear();
  }
  void trim() {  // keeps up to ~64k responses' worth
    if (jobs.capacity() > (size_t(1) << 16)) *this = BatchScratch();
  }
};

constexpr size_t kPrefetchAhead = 4;  // responses: hides the cache miss of jumping to the next str

inline void prefetch_text(const Text& text) {
  // The whole text (up to 4 KB): a response is scanned end to end, and a cold one comes from DRAM.
  const char* data = static_cast<const char*>(text.data);
  const size_t bytes = std::min<size_t>(text.length * static_cast<size_t>(text.kind), 4096);
  for (size_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(data + offset);
}

double reward(Verdict verdict, double format_score, double correct_score) {
  if (verdict == Verdict::kNoAnswer) return 0.0;
  return verdict == Verdict::kCorrect ? correct_score : format_score;
}

// A tuple holding the items of `arg` (which must not be a str/bytes): our own references.
py::tuple items_of(py::handle arg, const char* name) {
  PyObject* obj = arg.ptr();
  if (PyUnicode_Check(obj) || PyBytes_Check(obj) || !PySequence_Check(obj)) {
    throw py::type_error(std::string(name) + " must be a sequence, got " + type_name(obj));
  }
  return py::reinterpret_steal<py::tuple>(steal_or_throw(PySequence_Tuple(obj)).release());
}

double score(py::handle response, py::handle numbers, py::handle target, double format_score,
             double correct_score) {
  const Text text = text_of(response.ptr(), Where{"response"});
  const std::vector<int64_t> values = numbers_of(numbers.ptr(), Where{"numbers"});
  const int64_t goal = int_of(target.ptr(), Where{"target"});
  Verdict verdict;
  if (text.length > (size_t(1) << 16)) {  // long text: let other Python threads run meanwhile
    py::gil_scoped_release release;
    verdict = verify_text(text, values.data(), values.size(), goal);
  } else {
    verdict = verify_text(text, values.data(), values.size(), goal);
  }
  return reward(verdict, format_score, correct_score);
}

// Helper threads started once per process and kept: starting threads on every call costs tens of
// microseconds each (as much as scoring a thousand responses), and on a busy machine a fresh
// thread may not run for milliseconds. A caller never waits for a helper that has not started
// working: it does the work itself, then waits only for helpers already inside the task.
class HelperPool {
 public:
  static HelperPool& instance() {
    static HelperPool* pool = new HelperPool();  // never destroyed: no joins at interpreter exit
    if (pool->pid_ != getpid()) pool = new HelperPool();  // forked child: the threads are gone
    return *pool;
  }

  // Offers `task` to up to `helpers` threads; false when another call is using the pool (the
  // caller then simply does all the work itself).
  bool offer(const std::function<void()>* task, size_t helpers) {
    bool expected = false;
    if (helpers == 0 || !busy_.compare_exchange_strong(expected, true)) return false;
    std::lock_guard<std::mutex> lock(mutex_);
    while (threads_started_ < helpers) {
      std::thread([this] { loop(); }).detach();
      ++threads_started_;
    }
    task_ = task;
    seats_ = helpers;
    wake_.notify_all();
    return true;
  }

  // Withdraws the task and waits for the helpers inside it to leave; call after a successful offer.
  void withdraw() {
    std::unique_lock<std::mutex> lock(mutex_);
    task_ = nullptr;
    seats_ = 0;
    left_.wait(lock, [this] { return inside_ == 0; });
    busy_.store(false);
  }

 private:
  HelperPool() : pid_(getpid()) {}

  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return task_ != nullptr && seats_ > 0; });
      --seats_;
      ++inside_;
      const std::function<void()>* task = task_;
      lock.unlock();
      (*task)();
      lock.lock();
      if (--inside_ == 0) left_.notify_all();
    }
  }

  const pid_t pid_;
  std::atomic<bool> busy_{false};  // set by the one call currently using the pool (may re-enter)
  std::mutex mutex_;  // guards everything below
  std::condition_variable wake_, left_;
  const std::function<void()>* task_ = nullptr;
  size_t seats_ = 0;  // helpers that may still join the current task
  size_t inside_ = 0;
  size_t threads_started_ = 0;
};

// Scores jobs [0, n) in chunks on the calling thread plus pool helpers, each chunk once the
// calling thread has published it (`ready`). Helpers start before the arguments are all
// converted, so conversion (which needs the GIL, one thread) overlaps with scoring (which does
// not): they read only str buffers we hold references to (immutable) and plain C++ memory.
class ScoringCrew {
 public:
  ScoringCrew(const std::vector<Job>& jobs, std::vector<Verdict>& verdicts, size_t threads)
      : jobs_(jobs), verdicts_(verdicts), n_(jobs.size()), task_([this] { work(); }) {
    offered_ = threads > 1 && HelperPool::instance().offer(&task_, threads - 1);
  }
  ~ScoringCrew() {  // also on an exception while converting: helpers stop before memory goes away
    aborted_.store(true);
    if (offered_) HelperPool::instance().withdraw();
  }
  void publish(size_t ready) { ready_.store(ready, std::memory_order_release); }
  // The calling thread works too (GIL released by the caller), then waits for helpers' last chunks.
  void finish() {
    publish(n_);
    work();
    if (offered_) HelperPool::instance().withdraw();
    offered_ = false;
  }

  static constexpr size_t kChunk = 64;  // small enough to balance uneven response lengths

 private:
  void work() {
    for (size_t begin; (begin = next_.fetch_add(kChunk)) < n_;) {
      const size_t end = std::min(n_, begin + kChunk);
      for (int spins = 0; ready_.load(std::memory_order_acquire) < end; ++spins) {
        if (aborted_.load()) return;
        if (spins < 64) {
          std::this_thread::yield();
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(20));
        }
      }
      for (size_t i = begin; i < end; ++i) {
        if (i + kPrefetchAhead < end) prefetch_text(jobs_[i + kPrefetchAhead].text);
        const Job& job = jobs_[i];
        verdicts_[i] = verify_text(job.text, job.numbers, job.count, job.target);
      }
    }
  }

  const std::vector<Job>& jobs_;
  std::vector<Verdict>& verdicts_;
  const size_t n_;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> ready_{0};
  std::atomic<bool> aborted_{false};
  const std::function<void()> task_;
  bool offered_ = false;
};

py::list score_batch(py::handle responses, py::handle numbers, py::handle targets, double format_score,
                     double correct_score, int num_threads) {
  if (num_threads < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(num_threads));
  const py::tuple response_items = items_of(responses, "responses");
  const py::tuple number_items = items_of(numbers, "numbers");
  const py::tuple target_items = items_of(targets, "targets");
  const size_t n = response_items.size();
  if (number_items.size() != n || target_items.size() != n) {
    throw py::value_error("responses, numbers and targets must have the same length, got " +
                          std::to_string(n) + ", " + std::to_string(number_items.size()) + " and " +
                          std::to_string(target_items.size()));
  }
  // A nested call on this thread (from a user __index__ while converting) gets its own scratch.
  thread_local BatchScratch cached;
  thread_local bool cached_in_use = false;
  BatchScratch nested;
  const bool use_cached = !cached_in_use;
  BatchScratch& scratch = use_cached ? cached : nested;
  struct InUse {
    bool active;
    explicit InUse(bool a) : active(a) { if (active) cached_in_use = true; }
    ~InUse() { if (active) cached_in_use = false; }
  } in_use(use_cached);
  scratch.reset(n);

  const size_t chunks = (n + ScoringCrew::kChunk - 1) / ScoringCrew::kChunk;
  {
    ScoringCrew crew(scratch.jobs, scratch.verdicts, std::min<size_t>(static_cast<size_t>(num_threads), chunks));
    PyObject* const texts = response_items.ptr();
    for (size_t i = 0; i < n; ++i) {
      const auto k = static_cast<Py_ssize_t>(i);
      if (i + kPrefetchAhead < n) __builtin_prefetch(PyTuple_GET_ITEM(texts, k + kPrefetchAhead));
      Job& job = scratch.jobs[i];
      job.text = text_of(PyTuple_GET_ITEM(texts, k), Where{"responses", k});
      job.count = convert_numbers(PyTuple_GET_ITEM(number_items.ptr(), k), Where{"numbers", k},
                                  [&](size_t count) {
                                    int64_t* out = scratch.numbers.allocate(count);
                                    job.numbers = out;
                                    return out;
                                  });
      job.target = int_of(PyTuple_GET_ITEM(target_items.ptr(), k), Where{"targets", k});
      if ((i + 1) % ScoringCrew::kChunk == 0) crew.publish(i + 1);
    }
    py::gil_scoped_release release;
    crew.finish();
  }

  // Only three distinct rewards exist: share three float objects instead of making n of them.
  const py::float_ rewards[4] = {py::float_(0.0), py::float_(format_score), py::float_(format_score),
                                 py::float_(correct_score)};
  py::list out(n);
  for (size_t i = 0; i < n; ++i) {
    PyObject* value = rewards[static_cast<int>(scratch.verdicts[i])].ptr();
    Py_INCREF(value);
    PyList_SET_ITEM(out.ptr(), i, value);
  }
  scratch.trim();
  return out;
}

py::object solve(py::handle numbers, py::handle target) {
  const std::vector<int64_t> values = numbers_of(numbers.ptr(), Where{"numbers"});
  if (values.empty() || values.size() > countdown::kMaxSolveNumbers) {
    throw py::value_error("solve needs 1 to " + std::to_string(countdown::kMaxSolveNumbers) +
                          " numbers, got " + std::to_string(values.size()));
  }
  const int64_t goal = int_of(target.ptr(), Where{"target"});
  std::optional<std::string> expression;
  {
    py::gil_scoped_release release;
    expression = countdown::solve(values, goal);
  }
  if (!expression) return py::none();
  return py::str(*expression);
}

}  // namespace

PYBIND11_MODULE(_countdown, m) {
  m.doc() = "C++ Countdown verifier and solver; use fastzero.tasks.countdown.verifier instead.";
  m.def("score", &score, py::arg("response"), py::arg("numbers"), py::arg("target"),
        py::arg("format_score"), py::arg("correct_score"));
  m.def("score_batch", &score_batch, py::arg("responses"), py::arg("numbers"), py::arg("targets"),
        py::arg("format_score"), py::arg("correct_score"), py::arg("num_threads"));
  m.def("solve", &solve, py::arg("numbers"), py::arg("target"));
  m.attr("MAX_ANSWER_CHARS") = countdown::kMaxAnswerChars;
  m.attr("MAX_PAREN_DEPTH") = countdown::kMaxParenDepth;
  m.attr("VALUE_LIMIT") = countdown::kValueLimit;
  m.attr("MAX_SOLVE_NUMBERS") = countdown::kMaxSolveNumbers;
}

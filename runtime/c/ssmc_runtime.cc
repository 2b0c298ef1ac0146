// ssmc_runtime.cc -- libssmc.so: the C API of ssmc.h. It links libc, libdl and the C++ standard
// library only, no TVM: a static artifact's library (ssmc_static_abi.h) is dlopened and called
// directly; a VM artifact's library is run by the plugin libssmc_vm.so (ssmc_vm.h, ssmc_vm.cc), which
// this library dlopens from its own directory the first time a VM artifact is opened.
//
// Sections: SHA-256 | errors and small helpers | JSON | the manifest schema (manifest.schema.json, compiled
// in) | manifest reading, signatures and artifact verification | executors (static, VM plugin) | the policy
// (buffers, one step, commit) | the C API. The schema and the rules between fields are those of
// ssmc/artifact/schema.py, in the same order and words; tests/test_security.py runs the bad-manifest corpus
// (tests/manifest_corpus) through both and requires identical messages, and tests/test_runtime.py holds the
// two to the same verdicts on tampered artifacts. docs/security.md has the threat model.

#include "ssmc.h"
#include "ssmc_static_abi.h"
#include "ssmc_vm.h"
#include "vendor/monocypher/monocypher-ed25519.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#ifndef SSMC_VERSION
#define SSMC_VERSION "0.1.0"
#endif

namespace {

// ===================================================================================== SHA-256
// FIPS 180-4. Files are hashed in 64 KiB chunks (FileSha256); tests compare against Python's hashlib.

class Sha256 {
 public:
  Sha256() { Reset(); }

  void Update(const uint8_t* data, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      block_[used_++] = data[i];
      if (used_ == 64) {
        Compress();
        used_ = 0;
      }
    }
    bits_ += static_cast<uint64_t>(n) * 8;
  }

  std::string HexDigest() {
    uint64_t bits = bits_;
    uint8_t pad = 0x80;
    Update(&pad, 1);
    uint8_t zero = 0;
    while (used_ != 56) Update(&zero, 1);
    for (int i = 7; i >= 0; --i) {
      uint8_t b = static_cast<uint8_t>(bits >> (8 * i));
      Update(&b, 1);
    }
    static const char* kHex = "0123456789abcdef";
    std::string out;
    for (uint32_t word : h_) {
      for (int i = 3; i >= 0; --i) {
        uint8_t b = static_cast<uint8_t>(word >> (8 * i));
        out += kHex[b >> 4];
        out += kHex[b & 15];
      }
    }
    Reset();
    return out;
  }

 private:
  static uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void Reset() {
    static const uint32_t kInit[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::memcpy(h_, kInit, sizeof(h_));
    used_ = 0;
    bits_ = 0;
  }

  void Compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = (uint32_t(block_[4 * i]) << 24) | (uint32_t(block_[4 * i + 1]) << 16) |
             (uint32_t(block_[4 * i + 2]) << 8) | uint32_t(block_[4 * i + 3]);
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h_[0] += a; h_[1] += b; h_[2] += c; h_[3] += d;
    h_[4] += e; h_[5] += f; h_[6] += g; h_[7] += h;
  }

  uint32_t h_[8];
  uint8_t block_[64];
  size_t used_;
  uint64_t bits_;
};

// ======================================================================= errors and helpers

// A failure with the one-line message the caller reads through ssmc_last_error.
struct Failure {
  ssmc_status status;
  std::string message;
};

[[noreturn]] void Fail(ssmc_status status, std::string message) { throw Failure{status, std::move(message)}; }

thread_local std::string g_open_error;  // ssmc_last_error(NULL)

constexpr size_t kAlign = SSMC_STATIC_ALIGN;  // also TVM's kAllocAlignment: kernels may assume it
static_assert(kAlign == 64, "buffers are 64-byte aligned");
constexpr int kFormatVersion = 2;
constexpr uint64_t kMaxManifestBytes = 16u << 20;
constexpr int kMaxJsonDepth = 64;
constexpr uint64_t kMaxTensorBytes = uint64_t{1} << 30;
constexpr const char* kStaticEntry = "ssmc_static_step";

#if defined(__aarch64__)
constexpr const char* kArch = "aarch64";
#elif defined(__x86_64__)
constexpr const char* kArch = "x86_64";
#else
constexpr const char* kArch = "unknown";
#endif

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint8_t, AlignedFree>;

// bytes rounded up to the alignment (at least one line), zeroed.
Buffer AllocBuffer(uint64_t bytes) {
  uint64_t rounded = bytes == 0 ? kAlign : ((bytes + kAlign - 1) / kAlign) * kAlign;
  void* p = rounded > SIZE_MAX ? nullptr : std::aligned_alloc(kAlign, static_cast<size_t>(rounded));
  if (p == nullptr) Fail(SSMC_ERR_RUNTIME, "out of memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(p, 0, static_cast<size_t>(rounded));
  return Buffer(static_cast<uint8_t*>(p));
}

// Newlines and other control characters become spaces: every message is one line.
std::string OneLine(const char* text, size_t max_chars = 1000) {
  std::string s(text == nullptr ? "" : text);
  if (s.size() > max_chars) s = s.substr(0, max_chars) + "...";
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  return s;
}

std::string DlError() {
  const char* e = dlerror();
  return OneLine(e == nullptr ? "unknown dlopen error" : e);
}

struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// read() until n bytes or the end of the file; -1 on error.
ssize_t ReadFull(int fd, uint8_t* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

// The file's sha256 (lowercase hex) and the bytes read, in 64 KiB chunks; links are not followed.
// The chunk is the open's largest allocation: at 1 MiB (before) it was 0.8 MiB of the C loop's peak
// RSS once the reference file (1.6 MB for DeMa) filled it (VmHWM 3.9 -> 3.0 MiB for DeMa int8 with
// 64 KiB), and opening took no longer for it (open + one step: 14.1 ms at 1 MiB, 13.2 ms at 64 KiB).
std::string FileSha256(const std::string& path, const std::string& name, uint64_t* bytes_read) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (f.fd < 0) Fail(SSMC_ERR_ARTIFACT, name + ": cannot be read");
  Sha256 sha;
  std::vector<uint8_t> chunk(1 << 16);
  uint64_t total = 0;
  for (;;) {
    ssize_t got = ReadFull(f.fd, chunk.data(), chunk.size());
    if (got < 0) Fail(SSMC_ERR_ARTIFACT, name + ": cannot be read");
    if (got == 0) break;
    sha.Update(chunk.data(), static_cast<size_t>(got));
    total += static_cast<uint64_t>(got);
  }
  *bytes_read = total;
  return sha.HexDigest();
}

// ====================================================================================== JSON
// RFC 8259, read as Python's json.loads reads it (the manifest's other reader, ssmc/artifact.py):
// the text must be UTF-8 (checked first, with Python's reasons), NaN/Infinity and trailing commas
// are refused, a repeated object key keeps its last value, and \u escapes of lone surrogates are
// kept (encoded as the three bytes UTF-8 would give them), as Python keeps them. Containers may
// nest kMaxJsonDepth deep: the parser recurses once per level, so deeper text is refused before
// it can exhaust the stack.

struct Json {
  enum Type : uint8_t { kNull, kBool, kInt, kDouble, kString, kArray, kObject };
  Type type = kNull;
  bool boolean = false;
  int64_t integer = 0;  // kInt (a number without fraction or exponent that fits int64)
  double number = 0.0;  // kDouble
  std::string string;
  std::vector<std::string> keys;  // kObject: member names in file order
  std::vector<Json> items;        // kArray: elements; kObject: items[i] is the value of keys[i]

  // The member called key (its last occurrence), or NULL.
  const Json* Find(const std::string& key) const {
    for (size_t i = keys.size(); i-- > 0;) {
      if (keys[i] == key) return &items[i];
    }
    return nullptr;
  }
};

// Python's verdict on decoding text as UTF-8: NULL if it decodes, else the reason (*at: the offset of
// the sequence's first byte).
const char* Utf8Error(const std::string& text, size_t* at) {
  const auto* b = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = b[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // the second byte's range; later bytes are 0x80..0xBF
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
    } else {
      *at = i;
      return "invalid start byte";
    }
    for (size_t k = 1; k < len; ++k) {
      if (i + k >= n) {
        *at = i;
        return "unexpected end of data";
      }
      const unsigned d = b[i + k];
      if (d < (k == 1 ? lo : 0x80u) || d > (k == 1 ? hi : 0xBFu)) {
        *at = i;
        return "invalid continuation byte";
      }
    }
    i += len;
  }
  return nullptr;
}

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : begin_(text.data()), p_(begin_), end_(begin_ + text.size()) {}

  Json Document() {
    Json root;
    Space();
    Value(root, 0);
    Space();
    if (p_ != end_) Error("extra data after the value");
    return root;
  }

 private:
  [[noreturn]] void Error(const char* what) const {
    size_t line = 1, column = 1;
    for (const char* q = begin_; q < p_; ++q) {
      if (*q == '\n') {
        ++line;
        column = 1;
      } else if ((static_cast<unsigned char>(*q) & 0xC0) != 0x80) {
        ++column;  // characters, not bytes, as Python counts
      }
    }
    Fail(SSMC_ERR_ARTIFACT, std::string("manifest.json: not valid JSON (") + what + " at line " +
                                std::to_string(line) + " column " + std::to_string(column) + ")");
  }

  bool At(char c) const { return p_ < end_ && *p_ == c; }
  bool AtDigit() const { return p_ < end_ && *p_ >= '0' && *p_ <= '9'; }

  void Space() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  void Value(Json& v, int depth) {
    if (p_ == end_) Error("expecting a value");
    switch (*p_) {
      case '{':
        return Object(v, depth + 1);
      case '[':
        return Array(v, depth + 1);
      case '"':
        v.type = Json::kString;
        return String(v.string);
      case 't':
        Literal("true");
        v.type = Json::kBool;
        v.boolean = true;
        return;
      case 'f':
        Literal("false");
        v.type = Json::kBool;
        return;
      case 'n':
        Literal("null");
        return;
      default:
        if (At('-') || AtDigit()) return Number(v);
        Error("expecting a value");
    }
  }

  void Enter(int depth) const {
    if (depth > kMaxJsonDepth) Error("nested deeper than 64 levels");
  }

  void Object(Json& v, int depth) {
    Enter(depth);
    v.type = Json::kObject;
    ++p_;
    Space();
    if (At('}')) {
      ++p_;
      return;
    }
    for (;;) {
      Space();
      if (!At('"')) Error("expecting a property name in double quotes");
      v.keys.emplace_back();
      String(v.keys.back());
      Space();
      if (!At(':')) Error("expecting ':' delimiter");
      ++p_;
      Space();
      v.items.emplace_back();
      Value(v.items.back(), depth);
      Space();
      if (At(',')) {
        ++p_;
        continue;
      }
      if (At('}')) {
        ++p_;
        return;
      }
      Error("expecting ',' delimiter");
    }
  }

  void Array(Json& v, int depth) {
    Enter(depth);
    v.type = Json::kArray;
    ++p_;
    Space();
    if (At(']')) {
      ++p_;
      return;
    }
    for (;;) {
      Space();
      v.items.emplace_back();
      Value(v.items.back(), depth);
      Space();
      if (At(',')) {
        ++p_;
        continue;
      }
      if (At(']')) {
        ++p_;
        return;
      }
      Error("expecting ',' delimiter");
    }
  }

  void Literal(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) Error("expecting a value");
    p_ += n;
  }

  uint32_t Hex4() {
    if (end_ - p_ < 4) Error("invalid \\uXXXX escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else Error("invalid \\uXXXX escape");
    }
    return v;
  }

  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {  // a lone surrogate too (as Python keeps it)
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  void String(std::string& out) {
    ++p_;  // the opening quote
    for (;;) {
      if (p_ == end_) Error("unterminated string");
      const unsigned char c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return;
      }
      if (c < 0x20) Error("invalid control character in a string");
      if (c != '\\') {  // the text was checked to be UTF-8 before parsing
        out += static_cast<char>(c);
        ++p_;
        continue;
      }
      ++p_;
      if (p_ == end_) Error("unterminated string");
      switch (*p_++) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = Hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF && end_ - p_ >= 6 && p_[0] == '\\' && p_[1] == 'u') {
            const char* save = p_;
            p_ += 2;
            const uint32_t low = Hex4();
            if (low >= 0xDC00 && low <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else {
              p_ = save;  // a lone high surrogate; the next escape stands alone
            }
          }
          AppendUtf8(out, cp);
          break;
        }
        default:
          p_ -= 2;  // at the backslash, as Python reports it
          Error("invalid \\escape");
      }
    }
  }

  void Number(Json& v) {
    const char* start = p_;
    if (At('-')) ++p_;
    if (!AtDigit()) Error("expecting a value");
    if (At('0')) {
      ++p_;
    } else {
      while (AtDigit()) ++p_;
    }
    bool integral = true;
    if (At('.')) {
      integral = false;
      ++p_;
      if (!AtDigit()) Error("expecting digits after the decimal point");
      while (AtDigit()) ++p_;
    }
    if (At('e') || At('E')) {
      integral = false;
      ++p_;
      if (At('+') || At('-')) ++p_;
      if (!AtDigit()) Error("expecting digits in the exponent");
      while (AtDigit()) ++p_;
    }
    if (integral) {
      const bool negative = *start == '-';
      const uint64_t limit = negative ? uint64_t{1} << 63 : (uint64_t{1} << 63) - 1;
      uint64_t magnitude = 0;
      bool fits = true;
      for (const char* q = start + (negative ? 1 : 0); q < p_ && fits; ++q) {
        const uint64_t d = static_cast<uint64_t>(*q - '0');
        if (magnitude > (limit - d) / 10) fits = false;
        else magnitude = magnitude * 10 + d;
      }
      if (fits) {
        v.type = Json::kInt;
        v.integer = negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
        return;
      }
    }
    // Fractions, exponents and integers beyond int64: a double, read in the C locale whatever the
    // process set (a host program's setlocale must not turn "0.5" into 0).
    static const locale_t c_locale = newlocale(LC_ALL_MASK, "C", static_cast<locale_t>(nullptr));
    if (c_locale == static_cast<locale_t>(nullptr)) Fail(SSMC_ERR_RUNTIME, "cannot create the C locale");
    const std::string token(start, p_);
    v.type = Json::kDouble;
    v.number = strtod_l(token.c_str(), nullptr, c_locale);
    if (!std::isfinite(v.number)) {  // 1e999: Python reads inf, which no manifest may hold
      p_ = start;
      Error("number out of range");
    }
  }

  const char* begin_;
  const char* p_;
  const char* end_;
};

// ============================================================================ the manifest schema
// manifest.schema.json, the one definition of a manifest (Python validates with jsonschema against the
// same file, ssmc/artifact/schema.py), is compiled into this library (the Makefile wraps it as a raw
// string literal) and interpreted here. The interpreter knows the JSON Schema 2020-12 keywords that file
// uses and refuses any other, so the schema cannot say something this reader silently ignores. Messages
// are worded exactly as Python's (field paths like inputs[0].dtype), which the shared bad-manifest corpus
// (tests/manifest_corpus) checks case by case.

const char kSchemaText[] =
#include "ssmc_schema.inc"
    ;

// A field path: keys joined by '.', array indices as [i] (Python's _path in ssmc/artifact/schema.py).
std::string JoinPath(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }
std::string IndexPath(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + OneLine(n.c_str(), 200);
  return out;
}

// Code points in UTF-8 text (a lone surrogate's three bytes count once, as Python counts it).
size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool IsHex(char c, bool lower_only) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (!lower_only && c >= 'A' && c <= 'F');
}

bool SafeRelativeName(const std::string& name);

// ISO 8601 as ssmc writes it: YYYY-MM-DDTHH:MM:SS, optional .f (1-6 digits), optional Z or +HH:MM/-HH:MM.
bool IsCreatedTime(const std::string& s) {
  auto digits = [&](size_t at, size_t n, int lo, int hi) {
    if (at + n > s.size()) return false;
    int v = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      v = v * 10 + (s[i] - '0');
    }
    return v >= lo && v <= hi;
  };
  if (s.size() < 19 || !digits(0, 4, 1, 9999) || s[4] != '-' || !digits(5, 2, 1, 12) || s[7] != '-' ||
      !digits(8, 2, 1, 31) || s[10] != 'T' || !digits(11, 2, 0, 23) || s[13] != ':' || !digits(14, 2, 0, 59) ||
      s[16] != ':' || !digits(17, 2, 0, 59)) {
    return false;
  }
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    size_t j = i + 1;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    if (j == i + 1 || j - i - 1 > 6) return false;
    i = j;
  }
  if (i == s.size()) return true;
  if (s[i] == 'Z') return i + 1 == s.size();
  if (s[i] != '+' && s[i] != '-') return false;
  return s.size() == i + 6 && digits(i + 1, 2, 0, 23) && s[i + 3] == ':' && digits(i + 4, 2, 0, 59);
}

// NULL when s has the format, else what it must be (the same sentences as Python's FORMATS).
const char* FormatError(const std::string& format, const std::string& s) {
  if (format == "ssmc-text") {
    return s.find('\0') == std::string::npos ? nullptr : "must not contain NUL characters";
  }
  if (format == "ssmc-sha256") {
    bool ok = s.size() == 64;
    for (char c : s) ok = ok && IsHex(c, true);
    return ok ? nullptr : "must be 64 lowercase hex digits";
  }
  if (format == "ssmc-tensor-name") {
    const bool ok = !s.empty() && CodePoints(s) <= 256 && s.find_first_of(std::string("/\\\0", 3)) == std::string::npos;
    return ok ? nullptr : "is not a valid tensor name (1 to 256 characters, no '/', '\\' or NUL)";
  }
  if (format == "ssmc-file-name") {
    const bool ok = CodePoints(s) <= 1024 && SafeRelativeName(s) && s != "manifest.json" && s != "manifest.sig";
    return ok ? nullptr : "is not a valid artifact file name (a relative path without '..', hidden parts or backslashes)";
  }
  if (format == "ssmc-created") {
    return IsCreatedTime(s) ? nullptr : "is not an ISO 8601 time (YYYY-MM-DDTHH:MM:SS[.ffffff][Z|+HH:MM])";
  }
  return "";  // unknown format: refused when the schema is loaded
}

std::string NumberText(const Json& n) {
  if (n.type == Json::kInt) return std::to_string(n.integer);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", n.number);
  return buf;
}

double AsDouble(const Json& n) { return n.type == Json::kInt ? static_cast<double>(n.integer) : n.number; }

// a < b for two JSON numbers, exactly when both are integers.
int CompareNumbers(const Json& a, const Json& b) {
  if (a.type == Json::kInt && b.type == Json::kInt) return a.integer < b.integer ? -1 : (a.integer > b.integer ? 1 : 0);
  const double x = AsDouble(a), y = AsDouble(b);
  return x < y ? -1 : (x > y ? 1 : 0);
}

const char* TypeWords(const std::string& t) {
  if (t == "object") return "an object";
  if (t == "array") return "a list";
  if (t == "string") return "a string";
  if (t == "integer") return "an integer";
  if (t == "number") return "a number";
  if (t == "boolean") return "true or false";
  if (t == "null") return "null";
  return "?";
}

bool HasType(const Json& v, const std::string& t) {
  switch (v.type) {
    case Json::kNull: return t == "null";
    case Json::kBool: return t == "boolean";
    case Json::kInt: return t == "integer" || t == "number";
    case Json::kDouble: return t == "number";
    case Json::kString: return t == "string";
    case Json::kArray: return t == "array";
    case Json::kObject: return t == "object";
  }
  return false;
}

bool JsonEqual(const Json& a, const Json& b) {
  const bool num_a = a.type == Json::kInt || a.type == Json::kDouble, num_b = b.type == Json::kInt || b.type == Json::kDouble;
  if (num_a || num_b) return num_a && num_b && CompareNumbers(a, b) == 0;
  if (a.type != b.type) return false;
  switch (a.type) {
    case Json::kNull: return true;
    case Json::kBool: return a.boolean == b.boolean;
    case Json::kString: return a.string == b.string;
    default: return false;  // the schema's enums and consts hold scalars only (checked at load)
  }
}

class Schema {
 public:
  // The compiled-in schema, parsed and checked once.
  static const Schema& Get() {
    static const Schema* schema = [] {
      auto* s = new Schema();
      s->root_ = JsonParser(std::string(kSchemaText)).Document();
      s->CheckSchema(s->root_, "#");
      return s;
    }();
    return *schema;
  }

  // Throws a Failure naming the first violation (where: "manifest.json").
  void Validate(const Json& v) const { Check(root_, v, ""); }

 private:
  [[noreturn]] static void Bad(const std::string& path, const std::string& what) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: " + (path.empty() ? what : "field " + path + ": " + what));
  }

  // Every keyword this interpreter implements, and the annotations it ignores.
  void CheckSchema(const Json& s, const std::string& at) const {
    static const char* kKnown[] = {"type", "enum", "const", "format", "minLength", "maxLength", "minimum", "maximum",
                                   "exclusiveMinimum", "exclusiveMaximum", "items", "minItems", "maxItems",
                                   "required", "properties", "additionalProperties", "propertyNames",
                                   "maxProperties", "$ref", "$defs", "$schema", "$id", "title", "description",
                                   "$comment", "x-ssmc-rules"};
    if (s.type != Json::kObject) Fail(SSMC_ERR_RUNTIME, "manifest schema: " + at + " is not a schema object");
    for (size_t i = 0; i < s.keys.size(); ++i) {
      const std::string& k = s.keys[i];
      bool known = false;
      for (const char* n : kKnown) known = known || k == n;
      if (!known) Fail(SSMC_ERR_RUNTIME, "manifest schema: " + at + " uses " + k + ", which this runtime does not implement");
      const Json& sub = s.items[i];
      if (k == "items" || k == "propertyNames" || (k == "additionalProperties" && sub.type == Json::kObject)) {
        CheckSchema(sub, at + "/" + k);
      } else if (k == "properties" || k == "$defs") {
        for (size_t j = 0; j < sub.keys.size(); ++j) CheckSchema(sub.items[j], at + "/" + k + "/" + sub.keys[j]);
      } else if (k == "format") {
        if (sub.type != Json::kString || (sub.string != "ssmc-text" && sub.string != "ssmc-sha256" &&
                                          sub.string != "ssmc-tensor-name" && sub.string != "ssmc-file-name" &&
                                          sub.string != "ssmc-created")) {
          Fail(SSMC_ERR_RUNTIME, "manifest schema: " + at + " names an unknown format");
        }
      } else if (k == "enum" || k == "const") {
        const std::vector<Json> one = k == "const" ? std::vector<Json>{sub} : sub.items;
        for (const Json& e : one) {
          if (e.type == Json::kArray || e.type == Json::kObject) Fail(SSMC_ERR_RUNTIME, "manifest schema: " + at + ": non-scalar " + k);
        }
      } else if (k == "$ref") {
        Resolve(sub, at);
      }
    }
  }

  const Json& Resolve(const Json& ref, const std::string& at) const {
    static const std::string kPrefix = "#/$defs/";
    if (ref.type == Json::kString && ref.string.compare(0, kPrefix.size(), kPrefix) == 0) {
      if (const Json* defs = root_.Find("$defs")) {
        if (const Json* target = defs->Find(ref.string.substr(kPrefix.size()))) return *target;
      }
    }
    Fail(SSMC_ERR_RUNTIME, "manifest schema: " + at + ": unresolvable $ref");
  }

  void Check(const Json& s, const Json& v, const std::string& path) const {
    if (const Json* ref = s.Find("$ref")) Check(Resolve(*ref, path), v, path);
    if (const Json* type = s.Find("type")) {
      const std::vector<Json> types = type->type == Json::kArray ? type->items : std::vector<Json>{*type};
      bool ok = false;
      std::string words;
      for (const Json& t : types) {
        ok = ok || HasType(v, t.string);
        words += (words.empty() ? "" : " or ") + std::string(TypeWords(t.string));
      }
      if (!ok) Bad(path, "must be " + words);
    }
    if (const Json* c = s.Find("const")) {
      if (!JsonEqual(*c, v)) Bad(path, "must be " + (c->type == Json::kString ? c->string : NumberText(*c)));
    }
    if (const Json* e = s.Find("enum")) {
      bool ok = false;
      std::vector<std::string> names;
      for (const Json& x : e->items) {
        ok = ok || JsonEqual(x, v);
        names.push_back(x.type == Json::kString ? x.string : NumberText(x));
      }
      if (!ok) Bad(path, "must be one of " + JoinNames(names));
    }
    if (v.type == Json::kString) {
      if (const Json* f = s.Find("format")) {
        if (const char* why = FormatError(f->string, v.string)) Bad(path, why);
      }
      if (const Json* n = s.Find("minLength")) {
        if (static_cast<int64_t>(CodePoints(v.string)) < n->integer) {
          Bad(path, n->integer == 1 ? "must not be empty" : "must have at least " + NumberText(*n) + " characters");
        }
      }
      if (const Json* n = s.Find("maxLength")) {
        if (static_cast<int64_t>(CodePoints(v.string)) > n->integer) Bad(path, "must have at most " + NumberText(*n) + " characters");
      }
    }
    if (v.type == Json::kInt || v.type == Json::kDouble) {
      if (const Json* n = s.Find("minimum")) {
        if (CompareNumbers(v, *n) < 0) Bad(path, "must be >= " + NumberText(*n));
      }
      if (const Json* n = s.Find("exclusiveMinimum")) {
        if (CompareNumbers(v, *n) <= 0) Bad(path, "must be > " + NumberText(*n));
      }
      if (const Json* n = s.Find("maximum")) {
        if (CompareNumbers(v, *n) > 0) Bad(path, "must be <= " + NumberText(*n));
      }
      if (const Json* n = s.Find("exclusiveMaximum")) {
        if (CompareNumbers(v, *n) >= 0) Bad(path, "must be < " + NumberText(*n));
      }
    }
    if (v.type == Json::kArray) {
      if (const Json* n = s.Find("minItems")) {
        if (static_cast<int64_t>(v.items.size()) < n->integer) Bad(path, "must have at least " + NumberText(*n) + " items");
      }
      if (const Json* n = s.Find("maxItems")) {
        if (static_cast<int64_t>(v.items.size()) > n->integer) Bad(path, "must have at most " + NumberText(*n) + " items");
      }
      if (const Json* items = s.Find("items")) {
        for (size_t i = 0; i < v.items.size(); ++i) Check(*items, v.items[i], IndexPath(path, i));
      }
    }
    if (v.type == Json::kObject) {
      // A repeated key counts once, with its last value (as Python's dict keeps it).
      std::vector<size_t> members;
      for (size_t i = 0; i < v.keys.size(); ++i) {
        if (v.Find(v.keys[i]) == &v.items[i]) members.push_back(i);
      }
      if (const Json* req = s.Find("required")) {
        std::vector<std::string> missing;
        for (const Json& r : req->items) {
          if (v.Find(r.string) == nullptr) missing.push_back(r.string);
        }
        if (!missing.empty()) Bad(path, "missing field(s) " + JoinNames(missing));
      }
      if (const Json* n = s.Find("maxProperties")) {
        if (static_cast<int64_t>(members.size()) > n->integer) Bad(path, "must have at most " + NumberText(*n) + " fields");
      }
      const Json* props = s.Find("properties");
      const Json* extra = s.Find("additionalProperties");
      if (extra != nullptr && extra->type == Json::kBool && !extra->boolean) {
        std::vector<std::string> unknown;
        for (size_t i : members) {
          if (props == nullptr || props->Find(v.keys[i]) == nullptr) unknown.push_back(v.keys[i]);
        }
        std::sort(unknown.begin(), unknown.end());
        if (!unknown.empty()) {
          Bad(path, "unknown field(s) " + JoinNames(unknown) + (path.empty() ? " (put extras under 'extra')" : ""));
        }
      }
      if (const Json* names = s.Find("propertyNames")) {
        for (size_t i : members) {
          Json key;
          key.type = Json::kString;
          key.string = v.keys[i];
          try {
            Check(*names, key, "");
          } catch (const Failure& f) {
            const std::string prefix = "manifest.json: ";
            Bad(path, "name " + OneLine(v.keys[i].c_str(), 200) + " " + f.message.substr(prefix.size()));
          }
        }
      }
      for (size_t i : members) {
        const Json* sub = props != nullptr ? props->Find(v.keys[i]) : nullptr;
        if (sub != nullptr) Check(*sub, v.items[i], JoinPath(path, v.keys[i]));
        else if (extra != nullptr && extra->type == Json::kObject) Check(*extra, v.items[i], JoinPath(path, v.keys[i]));
      }
    }
  }

  Json root_;
};

// ================================================== manifest reading and artifact verification

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  uint8_t code = 2;  // DLPack: kDLInt 0, kDLUInt 1, kDLFloat 2
  uint8_t bits = 32;
  size_t bytes = 0;
};

constexpr uint8_t kInt = 0, kUInt = 1, kFloat = 2;

struct Manifest {
  std::string dir;  // the artifact directory, absolute
  std::string model_kind, semantics, precision, target_name, library, entry, executor;
  std::string signed_by;  // the key id that signed manifest.json, "" when no signature was checked
  size_t obs_dim = 0, act_dim = 0, state_bytes = 0;
  uint64_t arena_bytes = 0;
  double target_return = 0.0;
  std::vector<TensorSpec> inputs, outputs, state;
};

// Field access after the schema has been checked: types are known, a miss is a bug, still not a crash.
const Json& Field(const Json& obj, const std::string& key) {
  const Json* v = obj.Find(key);
  if (v == nullptr) Fail(SSMC_ERR_ARTIFACT, "manifest.json: missing field " + key);
  return *v;
}
const std::string& Str(const Json& obj, const std::string& key) { return Field(obj, key).string; }
int64_t Int(const Json& obj, const std::string& key) { return Field(obj, key).integer; }
double Num(const Json& obj, const std::string& key) { return AsDouble(Field(obj, key)); }

// dtype name -> DLPack code and bits (the schema's enum).
bool DtypeCode(const std::string& dtype, uint8_t* code, uint8_t* bits) {
  static const struct { const char* name; uint8_t code, bits; } kDtypes[] = {
      {"float32", kFloat, 32}, {"float16", kFloat, 16}, {"float64", kFloat, 64}, {"int32", kInt, 32},
      {"int64", kInt, 64},     {"int8", kInt, 8},       {"uint8", kUInt, 8}};
  for (const auto& d : kDtypes) {
    if (dtype == d.name) {
      *code = d.code;
      *bits = d.bits;
      return true;
    }
  }
  return false;
}

std::string DtypeName(uint8_t code, uint8_t bits) {
  return std::string(code == kFloat ? "float" : (code == kUInt ? "uint" : "int")) + std::to_string(bits);
}

// "float32[1,3]": how tensors are compared with a library's descriptor and named in messages.
std::string SpecText(const TensorSpec& s) {
  std::string out = DtypeName(s.code, s.bits) + "[";
  for (size_t i = 0; i < s.shape.size(); ++i) out += (i ? "," : "") + std::to_string(s.shape[i]);
  return out + "]";
}

// The tensor specs of inputs/outputs/state; rule 3 (no tensor beyond 1 GiB) is checked here.
std::vector<TensorSpec> Tensors(const Json& root, const std::string& key) {
  std::vector<TensorSpec> out;
  const Json& list = Field(root, key);
  for (size_t i = 0; i < list.items.size(); ++i) {
    const Json& item = list.items[i];
    TensorSpec spec;
    spec.name = Str(item, "name");
    if (!DtypeCode(Str(item, "dtype"), &spec.code, &spec.bits)) {
      Fail(SSMC_ERR_ARTIFACT, "manifest.json: field " + IndexPath(key, i) + ".dtype: not supported");
    }
    uint64_t bytes = spec.bits / 8;
    for (const Json& d : Field(item, "shape").items) {
      spec.shape.push_back(d.integer);
      bytes *= static_cast<uint64_t>(d.integer);  // <= 2^30 * 2^24: no overflow before the check
      if (bytes > kMaxTensorBytes) {
        Fail(SSMC_ERR_ARTIFACT, "manifest.json: field " + IndexPath(key, i) + ": tensor " + OneLine(spec.name.c_str(), 200) +
                                    " is larger than 1 GiB");
      }
    }
    spec.bytes = static_cast<size_t>(bytes);
    out.push_back(std::move(spec));
  }
  return out;
}

// The rules that relate fields (the schema's x-ssmc-rules), in the order and words of
// ssmc/artifact/schema.py's check_rules. The schema has been checked: every type is right.
void CheckRules(const Json& root, std::vector<TensorSpec>* inputs, std::vector<TensorSpec>* outputs,
                std::vector<TensorSpec>* state) {
  auto bad = [](const std::string& field, const std::string& what) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: field " + field + ": " + what);
  };
  const int64_t obs_dim = Int(root, "obs_dim");
  for (const char* key : {"obs_mean", "obs_std"}) {
    const size_t n = Field(root, key).items.size();
    if (static_cast<int64_t>(n) != obs_dim) {
      bad(key, "must hold obs_dim (" + std::to_string(obs_dim) + ") numbers, has " + std::to_string(n));
    }
  }
  std::vector<std::string> names, dup;
  for (const char* group : {"inputs", "outputs", "state"}) {
    for (const Json& t : Field(root, group).items) names.push_back(Str(t, "name"));
  }
  std::vector<std::string> sorted = names;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i] == sorted[i - 1] && (dup.empty() || dup.back() != sorted[i])) dup.push_back(sorted[i]);
  }
  if (!dup.empty()) Fail(SSMC_ERR_ARTIFACT, "manifest.json: tensor name(s) used twice across inputs/outputs/state: " + JoinNames(dup));
  *inputs = Tensors(root, "inputs");
  *outputs = Tensors(root, "outputs");
  *state = Tensors(root, "state");
  uint64_t sum = 0;
  for (const TensorSpec& s : *state) sum += s.bytes;
  const int64_t state_bytes = Int(root, "state_bytes");
  if (static_cast<uint64_t>(state_bytes) != sum) {
    bad("state_bytes", std::to_string(state_bytes) + " but the state tensors hold " + std::to_string(sum) + " bytes");
  }
  const Json& files = Field(root, "files");
  for (const char* key : {"library", "params", "reference"}) {
    const Json& v = Field(root, key);
    if (v.type == Json::kString && files.Find(v.string) == nullptr) {
      bad(key, "names " + OneLine(v.string.c_str(), 200) + ", which is not listed in files");
    }
  }
  const Json& target = Field(root, "target");
  const std::string& target_name = Str(target, "name");
  const std::string& device = Str(target, "device");
  if (Str(root, "executor") == "static") {
    if (Str(root, "entry") != kStaticEntry) {
      bad("entry", "a static artifact's entry is " + std::string(kStaticEntry) + ", not " + OneLine(Str(root, "entry").c_str(), 200));
    }
    if (device != "cpu") bad("executor", "static steps run on CPUs only, target '" + OneLine(target_name.c_str(), 200) + "' is " + device);
  }
  const std::string& precision = Str(root, "precision");
  if (Field(target, "precisions").Find(precision) == nullptr) {
    bad("precision", precision + " is not supported by target '" + OneLine(target_name.c_str(), 200) + "'");
  }
  if (device != "cpu" && Field(target, "tvm_host").type == Json::kNull) bad("target", "a device target needs a tvm_host");
  const Json& budget = Field(target, "budget");
  if (Num(budget, "step_latency_us") > 1e6 / Num(budget, "control_rate_hz")) {
    bad("target.budget", "step_latency_us exceeds the control period");
  }
}

// The manifest's text through every check that needs nothing but the text: UTF-8, JSON (depth <= 64,
// finite numbers), format version, the schema, the rules. What the fuzzer drives (tools/fuzz).
Json CheckManifestText(const std::string& text, std::vector<TensorSpec>* inputs, std::vector<TensorSpec>* outputs,
                       std::vector<TensorSpec>* state) {
  size_t bad_at = 0;
  if (const char* why = Utf8Error(text, &bad_at)) {
    Fail(SSMC_ERR_ARTIFACT, std::string("manifest.json: not UTF-8 text (") + why + " at byte " + std::to_string(bad_at) + ")");
  }
  Json root = JsonParser(text).Document();
  if (root.type != Json::kObject) Fail(SSMC_ERR_ARTIFACT, "manifest.json: expected a JSON object");
  const Json* version = root.Find("format_version");
  if (version == nullptr || version->type != Json::kInt) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: no integer format_version: not an ssmc artifact manifest");
  }
  if (version->integer > kFormatVersion) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: artifact format version " + std::to_string(version->integer) +
                                " is newer than this runtime reads (" + std::to_string(kFormatVersion) +
                                "); upgrade ssmc or recompile the model with this version");
  }
  if (version->integer != kFormatVersion) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: artifact format version " + std::to_string(version->integer) +
                                " is older than this runtime reads (" + std::to_string(kFormatVersion) +
                                "); recompile the model with this ssmc");
  }
  Schema::Get().Validate(root);
  CheckRules(root, inputs, outputs, state);
  return root;
}

bool SafeRelativeName(const std::string& name) {
  if (name.empty() || name.find('\\') != std::string::npos || name.find('\0') != std::string::npos) return false;
  size_t start = 0;
  for (;;) {  // every '/'-separated part is non-empty and does not start with '.' (so no "." or "..")
    const size_t slash = name.find('/', start);
    const size_t end = slash == std::string::npos ? name.size() : slash;
    if (end == start || name[start] == '.') return false;
    if (slash == std::string::npos) return true;
    start = slash + 1;
  }
}

// A small regular file read whole (manifest.json, manifest.sig, a key file); refused over max_bytes.
std::string ReadSmallFile(const std::string& path, const std::string& label, uint64_t max_bytes, bool* missing = nullptr) {
  struct stat st;
  errno = 0;
  const bool found = ::lstat(path.c_str(), &st) == 0;
  if (!found && missing != nullptr && errno == ENOENT) {
    *missing = true;
    return "";
  }
  if (!found) Fail(SSMC_ERR_ARTIFACT, label + ": missing");
  if (!S_ISREG(st.st_mode)) Fail(SSMC_ERR_ARTIFACT, label + ": not a regular file (links and devices are refused)");
  if (static_cast<uint64_t>(st.st_size) > max_bytes) Fail(SSMC_ERR_ARTIFACT, label + ": too large");
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (f.fd < 0) Fail(SSMC_ERR_ARTIFACT, label + ": cannot be read");
  std::string text(static_cast<size_t>(st.st_size) + 1, '\0');  // one more: notice a file that grew
  ssize_t got = ReadFull(f.fd, reinterpret_cast<uint8_t*>(&text[0]), text.size());
  if (got < 0) Fail(SSMC_ERR_ARTIFACT, label + ": cannot be read");
  if (static_cast<uint64_t>(got) > max_bytes) Fail(SSMC_ERR_ARTIFACT, label + ": too large");
  text.resize(static_cast<size_t>(got));
  return text;
}

// ------------------------------------------------------------------------------------- signatures
// manifest.sig (written by `ssmc sign`) is one line: "ssmc-signature-v1 ed25519 KEY_ID SIGNATURE\n", the
// Ed25519 signature (RFC 8032; Monocypher's crypto_ed25519_check) of "ssmc-manifest-v1\n" followed by the
// bytes of manifest.json, which lists every other file's sha256. KEY_ID is the first 16 hex digits of the
// sha256 of the 32-byte public key. Trusted keys are lines "ssmc-ed25519 PUBLIC_KEY_HEX [comment]" in a
// file, or in the *.pub files of a folder.

constexpr const char* kSignatureName = "manifest.sig";
constexpr const char* kSignedPrefix = "ssmc-manifest-v1\n";
constexpr uint64_t kMaxSignatureBytes = 4096;
constexpr uint64_t kMaxKeyFileBytes = 1 << 20;
constexpr size_t kMaxKeys = 1024;

struct TrustedKey {
  uint8_t key[32];
  std::string id;  // 16 hex digits
};

struct Keyring {
  std::string source;  // "SSMC_TRUSTED_KEYS=..." or "trusted_keys=...": for messages
  std::vector<TrustedKey> keys;
  bool configured() const { return !source.empty(); }
  std::string Ids() const {
    std::string out;
    for (size_t i = 0; i < keys.size() && i < 4; ++i) out += (i ? ", " : "") + keys[i].id;
    if (keys.size() > 4) out += " and " + std::to_string(keys.size() - 4) + " more";
    return out;
  }
};

bool DecodeHex(const std::string& hex, uint8_t* out, size_t n) {
  if (hex.size() != 2 * n) return false;
  for (size_t i = 0; i < n; ++i) {
    auto nib = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = nib(hex[2 * i]), lo = nib(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

std::string KeyId(const uint8_t key[32]) {
  Sha256 sha;
  sha.Update(key, 32);
  return sha.HexDigest().substr(0, 16);
}

std::vector<std::string> SplitWords(const std::string& line) {
  std::vector<std::string> words;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t' && line[j] != '\r') ++j;
    if (j > i) words.push_back(line.substr(i, j - i));
    i = j;
  }
  return words;
}

void ReadKeyFile(const std::string& path, Keyring* ring) {
  const std::string text = ReadSmallFile(path, "trusted key file " + OneLine(path.c_str(), 300), kMaxKeyFileBytes);
  size_t start = 0, line_no = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    const std::vector<std::string> words = SplitWords(line);
    if (words.empty() || words[0][0] == '#') continue;
    TrustedKey k;
    if (words.size() < 2 || words[0] != "ssmc-ed25519" || !DecodeHex(words[1], k.key, 32)) {
      Fail(SSMC_ERR_ARTIFACT, "trusted key file " + OneLine(path.c_str(), 300) + " line " + std::to_string(line_no) +
                                  ": not an ssmc-ed25519 public key (ssmc keygen writes them)");
    }
    if (ring->keys.size() >= kMaxKeys) Fail(SSMC_ERR_ARTIFACT, "trusted keys: more than 1024");
    k.id = KeyId(k.key);
    ring->keys.push_back(k);
  }
}

// The keys of `path`: a key file, or every *.pub file directly in a folder (name order).
Keyring LoadKeyring(const std::string& path, const std::string& source) {
  Keyring ring;
  ring.source = source;
  struct stat st;
  if (path.empty() || ::stat(path.c_str(), &st) != 0) {
    Fail(SSMC_ERR_ARTIFACT, source + ": no such file or folder (trusted keys are configured: nothing opens without them)");
  }
  if (S_ISDIR(st.st_mode)) {
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(path.c_str()), ::closedir);
    if (!d) Fail(SSMC_ERR_ARTIFACT, source + ": cannot list the folder");
    std::vector<std::string> names;
    while (const dirent* e = ::readdir(d.get())) {
      const std::string n(e->d_name);
      if (n.size() > 4 && n[0] != '.' && n.compare(n.size() - 4, 4, ".pub") == 0) names.push_back(n);
    }
    std::sort(names.begin(), names.end());
    for (const std::string& n : names) ReadKeyFile(path + "/" + n, &ring);
  } else {
    ReadKeyFile(path, &ring);
  }
  if (ring.keys.empty()) Fail(SSMC_ERR_ARTIFACT, source + ": holds no ssmc-ed25519 key (trusted keys are configured: nothing opens without one)");
  return ring;
}

// Checks manifest.sig against the keyring; returns the signing key's id.
std::string CheckSignature(const std::string& dir, const std::string& manifest, const Keyring& ring) {
  bool missing = false;
  const std::string sig = ReadSmallFile(dir + "/" + kSignatureName, kSignatureName, kMaxSignatureBytes, &missing);
  if (missing) {
    Fail(SSMC_ERR_ARTIFACT, "not signed (no manifest.sig), and trusted keys are configured (" + ring.source + ": " + ring.Ids() +
                                "); sign it with `ssmc sign ARTIFACT KEY`");
  }
  std::string line = sig;
  if (!line.empty() && line.back() == '\n') line.pop_back();
  const std::vector<std::string> words = SplitWords(line);
  uint8_t signature[64];
  uint8_t id_bytes[8];
  if (line.find('\n') != std::string::npos || words.size() != 4 || words[0] != "ssmc-signature-v1" || words[1] != "ed25519" ||
      !DecodeHex(words[2], id_bytes, 8) || !DecodeHex(words[3], signature, 64)) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.sig: not an ssmc signature (one line: ssmc-signature-v1 ed25519 KEY_ID SIGNATURE)");
  }
  const std::string& id = words[2];
  std::string message = kSignedPrefix + manifest;
  bool known = false;
  for (const TrustedKey& k : ring.keys) {
    if (k.id != id) continue;
    known = true;
    if (crypto_ed25519_check(signature, k.key, reinterpret_cast<const uint8_t*>(message.data()), message.size()) == 0) return id;
  }
  if (!known) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.sig: signed by key " + id + ", which is not trusted (" + ring.source + ": " + ring.Ids() + ")");
  }
  Fail(SSMC_ERR_ARTIFACT, "manifest.sig: the signature of key " + id +
                              " does not match manifest.json (the manifest was changed after it was signed)");
}

// ------------------------------------------------------------------------------------ the files

// Every file under root but the top-level manifest.json and manifest.sig: relative name -> bytes.
// Directories are walked with an explicit stack (not followed through links); links, devices and
// sockets are refused.
std::map<std::string, uint64_t> ListFiles(const std::string& root) {
  std::map<std::string, uint64_t> present;
  std::vector<std::string> todo{""};
  while (!todo.empty()) {
    const std::string rel_dir = todo.back();
    todo.pop_back();
    std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(rel_dir.empty() ? root.c_str() : (root + "/" + rel_dir).c_str()),
                                           ::closedir);
    if (!d) Fail(SSMC_ERR_ARTIFACT, "cannot list the artifact directory: " + std::string(std::strerror(errno)));
    for (;;) {
      errno = 0;
      const dirent* e = ::readdir(d.get());
      if (e == nullptr) {
        if (errno != 0) Fail(SSMC_ERR_ARTIFACT, "cannot list the artifact directory: " + std::string(std::strerror(errno)));
        break;
      }
      const std::string name(e->d_name);
      if (name == "." || name == "..") continue;
      const std::string rel = rel_dir.empty() ? name : rel_dir + "/" + name;
      struct stat st;
      if (::fstatat(::dirfd(d.get()), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) Fail(SSMC_ERR_ARTIFACT, rel + ": cannot be read");
      if (S_ISDIR(st.st_mode)) {
        todo.push_back(rel);
      } else {
        if (!S_ISREG(st.st_mode)) Fail(SSMC_ERR_ARTIFACT, OneLine(rel.c_str()) + ": not a regular file (links and devices are refused)");
        if (rel != "manifest.json" && rel != kSignatureName) present[rel] = static_cast<uint64_t>(st.st_size);
      }
    }
  }
  return present;
}

// This CPU's feature flags (/proc/cpuinfo's "flags" on x86-64, "Features" on aarch64); false when unknown:
// no /proc, or a cpuinfo without this architecture's line (qemu-user shows the host's), and nothing is checked.
bool CpuFlags(std::vector<std::string>* flags) {
  Fd f(::open("/proc/cpuinfo", O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return false;
  std::string text;
  char buf[4096];
  for (;;) {  // /proc files report size 0: read to the end (a few KB per core; capped)
    ssize_t got = ::read(f.fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0 || text.size() > (4u << 20)) break;
    text.append(buf, static_cast<size_t>(got));
  }
#if defined(__aarch64__)
  for (const char* key : {"Features"}) {
#else
  for (const char* key : {"flags"}) {
#endif
    const std::string k(key);
    for (size_t at = 0; (at = text.find(k, at)) != std::string::npos; ++at) {
      if (at != 0 && text[at - 1] != '\n') continue;
      const size_t colon = text.find(':', at), end = text.find('\n', at);
      if (colon == std::string::npos || colon > end) continue;
      *flags = SplitWords(text.substr(colon + 1, end == std::string::npos ? std::string::npos : end - colon - 1));
      return true;
    }
  }
  return false;
}

// The artifact checks of ssmc.artifact.load_manifest, in its order: manifest.json; its signature when trusted
// keys are configured (before the text is parsed); the text (CheckManifestText); the files (missing /
// unexpected / size / sha256, each in name order, each read once). Then what this runtime needs to run it.
Manifest VerifyArtifact(const std::string& dir_arg, const Keyring& ring) {
  struct stat st;
  if (::stat(dir_arg.c_str(), &st) != 0) Fail(SSMC_ERR_ARTIFACT, "no such artifact");
  if (!S_ISDIR(st.st_mode)) Fail(SSMC_ERR_ARTIFACT, "not a directory (unpack a .tar artifact first)");
  Manifest m;
  {
    char* real = ::realpath(dir_arg.c_str(), nullptr);
    if (real == nullptr) Fail(SSMC_ERR_ARTIFACT, "no such artifact");
    m.dir = real;
    std::free(real);
  }
  const std::string text = ReadSmallFile(m.dir + "/manifest.json", "manifest.json", kMaxManifestBytes);
  if (ring.configured()) m.signed_by = CheckSignature(m.dir, text, ring);
  const Json root = CheckManifestText(text, &m.inputs, &m.outputs, &m.state);

  // Files: the listed set must equal what is on disk, byte for byte.
  const Json& files = Field(root, "files");
  std::map<std::string, std::pair<std::string, int64_t>> listed;
  for (size_t i = 0; i < files.keys.size(); ++i) {
    const Json& entry = files.items[i];
    listed[files.keys[i]] = {Str(entry, "sha256"), Int(entry, "bytes")};
  }
  const std::map<std::string, uint64_t> present = ListFiles(m.dir);
  for (const auto& kv : listed) {
    if (present.find(kv.first) == present.end()) Fail(SSMC_ERR_ARTIFACT, kv.first + ": missing (listed in manifest.json)");
  }
  for (const auto& kv : present) {
    if (listed.find(kv.first) == listed.end()) {
      Fail(SSMC_ERR_ARTIFACT, OneLine(kv.first.c_str()) + ": unexpected file (not listed in manifest.json)");
    }
  }
  for (const auto& [name, want] : listed) {
    const int64_t size = static_cast<int64_t>(present.at(name));
    if (size != want.second) {
      Fail(SSMC_ERR_ARTIFACT, name + ": " + std::to_string(size) + " bytes, manifest.json says " + std::to_string(want.second) +
                                  (size < want.second ? " (truncated)" : " (grown)"));
    }
    uint64_t read = 0;
    const std::string digest = FileSha256(m.dir + "/" + name, name, &read);
    if (static_cast<int64_t>(read) != want.second) {  // the file changed while it was read
      Fail(SSMC_ERR_ARTIFACT, name + ": " + std::to_string(read) + " bytes read, manifest.json says " + std::to_string(want.second));
    }
    if (digest != want.first) Fail(SSMC_ERR_ARTIFACT, name + ": sha256 mismatch (the file was modified after compile)");
  }

  // What this runtime runs (beyond a valid manifest).
  m.model_kind = Str(root, "model_kind");
  m.semantics = Str(root, "semantics");
  m.precision = Str(root, "precision");
  m.entry = Str(root, "entry");
  m.library = Str(root, "library");
  m.executor = Str(root, "executor");
  if (Field(root, "params").type != Json::kNull) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: separate parameter files are not supported by this runtime");
  }
  const int64_t obs_dim = Int(root, "obs_dim"), act_dim = Int(root, "act_dim");
  m.obs_dim = static_cast<size_t>(obs_dim);
  m.act_dim = static_cast<size_t>(act_dim);
  m.target_return = Num(root, "target_return");
  m.state_bytes = static_cast<size_t>(Int(root, "state_bytes"));
  m.arena_bytes = static_cast<uint64_t>(Int(root, "arena_bytes"));

  const Json& target = Field(root, "target");
  m.target_name = Str(target, "name");
  const std::string& device = Str(target, "device");
  const std::string& arch = Str(target, "arch");
  if (device != "cpu") {
    Fail(SSMC_ERR_ARTIFACT, "target " + m.target_name + " runs on " + device +
                                ": this runtime runs CPU artifacts only (compile for " + m.target_name + "-cpu or host)");
  }
  if (arch != kArch) {
    Fail(SSMC_ERR_ARTIFACT, "built for " + arch + " (target " + m.target_name + "), this runtime is " + kArch +
                                (arch == "aarch64" ? " (run it under qemu-aarch64-static with the aarch64 runtime)" : ""));
  }
  std::vector<std::string> have;
  if (CpuFlags(&have)) {
    std::vector<std::string> lacking;
    for (const Json& f : Field(target, "cpu_features").items) {
      if (std::find(have.begin(), have.end(), f.string) == have.end()) lacking.push_back(f.string);
    }
    if (!lacking.empty()) {
      Fail(SSMC_ERR_ARTIFACT, "target " + m.target_name + " needs CPU feature(s) " + JoinNames(lacking) +
                                  ", which this CPU lacks (/proc/cpuinfo)");
    }
  }
  if (!Field(root, "normalisation_in_graph").boolean) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: normalisation_in_graph is not true; this runtime passes raw "
                            "observations and needs artifacts that normalise inside the graph (recompile)");
  }
  auto is_f32 = [](const TensorSpec& s) { return s.code == kFloat && s.bits == 32; };
  if (m.inputs.size() != 2 || !is_f32(m.inputs[0]) || !is_f32(m.inputs[1]) ||
      m.inputs[0].shape != std::vector<int64_t>{1, obs_dim} || m.inputs[1].shape != std::vector<int64_t>{1, 1}) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: inputs must be float32 [1, obs_dim] observation and [1, 1] return-to-go");
  }
  if (m.outputs.empty() || !is_f32(m.outputs[0]) || m.outputs[0].shape != std::vector<int64_t>{1, act_dim}) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: the first output must be the float32 [1, act_dim] action");
  }
  return m;
}

// ================================================================================= executors

// Runs one step: reads in (inputs, then the current state), writes every out buffer (outputs, then
// the new state). Throws a Failure and leaves in untouched on error. Buffers belong to the policy.
class Executor {
 public:
  virtual ~Executor() = default;
  virtual void Step(void* const* in, void* const* out) = 0;
};

struct DlClose {
  void operator()(void* h) const { ::dlclose(h); }
};

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t start = 0;
  for (;;) {  // commas inside [...] separate dimensions, not tensors
    size_t i = start, depth = 0;
    while (i < s.size() && !(s[i] == ',' && depth == 0)) {
      depth += s[i] == '[' ? 1 : (s[i] == ']' && depth ? static_cast<size_t>(-1) : 0);
      ++i;
    }
    out.push_back(s.substr(start, i - start));
    if (i >= s.size()) return out;
    start = i + 1;
  }
}

// descriptor: "in=float32[1,3],float32[1,1],...;out=float32[1,1],..." (ssmc_static_abi.h).
void CheckDescriptor(const Manifest& m, const char* descriptor) {
  const std::string d = descriptor == nullptr ? "" : std::string(descriptor);
  const size_t semi = d.find(';');
  if (d.compare(0, 3, "in=") != 0 || semi == std::string::npos || d.compare(semi + 1, 4, "out=") != 0) {
    Fail(SSMC_ERR_ARTIFACT, m.library + ": its ssmc_static_descriptor() is not a step descriptor");
  }
  const std::vector<std::string> lib_in = SplitList(d.substr(3, semi - 3)), lib_out = SplitList(d.substr(semi + 5));
  struct Side {
    const char* what;
    const std::vector<std::string>& lib;
    std::vector<std::pair<std::string, const TensorSpec*>> man;
  };
  Side in{"takes", lib_in, {}}, out{"returns", lib_out, {}};
  for (const TensorSpec& s : m.inputs) in.man.push_back({"input", &s});
  for (const TensorSpec& s : m.state) in.man.push_back({"state", &s});
  for (const TensorSpec& s : m.outputs) out.man.push_back({"output", &s});
  for (const TensorSpec& s : m.state) out.man.push_back({"new state", &s});
  for (const Side* side : {&in, &out}) {
    if (side->lib.size() != side->man.size()) {
      Fail(SSMC_ERR_ARTIFACT, m.library + " does not match manifest.json: the compiled step " + side->what + " " +
                                  std::to_string(side->lib.size()) + " tensors, the manifest lists " +
                                  std::to_string(side->man.size()));
    }
    for (size_t i = 0; i < side->lib.size(); ++i) {
      const std::string want = SpecText(*side->man[i].second);
      if (side->lib[i] != want) {
        Fail(SSMC_ERR_ARTIFACT, m.library + " does not match manifest.json: " + side->man[i].first + " " +
                                    OneLine(side->man[i].second->name.c_str(), 200) + " is " + OneLine(side->lib[i].c_str(), 200) +
                                    " in the library, " + want + " in the manifest");
      }
    }
  }
}

// A static step library (ssmc_static_abi.h): native code that allocates nothing, over one arena.
class StaticExecutor final : public Executor {
 public:
  StaticExecutor(const Manifest& m, const std::string& path) {
    dlerror();
    handle_.reset(::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
    if (!handle_) Fail(SSMC_ERR_ARTIFACT, m.library + ": cannot be loaded (" + DlError() + ")");
    auto abi_version = Symbol<ssmc_static_abi_version_fn>(m, "ssmc_static_abi_version");
    auto arena_bytes = Symbol<ssmc_static_arena_bytes_fn>(m, "ssmc_static_arena_bytes");
    step_ = Symbol<ssmc_static_step_fn>(m, "ssmc_static_step");
    last_error_ = Symbol<ssmc_static_last_error_fn>(m, "ssmc_static_last_error");
    const uint32_t abi = abi_version();
    if (abi != SSMC_STATIC_ABI_VERSION) {
      Fail(SSMC_ERR_ARTIFACT, m.library + ": static step ABI version " + std::to_string(abi) + ", this runtime speaks " +
                                  std::to_string(SSMC_STATIC_ABI_VERSION) + " (recompile the model with this ssmc)");
    }
    // The compiled step's calling convention against the manifest's (compile/static.py writes the descriptor):
    // argument count, then every tensor's dtype and shape, inputs then state, outputs then new state.
    auto descriptor = Symbol<ssmc_static_descriptor_fn>(m, "ssmc_static_descriptor");
    CheckDescriptor(m, descriptor());
    const uint64_t need = arena_bytes();
    if (need != m.arena_bytes) {
      Fail(SSMC_ERR_ARTIFACT, "manifest.json: arena_bytes is " + std::to_string(m.arena_bytes) + " but " + m.library +
                                  " needs " + std::to_string(need));
    }
    arena_ = AllocBuffer(need);
  }

  void Step(void* const* in, void* const* out) override {
    if (step_(in, out, arena_.get()) != 0) {
      const char* why = last_error_();
      Fail(SSMC_ERR_RUNTIME, "step failed: " + (why != nullptr && *why ? OneLine(why) : std::string("no reason given")));
    }
  }

 private:
  template <typename Fn>
  Fn Symbol(const Manifest& m, const char* name) {
    void* sym = ::dlsym(handle_.get(), name);
    if (sym == nullptr) Fail(SSMC_ERR_ARTIFACT, m.library + " does not export " + name + " (not a static step library)");
    return reinterpret_cast<Fn>(sym);
  }

  std::unique_ptr<void, DlClose> handle_;  // several policies may share it: dlopen counts references
  ssmc_static_step_fn step_ = nullptr;
  ssmc_static_last_error_fn last_error_ = nullptr;
  Buffer arena_;
};

struct VmPlugin {
  ssmc_vm_open_fn open = nullptr;
  ssmc_vm_step_fn step = nullptr;
  ssmc_vm_error_fn error = nullptr;
  ssmc_vm_close_fn close = nullptr;
};

// The directory this libssmc.so was loaded from.
std::string OwnDirectory() {
  Dl_info info;
  if (::dladdr(reinterpret_cast<void*>(&ssmc_version), &info) == 0 || info.dli_fname == nullptr) return ".";
  std::string path(info.dli_fname);
  if (char* real = ::realpath(info.dli_fname, nullptr)) {
    path = real;
    std::free(real);
  }
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

// libssmc_vm.so next to this library, loaded on first use and kept for the process's lifetime
// (TVM's runtime is not made to be unloaded). A failed load is not remembered: the next open retries.
const VmPlugin& LoadVmPlugin() {
  static std::mutex mu;
  static VmPlugin plugin;
  std::lock_guard<std::mutex> lock(mu);
  if (plugin.open != nullptr) return plugin;
  const std::string path = OwnDirectory() + "/libssmc_vm.so";
  dlerror();
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    Fail(SSMC_ERR_ARTIFACT, "this artifact uses the VM executor, which needs libssmc_vm.so and TVM's runtime libraries "
                            "next to libssmc.so (" + DlError() + ")");
  }
  auto version = reinterpret_cast<ssmc_vm_plugin_version_fn>(::dlsym(h, "ssmc_vm_plugin_version"));
  VmPlugin p;
  p.open = reinterpret_cast<ssmc_vm_open_fn>(::dlsym(h, "ssmc_vm_open"));
  p.step = reinterpret_cast<ssmc_vm_step_fn>(::dlsym(h, "ssmc_vm_step"));
  p.error = reinterpret_cast<ssmc_vm_error_fn>(::dlsym(h, "ssmc_vm_error"));
  p.close = reinterpret_cast<ssmc_vm_close_fn>(::dlsym(h, "ssmc_vm_close"));
  if (version == nullptr || p.open == nullptr || p.step == nullptr || p.error == nullptr || p.close == nullptr) {
    ::dlclose(h);
    Fail(SSMC_ERR_ARTIFACT, path + " is not the ssmc VM plugin (its symbols are missing)");
  }
  if (version() != SSMC_VM_PLUGIN_VERSION) {
    const uint32_t v = version();
    ::dlclose(h);
    Fail(SSMC_ERR_ARTIFACT, path + " is plugin version " + std::to_string(v) + ", this libssmc.so needs " +
                                std::to_string(SSMC_VM_PLUGIN_VERSION) + " (use the two from one bundle)");
  }
  plugin = p;
  return plugin;
}

void SetDefaultThreads() {
  if (std::getenv("TVM_NUM_THREADS") == nullptr) setenv("TVM_NUM_THREADS", "1", 0);
}

// A Relax VM executable, run by the plugin over TVM's runtime.
class VmExecutor final : public Executor {
 public:
  VmExecutor(const Manifest& m, const std::string& path) : plugin_(LoadVmPlugin()) {
    SetDefaultThreads();
    std::vector<ssmc_vm_tensor> in, out;
    auto add = [](std::vector<ssmc_vm_tensor>& to, const std::vector<TensorSpec>& specs) {
      for (const TensorSpec& s : specs) {
        to.push_back(ssmc_vm_tensor{s.name.c_str(), s.shape.data(), static_cast<int32_t>(s.shape.size()), s.code, s.bits,
                                    static_cast<uint64_t>(s.bytes)});
      }
    };
    add(in, m.inputs);
    add(in, m.state);
    add(out, m.outputs);
    add(out, m.state);
    if (plugin_.open(path.c_str(), m.entry.c_str(), in.data(), in.size(), out.data(), out.size(), &vm_) != 0) {
      Fail(SSMC_ERR_ARTIFACT, OneLine(plugin_.error(nullptr)));
    }
  }
  ~VmExecutor() override { plugin_.close(vm_); }

  void Step(void* const* in, void* const* out) override {
    if (plugin_.step(vm_, in, out) != 0) Fail(SSMC_ERR_RUNTIME, OneLine(plugin_.error(vm_)));
  }

 private:
  const VmPlugin& plugin_;
  ssmc_vm* vm_ = nullptr;
};

// True when no element of n has every exponent bit set (kExp): no NaN or inf among n IEEE floats of
// type T's width. 16-byte vectors (SSE2 / NEON, GCC's vector extension), four at a time: a DeMa-RNN
// hopper state (100 KB) takes 4 us on this machine, against 18-22 us for the scalar loop, which GCC
// does not vectorise at -O2 or -Os. The step reads all of it anyway; this only must not cost more.
template <typename T, T kExp>
bool NoneAllOnesExponent(const void* data, size_t n) {
  typedef T Vec __attribute__((vector_size(16)));
  constexpr size_t kLanes = 16 / sizeof(T);
  const auto* p = static_cast<const unsigned char*>(data);
  Vec exp;
  for (size_t k = 0; k < kLanes; ++k) exp[k] = kExp;
  Vec bad0 = exp & 0, bad1 = bad0, bad2 = bad0, bad3 = bad0;
  size_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    Vec a, b, c, d;
    std::memcpy(&a, p + i * sizeof(T), 16);
    std::memcpy(&b, p + (i + kLanes) * sizeof(T), 16);
    std::memcpy(&c, p + (i + 2 * kLanes) * sizeof(T), 16);
    std::memcpy(&d, p + (i + 3 * kLanes) * sizeof(T), 16);
    bad0 |= (Vec)((a & exp) == exp);
    bad1 |= (Vec)((b & exp) == exp);
    bad2 |= (Vec)((c & exp) == exp);
    bad3 |= (Vec)((d & exp) == exp);
  }
  const Vec bad = bad0 | bad1 | bad2 | bad3;
  T any = 0;
  for (size_t k = 0; k < kLanes; ++k) any |= bad[k];
  for (; i < n; ++i) {
    T x;
    std::memcpy(&x, p + i * sizeof(T), sizeof(T));
    any |= (x & kExp) == kExp;
  }
  return any == 0;
}

// True when no element of the tensor is NaN or inf (integers always are finite).
bool AllFinite(const void* data, const TensorSpec& s) {
  if (s.code != kFloat) return true;
  if (s.bits == 32) return NoneAllOnesExponent<uint32_t, 0x7F800000u>(data, s.bytes / 4);
  if (s.bits == 16) return NoneAllOnesExponent<uint16_t, 0x7C00u>(data, s.bytes / 2);
  if (s.bits == 64) return NoneAllOnesExponent<uint64_t, 0x7FF0000000000000ull>(data, s.bytes / 8);
  return true;
}

}  // namespace

// ==================================================================================== policy

struct ssmc_policy {
  Manifest manifest;
  std::string error;
  std::vector<Buffer> buffers;  // inputs, outputs, two copies of the state: all allocated by Open
  // The step's argument lists. in: inputs, then the current state; out: outputs, then the next
  // state. A committed step swaps the two state halves, so nothing is copied and nothing allocated.
  std::vector<void*> in, out;
  std::unique_ptr<Executor> executor;  // declared last: destroyed before the buffers it was given
  double rtg = 0.0;
  bool first = true;
  uint64_t steps = 0;

  static ssmc_policy* Open(const char* artifact_dir, const ssmc_open_options* options) {
    if (artifact_dir == nullptr) Fail(SSMC_ERR_ARGUMENT, "artifact path is NULL");
    uint32_t flags = 0;
    const char* keys = nullptr;
    if (options != nullptr) {
      if (options->size < sizeof(ssmc_open_options)) Fail(SSMC_ERR_ARGUMENT, "ssmc_open_with: options.size is too small");
      if ((options->flags & ~uint32_t{SSMC_OPEN_NO_ENV}) != 0) Fail(SSMC_ERR_ARGUMENT, "ssmc_open_with: unknown flag");
      flags = options->flags;
      keys = options->trusted_keys;
    }
    std::unique_ptr<ssmc_policy> p(new ssmc_policy());
    try {
      Keyring ring;
      if (keys != nullptr) {
        ring = LoadKeyring(keys, "trusted_keys=" + OneLine(keys, 300));
      } else if ((flags & SSMC_OPEN_NO_ENV) == 0) {
        const char* env = std::getenv("SSMC_TRUSTED_KEYS");
        if (env != nullptr && *env != '\0') ring = LoadKeyring(env, "SSMC_TRUSTED_KEYS=" + OneLine(env, 300));
      }
      p->manifest = VerifyArtifact(artifact_dir, ring);
      const Manifest& m = p->manifest;
      auto alloc = [&](const std::vector<TensorSpec>& specs, std::vector<void*>& to) {
        for (const TensorSpec& s : specs) {
          p->buffers.push_back(AllocBuffer(s.bytes));
          to.push_back(p->buffers.back().get());
        }
      };
      alloc(m.inputs, p->in);
      alloc(m.state, p->in);
      alloc(m.outputs, p->out);
      alloc(m.state, p->out);
      const std::string library = m.dir + "/" + m.library;
      if (m.executor == "static") {
        p->executor.reset(new StaticExecutor(m, library));  // checks the library's descriptor
      } else {
        p->executor.reset(new VmExecutor(m, library));  // checks the entry's argument count
        // A VM executable records no shapes to compare: one step on zeros (state zero, nothing committed) runs
        // main's own argument checks and the plugin's checks of every result's dtype and shape, so a mismatch
        // is found here, not at the first ssmc_act.
        try {
          p->executor->Step(p->in.data(), p->out.data());
        } catch (const Failure& f) {
          Fail(SSMC_ERR_ARTIFACT, m.library + " does not match manifest.json: " + f.message);
        }
      }
    } catch (const Failure& f) {
      Fail(f.status, "artifact " + OneLine(artifact_dir) + ": " + f.message);
    }
    p->Reset(p->manifest.target_return);
    return p.release();
  }

  void Reset(double target_return) {
    if (!std::isfinite(target_return)) Fail(SSMC_ERR_INPUT, "target return is not finite");
    const size_t n_in = manifest.inputs.size();
    for (size_t i = 0; i < manifest.state.size(); ++i) std::memset(in[n_in + i], 0, manifest.state[i].bytes);
    rtg = target_return;
    first = true;
    steps = 0;
  }

  // Allocates nothing unless it fails: the checks, the step, the checks of its results, the commit.
  void Act(const float* obs, size_t n_obs, double last_reward, float* action, size_t n_action) {
    const Manifest& m = manifest;
    if (obs == nullptr || action == nullptr) Fail(SSMC_ERR_ARGUMENT, "observation or action pointer is NULL");
    if (n_obs != m.obs_dim) {
      Fail(SSMC_ERR_ARGUMENT, "observation has " + std::to_string(n_obs) + " values, the policy takes " +
                                  std::to_string(m.obs_dim));
    }
    if (n_action != m.act_dim) {
      Fail(SSMC_ERR_ARGUMENT, "action buffer has room for " + std::to_string(n_action) + " values, the policy gives " +
                                  std::to_string(m.act_dim));
    }
    for (size_t i = 0; i < n_obs; ++i) {
      if (!std::isfinite(obs[i])) {
        Fail(SSMC_ERR_INPUT, "observation[" + std::to_string(i) + "] is " + (std::isnan(obs[i]) ? "NaN" : "inf"));
      }
    }
    if (!std::isfinite(last_reward)) Fail(SSMC_ERR_INPUT, "last reward is not finite");
    const double rtg_next = first ? rtg : rtg - last_reward;
    if (!std::isfinite(static_cast<float>(rtg_next))) Fail(SSMC_ERR_INPUT, "return-to-go overflows float32");

    std::memcpy(in[0], obs, n_obs * sizeof(float));
    const float rtg_f = static_cast<float>(rtg_next);
    std::memcpy(in[1], &rtg_f, sizeof(float));

    executor->Step(in.data(), out.data());
    // Check everything before committing anything.
    if (!AllFinite(out[0], m.outputs[0])) Fail(SSMC_ERR_RUNTIME, "the step produced a non-finite action (state left unchanged)");
    const size_t n_in = m.inputs.size(), n_out = m.outputs.size();
    for (size_t i = 0; i < m.state.size(); ++i) {
      if (!AllFinite(out[n_out + i], m.state[i])) {
        Fail(SSMC_ERR_RUNTIME, "the step produced a non-finite new state (" + m.state[i].name + "; state left unchanged)");
      }
    }
    std::memcpy(action, out[0], m.act_dim * sizeof(float));
    for (size_t i = 0; i < m.state.size(); ++i) std::swap(in[n_in + i], out[n_out + i]);
    rtg = rtg_next;
    first = false;
    ++steps;
  }
};

// ===================================================================================== C API

namespace {

// Run fn, turning every failure into a status and a message on the handle (or the thread).
template <typename Fn>
ssmc_status Guard(std::string* error, Fn&& fn) {
  try {
    fn();
    if (error != nullptr) error->clear();
    return SSMC_OK;
  } catch (const Failure& f) {
    if (error != nullptr) *error = f.message;
    return f.status;
  } catch (const std::exception& e) {
    if (error != nullptr) *error = OneLine((std::string("runtime error: ") + e.what()).c_str());
    return SSMC_ERR_RUNTIME;
  } catch (...) {
    if (error != nullptr) *error = "unknown runtime error";
    return SSMC_ERR_RUNTIME;
  }
}

}  // namespace

extern "C" {

ssmc_status ssmc_open_with(const char* artifact_dir, const ssmc_open_options* options, ssmc_policy** out) {
  if (out == nullptr) {
    g_open_error = "ssmc_open: out is NULL";
    return SSMC_ERR_ARGUMENT;
  }
  *out = nullptr;
  return Guard(&g_open_error, [&] { *out = ssmc_policy::Open(artifact_dir, options); });
}

ssmc_status ssmc_open(const char* artifact_dir, ssmc_policy** out) { return ssmc_open_with(artifact_dir, nullptr, out); }

void ssmc_close(ssmc_policy* policy) {
  try {
    delete policy;
  } catch (...) {
  }
}

ssmc_status ssmc_reset(ssmc_policy* policy, double target_return) {
  if (policy == nullptr) return SSMC_ERR_ARGUMENT;
  return Guard(&policy->error, [&] { policy->Reset(target_return); });
}

ssmc_status ssmc_act(ssmc_policy* policy, const float* obs, size_t n_obs, double last_reward, float* action,
                     size_t n_action) {
  if (policy == nullptr) return SSMC_ERR_ARGUMENT;
  return Guard(&policy->error, [&] { policy->Act(obs, n_obs, last_reward, action, n_action); });
}

const char* ssmc_last_error(const ssmc_policy* policy) {
  return policy == nullptr ? g_open_error.c_str() : policy->error.c_str();
}

size_t ssmc_obs_dim(const ssmc_policy* policy) { return policy == nullptr ? 0 : policy->manifest.obs_dim; }
size_t ssmc_act_dim(const ssmc_policy* policy) { return policy == nullptr ? 0 : policy->manifest.act_dim; }
double ssmc_default_target_return(const ssmc_policy* policy) {
  return policy == nullptr ? 0.0 : policy->manifest.target_return;
}
uint64_t ssmc_steps(const ssmc_policy* policy) { return policy == nullptr ? 0 : policy->steps; }
size_t ssmc_state_bytes(const ssmc_policy* policy) { return policy == nullptr ? 0 : policy->manifest.state_bytes; }

const char* ssmc_info(const ssmc_policy* policy, const char* key) {
  if (policy == nullptr || key == nullptr) return nullptr;
  const Manifest& m = policy->manifest;
  if (std::strcmp(key, "model_kind") == 0) return m.model_kind.c_str();
  if (std::strcmp(key, "semantics") == 0) return m.semantics.c_str();
  if (std::strcmp(key, "precision") == 0) return m.precision.c_str();
  if (std::strcmp(key, "target") == 0) return m.target_name.c_str();
  if (std::strcmp(key, "library") == 0) return m.library.c_str();
  if (std::strcmp(key, "executor") == 0) return m.executor.c_str();
  if (std::strcmp(key, "signed_by") == 0) return m.signed_by.c_str();
  return nullptr;
}

const char* ssmc_version(void) { return SSMC_VERSION; }
int ssmc_api_version(void) { return SSMC_API_VERSION; }

}  // extern "C"

#if defined(SSMC_STATIC_CXX)
// With the C++ library linked in (the Makefile's default), libstdc++'s default terminate handler
// would pull in its demangler to print the type of an uncaught exception: 54 KB of libssmc.so's 146.
// Nothing can reach std::terminate here (every entry point catches everything, and this copy of the
// C++ library is private to libssmc.so), so a plain abort serves, and this definition keeps the
// archive's from being linked.
namespace __gnu_cxx {
void __verbose_terminate_handler() { std::abort(); }
}  // namespace __gnu_cxx
#endif

// ssmc_runtime.cc -- the C API of ssmc.h over TVM's runtime (libtvm_runtime + libtvm_ffi).
//
// Sections: SHA-256 | errors and small helpers | manifest reading and artifact verification |
// the policy (buffers, the Relax VM, one step) | the C API. The manifest's schema and the checks
// mirror ssmc/artifact.py (docs/artifact.md); tests/test_runtime.py holds the two to the same
// verdicts on the same tampered artifacts.

#include "ssmc.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#ifndef SSMC_VERSION
#define SSMC_VERSION "0.1.0"
#endif

namespace ffi = tvm::ffi;
namespace fs = std::filesystem;

namespace {

// ===================================================================================== SHA-256
// FIPS 180-4. Files are hashed in 1 MiB chunks; tests compare against Python's hashlib.

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

[[noreturn]] void Fail(ssmc_status status, const std::string& message) { throw Failure{status, message}; }

thread_local std::string g_open_error;  // ssmc_last_error(NULL)

constexpr size_t kAlign = 64;  // TVM's kAllocAlignment: kernels may assume it
constexpr int kFormatVersion = 1;
constexpr uintmax_t kMaxManifestBytes = 16u << 20;

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

Buffer AllocBuffer(size_t bytes) {
  size_t rounded = ((bytes + kAlign - 1) / kAlign) * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
  if (p == nullptr) Fail(SSMC_ERR_RUNTIME, "out of memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(p, 0, rounded == 0 ? kAlign : rounded);
  return Buffer(static_cast<uint8_t*>(p));
}

std::string FileSha256(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(SSMC_ERR_ARTIFACT, path.filename().string() + ": cannot be read");
  Sha256 sha;
  std::vector<char> chunk(1 << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    std::streamsize got = in.gcount();
    if (got > 0) sha.Update(reinterpret_cast<const uint8_t*>(chunk.data()), static_cast<size_t>(got));
  }
  return sha.HexDigest();
}

// ================================================== manifest reading and artifact verification

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DLDataType dtype;
  size_t bytes;
};

struct Manifest {
  std::string model_kind, semantics, precision, target_name, library, entry;
  size_t obs_dim = 0, act_dim = 0, state_bytes = 0;
  double target_return = 0.0;
  std::vector<TensorSpec> inputs, outputs, state;
};

// Reads one manifest: every access names the field that is missing or of the wrong type.
class ManifestReader {
 public:
  explicit ManifestReader(const ffi::json::Object& root) : root_(root) {}

  ffi::Any Field(const ffi::json::Object& obj, const std::string& key, const std::string& where) const {
    auto it = obj.find(ffi::String(key));
    if (it == obj.end()) Fail(SSMC_ERR_ARTIFACT, "manifest.json: missing field " + where + key);
    return (*it).second;
  }
  std::string Str(const ffi::json::Object& obj, const std::string& key, const std::string& where = "") const {
    auto v = Field(obj, key, where).try_cast<ffi::String>();
    if (!v) Fail(SSMC_ERR_ARTIFACT, "manifest.json: field " + where + key + " must be a string");
    return std::string(*v);
  }
  int64_t Int(const ffi::json::Object& obj, const std::string& key, const std::string& where = "") const {
    auto v = Field(obj, key, where).as<int64_t>();
    if (!v) Fail(SSMC_ERR_ARTIFACT, "manifest.json: field " + where + key + " must be an integer");
    return *v;
  }
  double Num(const ffi::json::Object& obj, const std::string& key) const {
    ffi::Any a = Field(obj, key, "");
    if (auto i = a.as<int64_t>()) return static_cast<double>(*i);
    auto d = a.as<double>();
    if (!d || !std::isfinite(*d)) Fail(SSMC_ERR_ARTIFACT, "manifest.json: field " + key + " must be a finite number");
    return *d;
  }
  ffi::json::Object Obj(const ffi::json::Object& obj, const std::string& key, const std::string& where = "") const {
    auto v = Field(obj, key, where).try_cast<ffi::json::Object>();
    if (!v) Fail(SSMC_ERR_ARTIFACT, "manifest.json: field " + where + key + " must be an object");
    return *v;
  }
  ffi::json::Array Arr(const ffi::json::Object& obj, const std::string& key) const {
    auto v = Field(obj, key, "").try_cast<ffi::json::Array>();
    if (!v) Fail(SSMC_ERR_ARTIFACT, "manifest.json: field " + key + " must be a list");
    return *v;
  }

  std::vector<TensorSpec> Tensors(const std::string& key) const {
    std::vector<TensorSpec> out;
    for (const ffi::Any& item : Arr(root_, key)) {
      auto obj = item.try_cast<ffi::json::Object>();
      if (!obj) Fail(SSMC_ERR_ARTIFACT, "manifest.json: " + key + " must hold {name, shape, dtype} objects");
      TensorSpec spec;
      spec.name = Str(*obj, "name", key + "[].");
      std::string dtype = Str(*obj, "dtype", key + "[].");
      int bits = 0;
      uint8_t code = kDLFloat;
      if (dtype == "float32") bits = 32;
      else if (dtype == "float16") bits = 16;
      else if (dtype == "float64") bits = 64;
      else if (dtype == "int32") { bits = 32; code = kDLInt; }
      else if (dtype == "int64") { bits = 64; code = kDLInt; }
      else if (dtype == "int8") { bits = 8; code = kDLInt; }
      else if (dtype == "uint8") { bits = 8; code = kDLUInt; }
      else Fail(SSMC_ERR_ARTIFACT, "manifest.json: " + key + " " + spec.name + ": dtype " + dtype + " is not supported by the runtime");
      spec.dtype = DLDataType{code, static_cast<uint8_t>(bits), 1};
      size_t numel = 1;
      auto shape = Field(*obj, "shape", key + "[].").try_cast<ffi::json::Array>();
      if (!shape) Fail(SSMC_ERR_ARTIFACT, "manifest.json: " + key + " " + spec.name + ": shape must be a list");
      for (const ffi::Any& d : *shape) {
        auto dim = d.as<int64_t>();
        if (!dim || *dim <= 0 || *dim > (1 << 24)) {
          Fail(SSMC_ERR_ARTIFACT, "manifest.json: " + key + " " + spec.name + ": shape entries must be positive integers");
        }
        spec.shape.push_back(*dim);
        numel *= static_cast<size_t>(*dim);
      }
      spec.bytes = numel * static_cast<size_t>(bits / 8);
      out.push_back(std::move(spec));
    }
    return out;
  }

 private:
  const ffi::json::Object& root_;
};

bool SafeRelativeName(const std::string& name) {
  if (name.empty() || name.front() == '/' || name.find('\\') != std::string::npos) return false;
  std::stringstream parts(name);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part.empty() || part == "." || part == ".." || part.front() == '.') return false;
  }
  return true;
}

// The checks of ssmc.artifact.load_manifest that the runtime relies on, in the same order:
// manifest, format version, files (missing / unexpected / size / sha256), then the fields.
Manifest VerifyArtifact(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    Fail(SSMC_ERR_ARTIFACT, fs::exists(dir, ec) ? "not a directory (unpack a .tar artifact first)" : "no such artifact");
  }
  fs::path manifest_path = dir / "manifest.json";
  if (!fs::is_regular_file(fs::symlink_status(manifest_path, ec))) Fail(SSMC_ERR_ARTIFACT, "manifest.json: missing");
  if (fs::file_size(manifest_path, ec) > kMaxManifestBytes) Fail(SSMC_ERR_ARTIFACT, "manifest.json: too large");
  std::ifstream in(manifest_path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ffi::String parse_error;
  ffi::json::Value parsed = ffi::json::Parse(ffi::String(text), &parse_error);
  if (!parse_error.empty()) Fail(SSMC_ERR_ARTIFACT, "manifest.json: not valid JSON (" + std::string(parse_error) + ")");
  auto root_opt = parsed.try_cast<ffi::json::Object>();
  if (!root_opt) Fail(SSMC_ERR_ARTIFACT, "manifest.json: not a JSON object");
  const ffi::json::Object root = *root_opt;
  ManifestReader r(root);

  int64_t version = r.Int(root, "format_version");
  if (version > kFormatVersion) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: artifact format version " + std::to_string(version) +
                                " is newer than this runtime reads (" + std::to_string(kFormatVersion) +
                                "); upgrade ssmc or recompile the model with this version");
  }
  if (version != kFormatVersion) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: artifact format version " + std::to_string(version) +
                                " is older than this runtime reads (" + std::to_string(kFormatVersion) +
                                "); recompile the model");
  }

  // Files: the listed set must equal what is on disk, byte for byte.
  ffi::json::Object files = r.Obj(root, "files");
  std::map<std::string, std::pair<std::string, int64_t>> listed;
  for (const auto& kv : files) {
    auto name = kv.first.try_cast<ffi::String>();
    auto entry = kv.second.try_cast<ffi::json::Object>();
    if (!name || !entry) Fail(SSMC_ERR_ARTIFACT, "manifest.json: files must map names to {sha256, bytes}");
    std::string n(*name);
    if (!SafeRelativeName(n) || n == "manifest.json") Fail(SSMC_ERR_ARTIFACT, "manifest.json: bad file name " + n);
    listed[n] = {r.Str(*entry, "sha256", "files." + n + "."), r.Int(*entry, "bytes", "files." + n + ".")};
  }
  std::set<std::string> present;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    std::string rel = fs::relative(it->path(), dir, ec).generic_string();
    fs::file_status st = it->symlink_status(ec);
    if (fs::is_directory(st)) continue;
    if (rel == "manifest.json") continue;
    if (!fs::is_regular_file(st)) Fail(SSMC_ERR_ARTIFACT, rel + ": not a regular file (links and devices are refused)");
    if (listed.find(rel) == listed.end()) Fail(SSMC_ERR_ARTIFACT, rel + ": unexpected file (not listed in manifest.json)");
    present.insert(rel);
  }
  if (ec) Fail(SSMC_ERR_ARTIFACT, "cannot list the artifact directory: " + ec.message());
  for (const auto& [name, want] : listed) {
    if (present.find(name) == present.end()) Fail(SSMC_ERR_ARTIFACT, name + ": missing (listed in manifest.json)");
  }
  for (const auto& [name, want] : listed) {
    uintmax_t size = fs::file_size(dir / name, ec);
    if (static_cast<int64_t>(size) != want.second) {
      Fail(SSMC_ERR_ARTIFACT, name + ": " + std::to_string(size) + " bytes, manifest.json says " +
                                  std::to_string(want.second) +
                                  (static_cast<int64_t>(size) < want.second ? " (truncated)" : " (grown)"));
    }
    if (FileSha256(dir / name) != want.first) {
      Fail(SSMC_ERR_ARTIFACT, name + ": sha256 mismatch (the file was modified after compile)");
    }
  }

  // Fields the runtime uses.
  Manifest m;
  m.model_kind = r.Str(root, "model_kind");
  m.semantics = r.Str(root, "semantics");
  m.precision = r.Str(root, "precision");
  m.entry = r.Str(root, "entry");
  m.library = r.Str(root, "library");
  if (listed.find(m.library) == listed.end()) Fail(SSMC_ERR_ARTIFACT, "manifest.json: library " + m.library + " is not listed in files");
  auto params = r.Field(root, "params", "");
  if (params != nullptr) Fail(SSMC_ERR_ARTIFACT, "manifest.json: separate parameter files are not supported by this runtime");
  int64_t obs_dim = r.Int(root, "obs_dim"), act_dim = r.Int(root, "act_dim");
  if (obs_dim <= 0 || act_dim <= 0) Fail(SSMC_ERR_ARTIFACT, "manifest.json: obs_dim and act_dim must be positive");
  m.obs_dim = static_cast<size_t>(obs_dim);
  m.act_dim = static_cast<size_t>(act_dim);
  m.target_return = r.Num(root, "target_return");
  m.state_bytes = static_cast<size_t>(r.Int(root, "state_bytes"));

  ffi::json::Object target = r.Obj(root, "target");
  m.target_name = r.Str(target, "name", "target.");
  std::string device = r.Str(target, "device", "target."), arch = r.Str(target, "arch", "target.");
  if (device != "cpu") {
    Fail(SSMC_ERR_ARTIFACT, "target " + m.target_name + " runs on " + device +
                                ": this runtime runs CPU artifacts only (compile for " + m.target_name +
                                "-cpu or host)");
  }
  if (arch != kArch) {
    Fail(SSMC_ERR_ARTIFACT, "built for " + arch + " (target " + m.target_name + "), this runtime is " + kArch +
                                (arch == "aarch64" ? " (run it under qemu-aarch64-static with the aarch64 runtime)" : ""));
  }
  ffi::json::Object extra = r.Obj(root, "extra");
  auto in_graph = extra.find(ffi::String("normalisation_in_graph"));
  if (in_graph == extra.end() || !(*in_graph).second.as<bool>().value_or(false)) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: extra.normalisation_in_graph is not true; this runtime passes raw "
                            "observations and needs artifacts that normalise inside the graph (recompile)");
  }

  m.inputs = r.Tensors("inputs");
  m.outputs = r.Tensors("outputs");
  m.state = r.Tensors("state");
  const DLDataType f32{kDLFloat, 32, 1};
  auto is_f32 = [&](const TensorSpec& s) { return s.dtype.code == f32.code && s.dtype.bits == f32.bits; };
  if (m.inputs.size() != 2 || !is_f32(m.inputs[0]) || !is_f32(m.inputs[1]) ||
      m.inputs[0].shape != std::vector<int64_t>{1, obs_dim} || m.inputs[1].shape != std::vector<int64_t>{1, 1}) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: inputs must be float32 [1, obs_dim] observation and [1, 1] return-to-go");
  }
  if (m.outputs.empty() || !is_f32(m.outputs[0]) || m.outputs[0].shape != std::vector<int64_t>{1, act_dim}) {
    Fail(SSMC_ERR_ARTIFACT, "manifest.json: the first output must be the float32 [1, act_dim] action");
  }
  size_t sum = 0;
  for (const TensorSpec& s : m.state) sum += s.bytes;
  if (sum != m.state_bytes) Fail(SSMC_ERR_ARTIFACT, "manifest.json: state_bytes does not equal the state tensors' sizes");
  return m;
}

// ==================================================================================== policy

// Tensors handed to the VM point into buffers the policy owns (TVM never frees them).
struct BorrowedData {
  void* data;
  void AllocData(DLTensor* t) { t->data = data; }
  void FreeData(DLTensor*) {}
};

struct Slot {
  TensorSpec spec;
  Buffer buffer;
  ffi::Tensor tensor;  // a view of buffer
};

Slot MakeSlot(const TensorSpec& spec) {
  Slot s{spec, AllocBuffer(spec.bytes), ffi::Tensor()};
  s.tensor = ffi::Tensor::FromNDAlloc(BorrowedData{s.buffer.get()}, ffi::ShapeView(s.spec.shape.data(), s.spec.shape.size()),
                                      s.spec.dtype, DLDevice{kDLCPU, 0});
  return s;
}

void SetDefaultThreads() {
  if (std::getenv("TVM_NUM_THREADS") == nullptr) setenv("TVM_NUM_THREADS", "1", 0);
}

}  // namespace

struct ssmc_policy {
  Manifest manifest;
  std::string error;
  std::optional<ffi::Module> library;  // keeps the shared library loaded
  std::optional<ffi::Module> vm;
  ffi::Function step;
  std::vector<Slot> inputs, state;
  std::vector<ffi::AnyView> args;
  double rtg = 0.0;
  bool first = true;
  uint64_t steps = 0;

  static ssmc_policy* Open(const char* artifact_dir) {
    if (artifact_dir == nullptr) Fail(SSMC_ERR_ARGUMENT, "artifact path is NULL");
    fs::path dir = fs::absolute(fs::path(artifact_dir));
    std::unique_ptr<ssmc_policy> p(new ssmc_policy());
    try {
      p->manifest = VerifyArtifact(dir);
    } catch (const Failure& f) {
      Fail(f.status, "artifact " + std::string(artifact_dir) + ": " + f.message);
    }
    SetDefaultThreads();
    const Manifest& m = p->manifest;
    try {
      p->library = ffi::Module::LoadFromFile(ffi::String((dir / m.library).string()));
      auto load_exec = (*p->library)->GetFunction("vm_load_executable");
      if (!load_exec) Fail(SSMC_ERR_ARTIFACT, m.library + " holds no Relax VM executable");
      p->vm = (*load_exec)().cast<ffi::Module>();
      auto init = (*p->vm)->GetFunction("vm_initialization");
      if (!init) Fail(SSMC_ERR_RUNTIME, "the VM has no vm_initialization");
      constexpr int kPooledAllocator = 2;
      (*init)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
      auto entry = (*p->vm)->GetFunction(ffi::String(m.entry));
      if (!entry) Fail(SSMC_ERR_ARTIFACT, m.library + " has no function " + m.entry);
      p->step = *entry;
    } catch (const ffi::Error& e) {
      Fail(SSMC_ERR_ARTIFACT, "artifact " + std::string(artifact_dir) + ": loading " + m.library + " failed: " +
                                  e.kind() + ": " + e.message());
    }
    for (const TensorSpec& s : m.inputs) p->inputs.push_back(MakeSlot(s));
    for (const TensorSpec& s : m.state) p->state.push_back(MakeSlot(s));
    for (const Slot& s : p->inputs) p->args.emplace_back(s.tensor);
    for (const Slot& s : p->state) p->args.emplace_back(s.tensor);
    p->Reset(m.target_return);
    return p.release();
  }

  void Reset(double target_return) {
    if (!std::isfinite(target_return)) Fail(SSMC_ERR_INPUT, "target return is not finite");
    for (Slot& s : state) std::memset(s.buffer.get(), 0, s.spec.bytes);
    rtg = target_return;
    first = true;
    steps = 0;
  }

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
    double rtg_next = first ? rtg : rtg - last_reward;
    if (!std::isfinite(static_cast<float>(rtg_next))) Fail(SSMC_ERR_INPUT, "return-to-go overflows float32");

    std::memcpy(inputs[0].buffer.get(), obs, n_obs * sizeof(float));
    const float rtg_f = static_cast<float>(rtg_next);
    std::memcpy(inputs[1].buffer.get(), &rtg_f, sizeof(float));

    ffi::Any result;
    try {
      step.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    } catch (const ffi::Error& e) {
      Fail(SSMC_ERR_RUNTIME, "step failed: " + e.kind() + ": " + e.message());
    }
    // Outputs: (action, *new_state). Check everything before committing anything.
    auto outs = result.try_cast<ffi::Array<ffi::Any>>();
    const size_t want = m.outputs.size() + m.state.size();
    if (!outs || outs->size() != want) Fail(SSMC_ERR_RUNTIME, "step returned an unexpected number of outputs");
    for (size_t i = 0; i < want; ++i) {
      auto t = (*outs)[i].try_cast<ffi::Tensor>();
      const TensorSpec& spec = i < m.outputs.size() ? m.outputs[i] : m.state[i - m.outputs.size()];
      if (!t || !t->IsContiguous() || static_cast<size_t>(t->numel()) * (t->dtype().bits / 8) != spec.bytes ||
          t->dtype().code != spec.dtype.code || t->device().device_type != kDLCPU) {
        Fail(SSMC_ERR_RUNTIME, "step output " + spec.name + " has an unexpected shape, dtype or device");
      }
    }
    const float* act = static_cast<const float*>(OutputData((*outs)[0].cast<ffi::Tensor>()));
    for (size_t i = 0; i < m.act_dim; ++i) {
      if (!std::isfinite(act[i])) Fail(SSMC_ERR_RUNTIME, "the step produced a non-finite action (state left unchanged)");
    }
    std::memcpy(action, act, m.act_dim * sizeof(float));
    for (size_t i = 0; i < state.size(); ++i) {
      ffi::Tensor t = (*outs)[m.outputs.size() + i].cast<ffi::Tensor>();
      std::memmove(state[i].buffer.get(), OutputData(t), state[i].spec.bytes);
    }
    rtg = rtg_next;
    first = false;
    ++steps;
  }

  static const void* OutputData(const ffi::Tensor& t) {
    return static_cast<const uint8_t*>(t.data_ptr()) + t.byte_offset();
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
  } catch (const ffi::Error& e) {
    if (error != nullptr) *error = "TVM runtime: " + e.kind() + ": " + e.message();
    return SSMC_ERR_RUNTIME;
  } catch (const std::exception& e) {
    if (error != nullptr) *error = std::string("runtime error: ") + e.what();
    return SSMC_ERR_RUNTIME;
  } catch (...) {
    if (error != nullptr) *error = "unknown runtime error";
    return SSMC_ERR_RUNTIME;
  }
}

}  // namespace

extern "C" {

ssmc_status ssmc_open(const char* artifact_dir, ssmc_policy** out) {
  if (out == nullptr) {
    g_open_error = "ssmc_open: out is NULL";
    return SSMC_ERR_ARGUMENT;
  }
  *out = nullptr;
  return Guard(&g_open_error, [&] { *out = ssmc_policy::Open(artifact_dir); });
}

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
  const std::string k(key);
  if (k == "model_kind") return m.model_kind.c_str();
  if (k == "semantics") return m.semantics.c_str();
  if (k == "precision") return m.precision.c_str();
  if (k == "target") return m.target_name.c_str();
  if (k == "library") return m.library.c_str();
  return nullptr;
}

const char* ssmc_version(void) { return SSMC_VERSION; }
int ssmc_api_version(void) { return SSMC_API_VERSION; }

}  // extern "C"

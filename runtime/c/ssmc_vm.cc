// ssmc_vm.cc -- libssmc_vm.so: runs Relax VM artifacts (`executor: vm`) for libssmc.so, over TVM's
// runtime (libtvm_runtime + libtvm_ffi). The interface is ssmc_vm.h; libssmc.so dlopens this plugin
// only when a VM artifact is opened, so static artifacts never load TVM.
//
// The plugin owns no step buffers: libssmc passes the inputs/state it owns and the buffers for the
// outputs/new state on every call. Input buffers are handed to the VM as non-owning tensor views
// (cached per buffer: libssmc double-buffers the state, so each state slot alternates between two
// pointers); the VM's result tensors are checked (count, size, dtype, device) and copied into the
// output buffers. Every C++ exception, TVM's included, becomes a nonzero return and a message.

#include "ssmc_vm.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__GNUC__)
#define SSMC_VM_API extern "C" __attribute__((visibility("default")))
#else
#define SSMC_VM_API extern "C"
#endif

namespace ffi = tvm::ffi;

namespace {

thread_local std::string g_open_error;

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  DLDataType dtype;
  size_t bytes;
};

std::vector<Spec> Specs(const ssmc_vm_tensor* t, size_t n) {
  std::vector<Spec> out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back(Spec{t[i].name ? t[i].name : "?", std::vector<int64_t>(t[i].shape, t[i].shape + t[i].ndim),
                       DLDataType{t[i].code, t[i].bits, 1}, static_cast<size_t>(t[i].bytes)});
  }
  return out;
}

// Tensors handed to the VM point into buffers libssmc owns (TVM never frees them).
struct BorrowedData {
  void* data;
  void AllocData(DLTensor* t) { t->data = data; }
  void FreeData(DLTensor*) {}
};

std::string Basename(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// "float32[1,3]", as libssmc names tensors (SpecText in ssmc_runtime.cc).
std::string Text(DLDataType dtype, const int64_t* shape, int ndim) {
  std::string out = std::string(dtype.code == kDLFloat ? "float" : (dtype.code == kDLUInt ? "uint" : "int")) +
                    std::to_string(dtype.bits) + "[";
  for (int i = 0; i < ndim; ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string OneLine(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

}  // namespace

struct ssmc_vm {
  std::optional<ffi::Module> library;  // keeps the shared library loaded
  std::optional<ffi::Module> vm;
  ffi::Function step;
  std::vector<Spec> in_specs, out_specs;
  struct View {
    void* data = nullptr;
    ffi::Tensor tensor;
  };
  std::vector<View> views;     // two per input slot: the last two buffers seen there
  std::vector<uint8_t> next;   // per slot: which of its two views to replace on a miss
  std::vector<ffi::AnyView> args;
  std::string error;

  const ffi::Tensor& ViewOf(size_t slot, void* data) {
    View* two = &views[2 * slot];
    if (two[0].data == data) return two[0].tensor;
    if (two[1].data == data) return two[1].tensor;
    View& v = two[next[slot]];  // a miss replaces the two views in turn
    next[slot] ^= 1;
    const Spec& s = in_specs[slot];
    v.tensor = ffi::Tensor::FromNDAlloc(BorrowedData{data}, ffi::ShapeView(s.shape.data(), s.shape.size()), s.dtype,
                                        DLDevice{kDLCPU, 0});
    v.data = data;
    return v.tensor;
  }

  void Step(void* const* in, void* const* out) {
    for (size_t i = 0; i < in_specs.size(); ++i) args[i] = ViewOf(i, in[i]);
    ffi::Any result;
    try {
      step.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    } catch (const ffi::Error& e) {
      throw std::runtime_error("step failed: " + e.kind() + ": " + e.message());
    }
    auto outs = result.try_cast<ffi::Array<ffi::Any>>();
    if (!outs || outs->size() != out_specs.size()) {
      throw std::runtime_error("the step returns " + std::to_string(outs ? outs->size() : 0) +
                               " tensors, the manifest lists " + std::to_string(out_specs.size()) + " (outputs and new state)");
    }
    for (size_t i = 0; i < out_specs.size(); ++i) {
      auto t = (*outs)[i].try_cast<ffi::Tensor>();
      const Spec& spec = out_specs[i];
      if (!t) throw std::runtime_error("step result " + spec.name + " is not a tensor");
      const std::string got = Text(t->dtype(), t->shape().data(), t->ndim()), want = Text(spec.dtype, spec.shape.data(),
                                                                                       static_cast<int>(spec.shape.size()));
      if (got != want) {
        throw std::runtime_error("result " + spec.name + " is " + got + " from the library, " + want + " in the manifest");
      }
      if (!t->IsContiguous() || t->device().device_type != kDLCPU) {
        throw std::runtime_error("step result " + spec.name + " is not a contiguous CPU tensor");
      }
    }
    for (size_t i = 0; i < out_specs.size(); ++i) {
      ffi::Tensor t = (*outs)[i].cast<ffi::Tensor>();
      std::memcpy(out[i], static_cast<const uint8_t*>(t.data_ptr()) + t.byte_offset(), out_specs[i].bytes);
    }
  }
};

namespace {

void Open(const char* library, const char* entry, const ssmc_vm_tensor* in, size_t n_in, const ssmc_vm_tensor* out,
          size_t n_out, ssmc_vm** vm_out) {
  std::unique_ptr<ssmc_vm> p(new ssmc_vm());
  const std::string lib(library), name = Basename(lib);
  try {
    p->library = ffi::Module::LoadFromFile(ffi::String(lib));
    auto load_exec = (*p->library)->GetFunction("vm_load_executable");
    if (!load_exec) throw std::runtime_error(name + " holds no Relax VM executable");
    p->vm = (*load_exec)().cast<ffi::Module>();
    auto init = (*p->vm)->GetFunction("vm_initialization");
    if (!init) throw std::runtime_error("the VM has no vm_initialization");
    constexpr int kPooledAllocator = 2;
    (*init)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    auto fn = (*p->vm)->GetFunction(ffi::String(entry));
    if (!fn) throw std::runtime_error(name + " has no function " + entry);
    p->step = *fn;
    // The entry's argument count, from the executable's function table (the shapes and dtypes are checked by
    // libssmc's trial step at open: main verifies its arguments, Step its results).
    if (auto arity = (*p->vm)->GetFunction("get_function_arity")) {
      const int64_t n = (*arity)(ffi::String(entry)).cast<int64_t>();
      if (n != static_cast<int64_t>(n_in)) {
        throw std::runtime_error(name + " does not match manifest.json: " + entry + " takes " + std::to_string(n) +
                                 " arguments, the manifest lists " + std::to_string(n_in) + " (inputs and state)");
      }
    }
  } catch (const ffi::Error& e) {
    throw std::runtime_error("loading " + name + " failed: " + e.kind() + ": " + e.message());
  }
  p->in_specs = Specs(in, n_in);
  p->out_specs = Specs(out, n_out);
  p->views.resize(2 * n_in);
  p->next.assign(n_in, 0);
  p->args.resize(n_in);
  *vm_out = p.release();
}

}  // namespace

SSMC_VM_API uint32_t ssmc_vm_plugin_version(void) { return SSMC_VM_PLUGIN_VERSION; }

SSMC_VM_API int ssmc_vm_open(const char* library, const char* entry, const ssmc_vm_tensor* in, size_t n_in,
                             const ssmc_vm_tensor* out, size_t n_out, ssmc_vm** vm) {
  if (library == nullptr || entry == nullptr || vm == nullptr || (n_in && !in) || (n_out && !out)) {
    g_open_error = "ssmc_vm_open: NULL argument";
    return 1;
  }
  *vm = nullptr;
  try {
    Open(library, entry, in, n_in, out, n_out, vm);
    g_open_error.clear();
    return 0;
  } catch (const ffi::Error& e) {
    g_open_error = OneLine("TVM runtime: " + e.kind() + ": " + e.message());
  } catch (const std::exception& e) {
    g_open_error = OneLine(e.what());
  } catch (...) {
    g_open_error = "unknown error in the VM plugin";
  }
  return 1;
}

SSMC_VM_API int ssmc_vm_step(ssmc_vm* vm, void* const* in, void* const* out) {
  if (vm == nullptr || in == nullptr || out == nullptr) return 1;
  try {
    vm->Step(in, out);
    return 0;
  } catch (const ffi::Error& e) {
    try { vm->error = OneLine("TVM runtime: " + e.kind() + ": " + e.message()); } catch (...) {}
  } catch (const std::exception& e) {
    try { vm->error = OneLine(e.what()); } catch (...) {}
  } catch (...) {
    try { vm->error = "unknown error in the VM plugin"; } catch (...) {}
  }
  return 1;
}

SSMC_VM_API const char* ssmc_vm_error(const ssmc_vm* vm) { return vm == nullptr ? g_open_error.c_str() : vm->error.c_str(); }

SSMC_VM_API void ssmc_vm_close(ssmc_vm* vm) {
  try {
    delete vm;
  } catch (...) {
  }
}

/*
 * ssmc_vm.h -- internal: the interface between libssmc.so and its VM plugin, libssmc_vm.so.
 *
 * Artifacts compiled with `--executor vm` hold a Relax VM executable that only TVM's runtime can run.
 * libssmc.so itself links no TVM: when such an artifact is opened it dlopens libssmc_vm.so from its
 * own directory (ssmc_vm.cc, linked against libtvm_runtime.so and libtvm_ffi.so with RPATH $ORIGIN)
 * and drives the VM through these five plain C functions. No C++ type or exception crosses them.
 *
 * The plugin does not own the step's buffers: libssmc allocates them and passes pointers on every
 * step, exactly as for a static library (ssmc_static_abi.h), so both executors share one commit
 * path: in = inputs then state, out = outputs then new state; out never overlaps in.
 *
 * Not part of the public API (ssmc.h); the two libraries come from the same bundle, and
 * SSMC_VM_PLUGIN_VERSION guards against mixing bundles.
 */
#ifndef SSMC_VM_H_
#define SSMC_VM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SSMC_VM_PLUGIN_VERSION 2 /* 2: open checks the entry's arity, step every result's dtype and shape */

typedef struct ssmc_vm ssmc_vm;

/* One tensor of the step: row-major, `bytes` = prod(shape) * bits / 8, DLPack dtype code. */
typedef struct ssmc_vm_tensor {
  const char *name;
  const int64_t *shape;
  int32_t ndim;
  uint8_t code; /* kDLInt 0, kDLUInt 1, kDLFloat 2 */
  uint8_t bits;
  uint64_t bytes;
} ssmc_vm_tensor;

/* SSMC_VM_PLUGIN_VERSION as the plugin was compiled. */
typedef uint32_t (*ssmc_vm_plugin_version_fn)(void);
/* Load `library` (a TVM-exported Relax VM executable), initialise the VM on the CPU with the pooled
 * allocator and look up `entry`. in: the step's inputs then state; out: its outputs then new state.
 * Returns 0 and sets *vm; otherwise nonzero and ssmc_vm_error(NULL) says why (one line, this thread). */
typedef int (*ssmc_vm_open_fn)(const char *library, const char *entry, const ssmc_vm_tensor *in, size_t n_in,
                               const ssmc_vm_tensor *out, size_t n_out, ssmc_vm **vm);
/* One step: reads in[i] (n_in buffers), writes every out[j] (n_out buffers). Returns 0; otherwise
 * nonzero, ssmc_vm_error(vm) says why, and the out buffers hold nothing meaningful. */
typedef int (*ssmc_vm_step_fn)(ssmc_vm *vm, void *const *in, void *const *out);
/* The last error on vm, or with NULL this thread's last ssmc_vm_open error. */
typedef const char *(*ssmc_vm_error_fn)(const ssmc_vm *vm);
typedef void (*ssmc_vm_close_fn)(ssmc_vm *vm);

#ifdef __cplusplus
}
#endif

#endif /* SSMC_VM_H_ */

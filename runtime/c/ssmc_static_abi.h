/*
 * ssmc_static_abi.h -- the interface between a static step library and whoever calls it.
 *
 * `ssmc compile --executor static` (compile/static.py) writes the step as native code: the scheduled
 * TVM kernels, a fixed sequence of calls to them generated from the Relax `main`, every intermediate
 * tensor at an offset in one arena planned at compile time, and the weights as constant data. The
 * library needs libc and libm, nothing else: no TVM runtime, no heap, no interpreter.
 *
 * The artifact's library (manifest "library", "executor": "static") and the `--emit c` source bundle
 * both export exactly these symbols:
 *
 *   ssmc_static_abi_version()   SSMC_STATIC_ABI_VERSION as the library was generated
 *   ssmc_static_arena_bytes()   bytes of scratch memory one step needs (the manifest's arena_bytes)
 *   ssmc_static_descriptor()    the step's calling convention as compiled, one static string:
 *                               "in=float32[1,3],float32[1,1],float32[1,16,4];out=float32[1,1],float32[1,16,4]"
 *                               (inputs then state; outputs then new state; dtype[shape] each). ssmc_open
 *                               compares it with the manifest and refuses a mismatch before any step runs.
 *   ssmc_static_step(in, out, arena)
 *       in:    the step's inputs then its state, in manifest order (obs_raw, rtg_raw, *state)
 *       out:   the step's outputs then the new state, in manifest order (action, *new_state)
 *       arena: ssmc_static_arena_bytes() bytes, owned by the caller
 *     Every pointer is SSMC_STATIC_ALIGN-byte aligned and points to the tensor's bytes (row-major,
 *     the manifest's shape and dtype). `out` buffers must not overlap `in` buffers or the arena: the
 *     caller double-buffers the state and commits it only when the step succeeded, so a failed step
 *     changes nothing. The step reads `in`, writes every `out` buffer, and uses the arena for
 *     everything else; it keeps no state of its own between calls, so one library serves any number
 *     of callers, each with its own arena. Returns 0 on success; otherwise nonzero, and
 *     ssmc_static_last_error() says why in one line (thread-local).
 *
 * Reentrancy: a step runs on the calling thread; calls with different arenas may run concurrently.
 */
#ifndef SSMC_STATIC_ABI_H_
#define SSMC_STATIC_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SSMC_STATIC_ABI_VERSION 1
#define SSMC_STATIC_ALIGN 64

typedef uint32_t (*ssmc_static_abi_version_fn)(void);
typedef uint64_t (*ssmc_static_arena_bytes_fn)(void);
typedef int32_t (*ssmc_static_step_fn)(void *const *in, void *const *out, void *arena);
typedef const char *(*ssmc_static_last_error_fn)(void);
typedef const char *(*ssmc_static_descriptor_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* SSMC_STATIC_ABI_H_ */

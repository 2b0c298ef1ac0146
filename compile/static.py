"""The static executor: the step as native code, with no VM, no TVM runtime and no heap (docs/compile.md).

After ``cpu-schedule`` the Relax ``main`` of a step is one dataflow block of ``call_tir`` bindings: a
fixed sequence of kernel calls on tensors whose shapes are all static. This module turns that into:

    kernels   every scheduled PrimFunc compiled by TVM's own code generators: LLVM for the artifact's
              library (the vector schedules of compile/tuning.py kept), C for ``--emit c``. Argument
              assertions are compiled out (``tirx.disable_assert``): the glue below passes exactly the
              shapes the kernels were compiled for, by construction.
    plan      ``plan_step``: every tensor ``main`` touches, placed at compile time. Inputs and state are
              the caller's buffers, outputs and new state are written straight into the caller's output
              buffers where the graph allows (else copied at the end), constants live in one weight
              blob (int8 weights stay int8), and every intermediate gets an offset in one arena, reused
              once its last reader has run (greedy by size over live ranges). A kernel that only
              reshapes (``_is_view_kernel``) is not called: its output is a view of its input's bytes
              (DeMa's recurrent step: 79 kernel calls -> 61, DMM's 146 -> 122). The kernels' own scratch
              (``TVMBackendAllocWorkspace``) comes from a stack at the arena's end, sized from the lowered
              kernels.
    glue      ``glue_source``: C99 that builds the kernels' tensor descriptors on the stack and calls
              the kernels in order; ``weights_source``: the blob as a byte array. Both are generated
              text; nothing in them allocates.

The library exports the ABI of runtime/c/ssmc_static_abi.h and links libc and libm alone. The glue
declares the few C types of TVM's kernel calling convention itself (``KERNEL_ABI_HEADER``: DLPack's
tensor descriptor and TVM FFI's 16-byte argument cell), so neither the artifact nor the source bundle
needs a TVM header or library.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssmc.errors import ConfigError
from ssmc.targets import Target

#: The symbols a static library exports (runtime/c/ssmc_static_abi.h).
ABI_VERSION = 1
ENTRY = "ssmc_static_step"
ALIGN = 64
#: DLPack codes: kDLCPU, and dtype codes (int, uint, float).
_DL_CPU, _DL_CODES = 1, {"int": 0, "uint": 1, "float": 2, "bfloat": 4, "bool": 6}
#: TVM FFI type index of a raw ``DLTensor*`` argument (kTVMFFIDLTensorPtr).
_FFI_DLTENSOR_PTR = 7


def _round_up(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


# ------------------------------------------------------------------------------------- the plan

@dataclass
class PlannedTensor:
    """One tensor the step touches: where it lives (``place``) and at which byte offset."""

    shape: tuple[int, ...]
    dtype: str
    place: str  # "in" (caller's input/state slot), "out" (caller's output slot), "arena", "const", "view"
    slot: int = 0  # index into in[] / out[] for "in" / "out"; for a "view", the tensor whose bytes it is
    offset: int = 0  # bytes into the arena or the weight blob
    first: int = -1  # index of the call that writes it (arena tensors)
    last: int = -1  # index of the last call that reads it (arena tensors)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass
class KernelCall:
    kernel: str  # PrimFunc name (the packed symbol is ``__tvm_ffi_<kernel>``)
    args: list[int]  # tensor indices, inputs then outputs (destination-passing style)


@dataclass
class StaticPlan:
    """Everything the glue needs: tensors, calls in order, end-of-step copies, sizes."""

    tensors: list[PlannedTensor]
    calls: list[KernelCall]
    copies: list[tuple[int, int]]  # (output slot, tensor index): memcpy into out[slot] at the end
    n_inputs: int
    n_outputs: int
    blob: bytes
    kernels: dict[str, Any] = field(default_factory=dict)  # name -> PrimFunc
    tensors_bytes: int = 0  # the arena's tensor part
    workspace_bytes: int = 0  # the kernels' scratch stack after it

    @property
    def arena_bytes(self) -> int:
        return self.tensors_bytes + self.workspace_bytes

    def summary(self) -> dict[str, Any]:
        """For the manifest and the progress line."""
        return {"kernel_calls": len(self.calls), "kernels": len(self.kernels),
                "arena_bytes": self.arena_bytes, "arena_tensor_bytes": self.tensors_bytes,
                "workspace_bytes": self.workspace_bytes, "weight_bytes": len(self.blob),
                "output_copies": len(self.copies)}


def _tensor_type(ty: Any, where: str) -> tuple[tuple[int, ...], str]:
    shape = getattr(ty, "shape", None)
    dtype = getattr(ty, "dtype", None)
    if shape is None or dtype is None:
        raise ConfigError(f"static executor: {where} is not a tensor of static shape (use --executor vm)")
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"static executor: {where} has a symbolic shape (use --executor vm)") from e
    return dims, str(dtype)


def _const_array(c: Any) -> np.ndarray:
    value = getattr(c, "data", None)
    if value is None:
        value = c.value
    return value.numpy()


#: Ops that move no data in a contiguous row-major layout: a kernel made of these alone is a view.
_VIEW_OPS = re.compile(r"(?:fused_)?(?:(?:reshape|expand_dims|squeeze|flatten)\d*(?:_|$))+")


def _is_view_kernel(name: str, func: Any, shape_in: tuple[int, ...], dtype_in: str,
                    shape_out: tuple[int, ...], dtype_out: str) -> bool:
    """Whether kernel ``name`` (called on one ``shape_in`` tensor, writing one ``shape_out`` tensor) only
    reshapes: named after reshape-like ops alone (``_VIEW_OPS``: LegalizeOps' and FuseOps' names), same dtype
    and size, and, built for the compiling machine and run on distinct values, its output's bytes are its
    input's. The plan then gives the output the input's bytes instead of calling it."""
    import tvm

    if not _VIEW_OPS.fullmatch(name) or len(func.params) != 2:
        return False
    if dtype_in != dtype_out or math.prod(shape_in) != math.prod(shape_out):
        return False
    values = (np.arange(math.prod(shape_in)) % 65521 - 32760).astype(dtype_in).reshape(shape_in)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")
    out = tvm.runtime.tensor(np.zeros(shape_out, dtype_out))
    lib["main"](tvm.runtime.tensor(values), out)
    return out.numpy().tobytes() == values.tobytes()


def plan_step(mod: Any) -> StaticPlan:
    """The static plan of ``mod["main"]`` after ``cpu-schedule`` (see the module docstring).

    Raises ConfigError naming the first binding the static executor cannot run.
    """
    import tvm
    from tvm import relax, tirx

    main = mod["main"]
    tensors: list[PlannedTensor] = []
    env: dict[Any, Any] = {}  # relax Var -> tensor index, or a tuple of them
    consts: dict[int, int] = {}
    blob = bytearray()

    def add(t: PlannedTensor) -> int:
        tensors.append(t)
        return len(tensors) - 1

    for i, p in enumerate(main.params):
        shape, dtype = _tensor_type(p.ty, f"parameter {p.name}")
        env[p] = add(PlannedTensor(shape, dtype, "in", slot=i))

    def lookup(expr: Any, where: str) -> Any:
        if isinstance(expr, relax.Var):
            if expr not in env:
                raise ConfigError(f"static executor: {where} reads {expr.name} before it is defined")
            return env[expr]
        if isinstance(expr, tvm.ir.expr.Constant):
            key = expr.__hash__()
            if key not in consts:
                arr = np.ascontiguousarray(_const_array(expr))
                blob.extend(b"\0" * (_round_up(len(blob)) - len(blob)))
                consts[key] = add(PlannedTensor(tuple(arr.shape), str(arr.dtype), "const", offset=len(blob)))
                blob.extend(arr.tobytes())
            return consts[key]
        if isinstance(expr, relax.Tuple):
            return tuple(lookup(f, where) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return lookup(expr.tuple_value, where)[expr.index]
        raise ConfigError(f"static executor: {where}: {type(expr).__name__} is not supported (use --executor vm)")

    calls: list[KernelCall] = []
    kernels: dict[str, Any] = {}
    views: dict[str, bool] = {}  # kernel name -> whether it only reshapes (_is_view_kernel)

    def resolve(x: int) -> int:  # the tensor whose bytes x is (itself, unless a view)
        return tensors[x].slot if tensors[x].place == "view" else x
    for block in main.body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            where = f"binding {var.name}"
            if isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir":
                gv, args = value.args[0], value.args[1]
                func = mod[gv]
                if not isinstance(func, tirx.PrimFunc):
                    raise ConfigError(f"static executor: {where} calls {gv.name_hint}, not a TIR kernel")
                if len(value.args) > 2:
                    raise ConfigError(f"static executor: {where} passes symbolic shape arguments (use --executor vm)")
                ins = [lookup(a, where) for a in args.fields]
                if any(isinstance(x, tuple) for x in ins):
                    raise ConfigError(f"static executor: {where} passes a tuple to a kernel")
                name = gv.name_hint
                if name not in views and len(ins) == 1 and not hasattr(value.ty_args[0], "fields"):
                    shape, dtype = _tensor_type(value.ty_args[0], where)
                    views[name] = _is_view_kernel(name, func, tensors[ins[0]].shape, tensors[ins[0]].dtype,
                                                  shape, dtype)
                if views.get(name):  # a reshape: the same bytes under the output's shape, no call
                    shape, dtype = _tensor_type(value.ty_args[0], where)
                    root = resolve(ins[0])
                    env[var] = add(PlannedTensor(shape, dtype, "view", slot=root))
                    continue
                out_types = value.ty_args[0]
                out_types = list(out_types.fields) if hasattr(out_types, "fields") else [out_types]
                outs = []
                for ty in out_types:
                    shape, dtype = _tensor_type(ty, where)
                    outs.append(add(PlannedTensor(shape, dtype, "arena", first=len(calls))))
                for x in ins:
                    x = resolve(x)
                    if tensors[x].place == "arena":
                        tensors[x].last = len(calls)
                calls.append(KernelCall(gv.name_hint, [*ins, *outs]))
                kernels[gv.name_hint] = func
                env[var] = outs[0] if len(outs) == 1 else tuple(outs)
            else:
                env[var] = lookup(value, where)

    result = lookup(main.body.body, "the result")
    result = list(result) if isinstance(result, tuple) else [result]
    # Outputs written in place where a kernel produces them and nothing else claims that tensor; the rest
    # (an input passed through, a constant, a tensor returned twice) is copied at the end.
    copies: list[tuple[int, int]] = []
    claimed: set[int] = set()
    for slot, t in enumerate(result):
        if not isinstance(t, int):
            raise ConfigError("static executor: a nested tuple in the result is not supported")
        if tensors[t].place == "arena" and t not in claimed:
            tensors[t].place, tensors[t].slot = "out", slot
            claimed.add(t)
        else:
            copies.append((slot, t))
            if tensors[resolve(t)].place == "arena":
                tensors[resolve(t)].last = len(calls)
    plan = StaticPlan(tensors, calls, copies, len(main.params), len(result), bytes(blob), kernels)
    plan.tensors_bytes = _place_arena(tensors)
    return plan


def _place_arena(tensors: list[PlannedTensor]) -> int:
    """Offsets for the arena tensors: largest first, each at the lowest aligned offset that overlaps no
    placed tensor whose live range [first, last] meets its own. Returns the bytes used."""
    arena = [t for t in tensors if t.place == "arena"]
    for t in arena:
        t.last = max(t.last, t.first)  # a result nobody reads still needs its bytes while it is written
    placed: list[PlannedTensor] = []
    for t in sorted(arena, key=lambda t: (-t.nbytes, t.first)):
        size = _round_up(max(t.nbytes, 1))
        busy = sorted((p.offset, p.offset + _round_up(max(p.nbytes, 1))) for p in placed
                      if p.first <= t.last and t.first <= p.last)
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, hi)
        t.offset = offset
        placed.append(t)
    return max((p.offset + _round_up(max(p.nbytes, 1)) for p in placed), default=0)


# ------------------------------------------------------------------------------------ kernels

#: A kernel's lowered TIR asks for scratch as TVMBackendAllocWorkspace(device, id, nbytes, code, bits).
_WORKSPACE = re.compile(r"TVMBackendAllocWorkspace\(\s*1,\s*[^,]+,\s*T\.uint64\((\d+)\)")


def _kernel_module(plan: StaticPlan) -> Any:
    import tvm

    return tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in plan.kernels.items()})


def build_kernels(plan: StaticPlan, target: Any, c_source: bool) -> tuple[Any, int]:
    """The kernels as a TVM module (LLVM, or C source with ``c_source``) and the largest scratch stack
    any one kernel asks for (bytes, each allocation rounded up to the alignment)."""
    import importlib

    import tvm

    tb = importlib.import_module("tvm.tirx.build")  # the module: ``tvm.tirx.build`` the name is its function
    tgt = tvm.target.Target("c") if c_source else target
    config = {"tirx.disable_assert": True}
    if c_source:
        config["tirx.disable_vectorize"] = True  # plain loops; the C compiler vectorises what it can
    with tvm.transform.PassContext(opt_level=3, config=config):
        tgt = tvm.target.Target(tgt)
        host = tgt
        bound = tvm.tirx.transform.BindTarget(tgt.with_host(host))(_kernel_module(plan))
        pipeline, finalize_host, _ = tvm.tirx.get_tir_pipeline("default")
        lowered = pipeline(bound)
        host_mod, device = tb.split_host_device_mods(lowered)
        if device:
            raise ConfigError("static executor: kernels for a device other than the CPU (use --executor vm)")
        host_mod = finalize_host()(host_mod)
        workspace = 0
        for _, func in host_mod.functions_items():
            sizes = [int(n) for n in _WORKSPACE.findall(func.script(show_meta=False))]
            workspace = max(workspace, sum(_round_up(s) for s in sizes))
        module = tb.tir_to_runtime(host_mod, {}, host)
    return module, workspace


# --------------------------------------------------------------------------------------- glue

#: The C declarations the kernels and the glue share: DLPack's tensor descriptor, TVM FFI's argument
#: cell, and the backend calls a kernel may make. Written here from the public ABIs (DLPack 1.x,
#: tvm-ffi's c_api.h), so no TVM header is needed to build a static step.
KERNEL_ABI_HEADER = """\
/* ssmc_kernel_abi.h -- generated by ssmc (compile/static.py): the C ABI of TVM-generated kernels.
 * DLPack's tensor descriptor and TVM FFI's 16-byte argument cell, declared from the public ABIs so
 * that a static step builds with a C99 compiler and libm alone. */
#ifndef SSMC_KERNEL_ABI_H_
#define SSMC_KERNEL_ABI_H_
#include <stdint.h>
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
#ifndef TVM_DLL
#define TVM_DLL
#endif
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void *data; DLDevice device; int32_t ndim; DLDataType dtype;
  int64_t *shape; int64_t *strides; uint64_t byte_offset;
} DLTensor;
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void *v_ptr; const char *v_c_str; } u;
} TVMFFIAny;
#define v_ptr u.v_ptr
void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr);
void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message);
void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t count);
#ifdef __cplusplus
}
#endif
#endif
"""

#: Headers TVM's C code generator includes; the bundle's kernels.c includes ssmc_kernel_abi.h instead.
_TVM_INCLUDE = re.compile(r'^#include "tvm/[^"]+"\n', re.M)


def kernels_c_source(module: Any) -> str:
    """TVM's C source of the kernels with its TVM includes replaced by ``ssmc_kernel_abi.h``."""
    src = module.inspect_source()
    src = _TVM_INCLUDE.sub("", src)
    src = src.replace("#define TVM_EXPORTS\n", "")
    src = re.sub(r"^void\* __tvm_ffi__library_ctx = NULL;\n", "", src, flags=re.M)
    return '#include "ssmc_kernel_abi.h"\n' + src


def _dl_dtype(dtype: str) -> tuple[int, int]:
    if dtype == "bool":
        return _DL_CODES["bool"], 8
    m = re.fullmatch(r"(int|uint|float|bfloat)(\d+)", dtype)
    if m is None:
        raise ConfigError(f"static executor: dtype {dtype} has no DLPack code")
    return _DL_CODES[m.group(1)], int(m.group(2))


def step_descriptor(plan: StaticPlan) -> str:
    """The step's calling convention as compiled, what ``ssmc_static_descriptor()`` returns and ssmc_open compares
    with the manifest: ``in=float32[1,3],...;out=float32[1,1],...`` (inputs then state; outputs then new state)."""
    def text(t: PlannedTensor) -> str:
        return f"{t.dtype}[{','.join(str(d) for d in t.shape)}]"

    ins = sorted((t for t in plan.tensors if t.place == "in"), key=lambda t: t.slot)
    outs: dict[int, PlannedTensor] = {t.slot: t for t in plan.tensors if t.place == "out"}
    outs.update({slot: plan.tensors[x] for slot, x in plan.copies})
    return (f"in={','.join(text(t) for t in ins)};"
            f"out={','.join(text(outs[s]) for s in range(plan.n_outputs))}")


def glue_source(plan: StaticPlan, banner: str) -> str:
    """The C99 step function over ``plan`` (see the module docstring and ssmc_static_abi.h)."""
    lines = [f"/* {banner}\n * Generated by ssmc (compile/static.py). Do not edit: recompile. */",
             "#include <string.h>", '#include "ssmc_kernel_abi.h"', "",
             f"#define SSMC_ARENA_BYTES {plan.arena_bytes}u",
             f"#define SSMC_TENSOR_BYTES {plan.tensors_bytes}u", "",
             "#if defined(__GNUC__)", '#define SSMC_EXPORT __attribute__((visibility("default")))',
             "#else", "#define SSMC_EXPORT", "#endif",
             "#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L",
             "#define SSMC_TLS _Thread_local", "#elif defined(__GNUC__)", "#define SSMC_TLS __thread",
             "#else", "#define SSMC_TLS", "#endif", "",
             "extern const unsigned char ssmc_weights[];", ""]
    for name in sorted(plan.kernels):
        lines.append(f"TVM_DLL int32_t __tvm_ffi_{name}(void *self, void *args, int32_t num_args, void *result);")
    # the shapes (one static table) and the per-tensor descriptors' templates
    shapes: list[int] = []
    offsets: list[int] = []  # where each tensor's shape starts in ssmc_shapes
    for t in plan.tensors:
        offsets.append(len(shapes))
        shapes.extend(t.shape or (1,))
    lines += ["", f"static int64_t ssmc_shapes[{max(len(shapes), 1)}] = {{{', '.join(map(str, shapes)) or '0'}}};",
              "",
              "/* the kernels' scratch: a stack at the arena's end (no heap) */",
              "static SSMC_TLS unsigned char *ssmc_ws_top, *ssmc_ws_end;",
              "static SSMC_TLS char ssmc_error[256];", "",
              "void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {",
              "  unsigned char *p = ssmc_ws_top;",
              f"  uint64_t size = (nbytes + {ALIGN - 1}u) / {ALIGN}u * {ALIGN}u;",
              "  (void)device_type; (void)device_id; (void)code; (void)bits;",
              "  if (p == NULL || size > (uint64_t)(ssmc_ws_end - p)) return NULL;",
              "  ssmc_ws_top = p + size;", "  return p;", "}", "",
              "int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {",
              "  (void)device_type; (void)device_id;",
              "  if (ptr != NULL) ssmc_ws_top = (unsigned char *)ptr; /* LIFO: kernels free in reverse order */",
              "  return 0;", "}", "",
              "/* LLVM-generated kernels call the two through these pointers (weak, NULL until a loader fills them) */",
              "void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = TVMBackendAllocWorkspace;",
              "int (*__TVMBackendFreeWorkspace)(int, int, void *) = TVMBackendFreeWorkspace;", "",
              "void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) {",
              "  size_t n = 0, i;",
              "  for (i = 0; kind[i] && n + 2 < sizeof ssmc_error; ++i) ssmc_error[n++] = kind[i];",
              "  if (n + 2 < sizeof ssmc_error) { ssmc_error[n++] = ':'; ssmc_error[n++] = ' '; }",
              "  for (i = 0; message[i] && n + 1 < sizeof ssmc_error; ++i)",
              "    ssmc_error[n++] = message[i] == '\\n' ? ' ' : message[i];",
              "  ssmc_error[n] = 0;", "}", "",
              "void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t count) {",
              "  TVMFFIErrorSetRaisedFromCStr(kind, count > 0 ? parts[0] : \"\");", "}", "",
              f"SSMC_EXPORT uint32_t ssmc_static_abi_version(void) {{ return {ABI_VERSION}u; }}",
              "SSMC_EXPORT uint64_t ssmc_static_arena_bytes(void) { return SSMC_ARENA_BYTES; }",
              "SSMC_EXPORT const char *ssmc_static_last_error(void) { return ssmc_error; }",
              f'SSMC_EXPORT const char *ssmc_static_descriptor(void) {{ return "{step_descriptor(plan)}"; }}', ""]

    # -DSSMC_PROFILE builds a library that also times every kernel call (tools/bench/static_kernels.py)
    names = sorted(plan.kernels)
    lines += ["#ifdef SSMC_PROFILE", "#include <time.h>",
              f"static double ssmc_prof_ns[{len(names)}]; static long ssmc_prof_calls[{len(names)}];",
              "static const char *ssmc_prof_names[] = {" + ", ".join(f'"{n}"' for n in names) + "};",
              "static double ssmc_prof_now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); "
              "return ts.tv_sec * 1e9 + ts.tv_nsec; }",
              f"SSMC_EXPORT int ssmc_profile_kernels(void) {{ return {len(names)}; }}",
              "SSMC_EXPORT const char *ssmc_profile_name(int i) { return ssmc_prof_names[i]; }",
              "SSMC_EXPORT double ssmc_profile_ns(int i) { return ssmc_prof_ns[i]; }",
              "SSMC_EXPORT long ssmc_profile_calls(int i) { return ssmc_prof_calls[i]; }",
              "#define SSMC_CALL(k, call) { double t0_ = ssmc_prof_now(); if ((call) != 0) goto fail; "
              "ssmc_prof_ns[k] += ssmc_prof_now() - t0_; ssmc_prof_calls[k]++; }",
              "#else", "#define SSMC_CALL(k, call) if ((call) != 0) goto fail;", "#endif", ""]
    n_args = max((len(c.args) for c in plan.calls), default=1)
    lines += ["SSMC_EXPORT int32_t ssmc_static_step(void *const *in, void *const *out, void *arena) {",
              f"  DLTensor t[{max(len(plan.tensors), 1)}];",
              f"  TVMFFIAny a[{n_args}], r;",
              "  unsigned char *m = (unsigned char *)arena;",
              "  ssmc_error[0] = 0;",
              "  ssmc_ws_top = m + SSMC_TENSOR_BYTES; ssmc_ws_end = m + SSMC_ARENA_BYTES;"]
    for i, t in enumerate(plan.tensors):
        at = plan.tensors[t.slot] if t.place == "view" else t  # a view's bytes are another tensor's
        base = {"in": f"in[{at.slot}]", "out": f"out[{at.slot}]", "arena": "m", "const": "ssmc_weights"}[at.place]
        off = 0 if at.place in ("in", "out") else at.offset
        code, bits = _dl_dtype(t.dtype)
        lines.append(f"  t[{i}].data = (unsigned char *)({base}) + {off}; t[{i}].device.device_type = {_DL_CPU}; "
                     f"t[{i}].device.device_id = 0; t[{i}].ndim = {len(t.shape or (1,))}; t[{i}].dtype.code = {code}; "
                     f"t[{i}].dtype.bits = {bits}; t[{i}].dtype.lanes = 1; t[{i}].shape = ssmc_shapes + {offsets[i]}; "
                     f"t[{i}].strides = NULL; t[{i}].byte_offset = 0;")
    for c in plan.calls:
        args = " ".join(f"a[{j}].type_index = {_FFI_DLTENSOR_PTR}; a[{j}].zero_padding = 0; a[{j}].v_ptr = &t[{x}];"
                        for j, x in enumerate(c.args))
        lines.append(f"  {args}")
        lines.append(f"  SSMC_CALL({names.index(c.kernel)}, __tvm_ffi_{c.kernel}(NULL, a, {len(c.args)}, &r));")
    for slot, x in plan.copies:
        lines.append(f"  memcpy(out[{slot}], t[{x}].data, {plan.tensors[x].nbytes});")
    lines += ["  ssmc_ws_top = ssmc_ws_end = NULL;", "  return 0;", "fail:",
              "  ssmc_ws_top = ssmc_ws_end = NULL;",
              '  if (ssmc_error[0] == 0) { const char *msg = "a kernel failed"; strcpy(ssmc_error, msg); }',
              "  return -1;", "}", ""]
    return "\n".join(lines)


def weights_source(blob: bytes) -> str:
    """The weight blob as a 64-byte-aligned C byte array (exact bytes; any endianness reads them as
    written, since the kernels reinterpret them in place on a little-endian target)."""
    body = []
    for i in range(0, len(blob), 32):
        body.append(",".join(str(b) for b in blob[i:i + 32]))
    return ("/* Generated by ssmc (compile/static.py): every constant of the step, 64-byte aligned. */\n"
            "#if defined(__GNUC__)\n#define SSMC_ALIGNED __attribute__((aligned(64)))\n#else\n#define SSMC_ALIGNED\n#endif\n"
            f"const unsigned char ssmc_weights[{max(len(blob), 1)}] SSMC_ALIGNED = {{\n"
            + (",\n".join(body) or "0") + "\n};\n")


# ------------------------------------------------------------------------------------- builds

@dataclass
class StaticBuild:
    """The outputs of ``build_static``: the library (or bundle folder) and what the manifest records."""

    path: Path
    plan: StaticPlan
    report: dict[str, Any]


def _compiler(target: Target) -> str:
    """The C compiler that links the static step: ``Target.toolchain`` (host cc; aarch64-linux-gnu-gcc or
    zig cc for aarch64); one-line ConfigError naming what to install when there is none."""
    return target.toolchain().cc


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{what} failed ({' '.join(cmd[:2])} ...):\n{tail}")


def write_sources(plan: StaticPlan, kernels_c: str | None, out: Path, banner: str) -> list[Path]:
    """glue (ssmc_step.c), weights (ssmc_weights.c), the kernel ABI header, and kernels.c when given."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"ssmc_kernel_abi.h": KERNEL_ABI_HEADER, "ssmc_step.c": glue_source(plan, banner),
             "ssmc_weights.c": weights_source(plan.blob)}
    if kernels_c is not None:
        files["kernels.c"] = kernels_c
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return [out / n for n in files]


def build_library(plan: StaticPlan, target: Target, workdir: Path, library: Path, banner: str,
                  say: Callable[[str], None], profile: bool = False) -> dict[str, Any]:
    """Compile the kernels with LLVM and link them with the glue into ``library`` (a shared object that
    needs libc and libm only). Returns what the manifest records about the build. ``profile`` adds a
    per-kernel timer (``ssmc_profile_*``; never in an artifact)."""
    module, workspace = build_kernels(plan, target.tvm_target(), c_source=False)
    plan.workspace_bytes = workspace
    kernels_o = workdir / "kernels.o"
    module.write_to_file(str(kernels_o))
    write_sources(plan, None, workdir, banner)
    cc = _compiler(target)
    cmd = [cc, "-std=c99", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", *(["-DSSMC_PROFILE",
           "-D_POSIX_C_SOURCE=199309L"] if profile else []), "-o", str(library),
           str(workdir / "ssmc_step.c"), str(workdir / "ssmc_weights.c"), str(kernels_o), "-lm",
           "-Wl,--exclude-libs,ALL", "-Wl,-z,noexecstack"]
    _run(cmd, "linking the static step")
    say(f"static: {len(plan.calls)} kernel calls of {len(plan.kernels)} kernels, arena {plan.arena_bytes:,} bytes "
        f"(workspace {workspace:,}), weights {len(plan.blob):,} bytes")
    return plan.summary()


BUNDLE_MAKEFILE = """\
# Generated by ssmc (compile/static.py): the static step as C99 sources, for firmware and RTOS builds.
#   make                 libssmc_step.a and ssmc_step_demo with the host cc
#   make CC=aarch64-linux-gnu-gcc
# Needs a C99 compiler and libm, nothing else.
CC      ?= cc
CFLAGS  ?= -O3
SOURCES := ssmc_step.c ssmc_weights.c kernels.c
OBJECTS := $(SOURCES:.c=.o)

all: libssmc_step.a ssmc_step_demo

%.o: %.c ssmc_kernel_abi.h ssmc_step.h
\t$(CC) -std=c99 $(CFLAGS) -c -o $@ $<

libssmc_step.a: $(OBJECTS)
\t$(AR) rcs $@ $^

ssmc_step_demo: demo.c libssmc_step.a ssmc_step.h
\t$(CC) -std=c99 $(CFLAGS) -o $@ demo.c libssmc_step.a -lm

clean:
\trm -f $(OBJECTS) libssmc_step.a ssmc_step_demo

.PHONY: all clean
"""


def bundle_header(plan: StaticPlan, specs: dict[str, list[Any]], banner: str) -> str:
    """ssmc_step.h: the ABI's prototypes and the step's sizes as macros."""
    lines = [f"/* ssmc_step.h -- {banner}\n * Generated by ssmc (compile/static.py).\n *",
             " * ssmc_static_step(in, out, arena): in = {obs_raw, rtg_raw, state...}, out = {action, new state...},",
             " * every buffer SSMC_STEP_ALIGN-byte aligned, out not overlapping in or the arena; returns 0 on",
             " * success, else ssmc_static_last_error() says why. The caller commits the new state. */",
             "#ifndef SSMC_STEP_H_", "#define SSMC_STEP_H_", "#include <stdint.h>", "",
             f"#define SSMC_STEP_ALIGN {ALIGN}", f"#define SSMC_STEP_ARENA_BYTES {plan.arena_bytes}",
             f"#define SSMC_STEP_INPUTS {plan.n_inputs}", f"#define SSMC_STEP_OUTPUTS {plan.n_outputs}"]
    for group in ("inputs", "state", "outputs"):
        for s in specs[group]:
            macro = re.sub(r"\W", "_", s.name).upper()
            lines.append(f"#define SSMC_STEP_{group.upper()}_{macro}_BYTES {s.nbytes}  /* {s.dtype} {list(s.shape)} */")
    lines += ["", "#ifdef __cplusplus", 'extern "C" {', "#endif",
              "uint32_t ssmc_static_abi_version(void);", "uint64_t ssmc_static_arena_bytes(void);",
              "int32_t ssmc_static_step(void *const *in, void *const *out, void *arena);",
              "const char *ssmc_static_last_error(void);", "#ifdef __cplusplus", "}", "#endif", "#endif", ""]
    return "\n".join(lines)


#: demo.c: runs the step over binary float32 records on stdin (inputs then state, manifest order, the
#: state carried by the demo itself) and writes the outputs as binary records on stdout.
BUNDLE_DEMO = """\
/* demo.c -- generated by ssmc: drive the static step from binary records (tests, bring-up).
 *   ssmc_step_demo STEPS < inputs.bin > outputs.bin
 * Each step reads the sizes in ssmc_step.h: the inputs (obs_raw, rtg_raw) of every step as raw bytes; the
 * state starts at zero and is carried here. Each step writes the outputs then the new state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ssmc_step.h"

static const size_t in_bytes[] = {SSMC_DEMO_IN_BYTES};
static const size_t out_bytes[] = {SSMC_DEMO_OUT_BYTES};

static void *aligned(size_t n) {
  void *p = NULL;
  size_t size = (n + SSMC_STEP_ALIGN - 1) / SSMC_STEP_ALIGN * SSMC_STEP_ALIGN;
  p = malloc(size + SSMC_STEP_ALIGN);
  if (p == NULL) { fputs("error: out of memory\\n", stderr); exit(1); }
  memset(p, 0, size + SSMC_STEP_ALIGN);
  return (void *)(((uintptr_t)p + SSMC_STEP_ALIGN - 1) / SSMC_STEP_ALIGN * SSMC_STEP_ALIGN);
}

int main(int argc, char **argv) {
  long steps = argc > 1 ? atol(argv[1]) : 1, s;
  int i, n_state = SSMC_STEP_INPUTS - SSMC_DEMO_N_RAW;
  void *in[SSMC_STEP_INPUTS], *out[SSMC_STEP_OUTPUTS];
  void *arena = aligned(SSMC_STEP_ARENA_BYTES ? SSMC_STEP_ARENA_BYTES : 1);
  if (ssmc_static_abi_version() != 1) { fputs("error: unexpected ABI version\\n", stderr); return 1; }
  for (i = 0; i < SSMC_STEP_INPUTS; ++i) in[i] = aligned(in_bytes[i]);
  for (i = 0; i < SSMC_STEP_OUTPUTS; ++i) out[i] = aligned(out_bytes[i]);
  for (s = 0; s < steps; ++s) {
    for (i = 0; i < SSMC_DEMO_N_RAW; ++i) {
      if (fread(in[i], 1, in_bytes[i], stdin) != in_bytes[i]) { fputs("error: short input\\n", stderr); return 1; }
    }
    if (ssmc_static_step(in, out, arena) != 0) { fprintf(stderr, "error: %s\\n", ssmc_static_last_error()); return 1; }
    for (i = 0; i < SSMC_STEP_OUTPUTS; ++i) fwrite(out[i], 1, out_bytes[i], stdout);
    for (i = 0; i < n_state; ++i) memcpy(in[SSMC_DEMO_N_RAW + i], out[SSMC_STEP_OUTPUTS - n_state + i], in_bytes[SSMC_DEMO_N_RAW + i]);
  }
  return 0;
}
"""


def emit_c_bundle(plan: StaticPlan, specs: dict[str, list[Any]], out: Path, banner: str,
                  say: Callable[[str], None]) -> dict[str, Any]:
    """Write the ``--emit c`` source bundle into ``out``: kernels.c (TVM's C code generator), the glue,
    the weights, ssmc_step.h, ssmc_kernel_abi.h, demo.c and a Makefile. Returns the plan summary."""
    module, workspace = build_kernels(plan, None, c_source=True)
    plan.workspace_bytes = workspace
    write_sources(plan, kernels_c_source(module), out, banner)
    (out / "ssmc_step.h").write_text(bundle_header(plan, specs, banner), encoding="utf-8")
    n_raw = len(specs["inputs"])
    in_bytes = [s.nbytes for s in (*specs["inputs"], *specs["state"])]
    out_bytes = [s.nbytes for s in (*specs["outputs"], *specs["state"])]
    demo = (f"#define SSMC_DEMO_N_RAW {n_raw}\n#define SSMC_DEMO_IN_BYTES {', '.join(map(str, in_bytes))}\n"
            f"#define SSMC_DEMO_OUT_BYTES {', '.join(map(str, out_bytes))}\n" + BUNDLE_DEMO)
    (out / "demo.c").write_text(demo, encoding="utf-8")
    (out / "Makefile").write_text(BUNDLE_MAKEFILE, encoding="utf-8")
    say(f"emit c: {len(plan.calls)} kernel calls, arena {plan.arena_bytes:,} bytes, weights {len(plan.blob):,} bytes")
    return plan.summary()


# ------------------------------------------------------------------------------ running one here

class StaticLibrary:
    """A host static step library called through ctypes: what ``compile_checkpoint`` checks against the
    PyTorch reference before it writes the artifact, and what tests use to call the step directly.

    ``step(arrays)`` takes the inputs then the state (manifest order) and returns the outputs then the new
    state as fresh numpy arrays; buffers are 64-byte aligned and the arena is the library's own size.
    """

    def __init__(self, path: Path, outputs: list[tuple[tuple[int, ...], str]]) -> None:
        import ctypes

        self._ct = ctypes
        self._lib = ctypes.CDLL(str(path))
        self._lib.ssmc_static_step.restype = ctypes.c_int32
        self._lib.ssmc_static_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self._lib.ssmc_static_arena_bytes.restype = ctypes.c_uint64
        self._lib.ssmc_static_last_error.restype = ctypes.c_char_p
        self.arena_bytes = int(self._lib.ssmc_static_arena_bytes())
        self._arena = self._aligned(np.zeros(max(self.arena_bytes, 1), np.uint8))
        self._outputs = outputs

    @staticmethod
    def _aligned(a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a)
        raw = np.empty(a.nbytes + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        view = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        return view

    def step(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        ct = self._ct
        ins = [self._aligned(a) for a in arrays]
        outs = [self._aligned(np.zeros(shape, dtype)) for shape, dtype in self._outputs]
        in_ptrs = (ct.c_void_p * len(ins))(*(a.ctypes.data for a in ins))
        out_ptrs = (ct.c_void_p * len(outs))(*(a.ctypes.data for a in outs))
        if self._lib.ssmc_static_step(in_ptrs, out_ptrs, self._arena.ctypes.data) != 0:
            raise RuntimeError(f"static step failed: {self._lib.ssmc_static_last_error().decode()}")
        return [o.copy() for o in outs]

"""Live-row pruning: compute only the rows of the token axis that the step's outputs read.

A window step runs its network over all 3K tokens and then reads one of them: the action comes from
the newest ``s_t`` token (``x[:, -2]`` in train/models/dt.py and train/models/common.py). Every row-wise
op between the last operation that mixes tokens and that read (the last block's attention output
projection, its MLP, the norms, the head) is computed for all 3K rows and 3K − 1 of them are thrown
away. In DT's K = 20 step that is the last block's out-projection and MLP for 59 rows and 59 of its 60
attention queries: about 27 % of the step's MACs. No peer prunes them: ONNX Runtime and IREE run the
exported graph as written.

The ``prune-rows`` stage (compile/pipeline.py) finds every ``strided_slice`` that takes *one* index of
a non-last axis (a token row; feature slices such as Mamba's x_proj split are left alone) and sinks it
through its producers for as long as the producer computes each row from the same row of its inputs:

- elementwise ops, with broadcasting (an input whose axis is 1 or absent is kept whole);
- ``layer_norm`` and ``softmax`` over other axes; ``permute_dims``; ``broadcast_to``; a ``reshape`` whose
  row axis keeps its size and the product of the dimensions before it (a view of the same rows);
- ``matmul`` on its row (M) axis or a batch axis; never on its N axis, so no weight is sliced;
- one item of a ``split`` along another axis.

It stops at anything else (an input, a constant, the scan, a conv, a matmul's N axis), where it takes
the slice of the full value. The rewrite runs twice: the first run sinks every slice as far as it goes
(each ``(value, axis, row)`` once) and removes dead code; where a full value that a slice was sunk
through is still needed by something else (DT's earlier blocks: their full outputs feed the last
block's keys and values), the second run stops there and takes the row from the full value instead
of computing it again. So the step computes each row it needs once and no row it does not.

Row-wise ops give each row the same value whether computed alone or with the others, so the outputs
match the unpruned step up to the summation order of a 1-row against a many-row GEMM schedule
(tests/test_rows.py checks both against PyTorch).
"""

from __future__ import annotations

from typing import Any

#: Elementwise relax ops a row slice passes through (all tensor inputs broadcast against the output).
ELEMENTWISE = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.power", "relax.maximum",
    "relax.minimum", "relax.where", "relax.equal", "relax.not_equal", "relax.less", "relax.less_equal",
    "relax.greater", "relax.greater_equal", "relax.logical_and", "relax.logical_or", "relax.logical_not",
    "relax.bitwise_and", "relax.bitwise_or", "relax.bitwise_not", "relax.bitwise_xor", "relax.negative",
    "relax.exp", "relax.log", "relax.sqrt", "relax.rsqrt", "relax.tanh", "relax.sigmoid", "relax.abs",
    "relax.clip", "relax.astype", "relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu",
    "relax.square", "relax.floor", "relax.round",
})


def _shape(expr: Any) -> list[int] | None:
    """Static shape of a tensor-valued expression, or None."""
    ty = getattr(expr, "ty", None) or getattr(expr, "struct_info", None)  # TVM 0.27 names it ``ty``
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    try:
        return [int(s) for s in shape.values]
    except (TypeError, ValueError):  # a symbolic dimension
        return None


def _row_slice(call: Any) -> tuple[Any, int, int] | None:
    """``(x, axis, row)`` if ``call`` is a strided_slice of one index on one non-last axis, stride 1."""
    import tvm
    from tvm import relax

    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
        return None
    if call.op.name != "relax.strided_slice" or len(call.args) < 4:
        return None
    x = call.args[0]
    shape = _shape(x)
    if shape is None:
        return None
    try:
        axes, begin, end = ([int(v) for v in t.fields] for t in call.args[1:4])
        strides = [int(v) for v in call.args[4].fields] if len(call.args) > 4 else [1]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(axes) != 1 or any(s != 1 for s in strides):
        return None
    axis = axes[0] % len(shape)
    size = shape[axis]
    b, e = begin[0], end[0]
    b = b + size if b < 0 else b
    e = e + size if e < 0 else min(e, size)
    if axis == len(shape) - 1 or size < 2 or e - b != 1 or not 0 <= b < size:
        return None
    return x, axis, b


def _reshape_axis(in_shape: list[int], out_shape: list[int], axis: int) -> int | None:
    """The input axis that output ``axis`` of a reshape views row for row, if there is one: same size and
    the same product of the dimensions before it (row-major layout: then every output index on ``axis``
    is the same elements as that index on the input axis)."""
    size = out_shape[axis]
    prefix = 1
    for d in out_shape[:axis]:
        prefix *= d
    p = 1
    for j, d in enumerate(in_shape):
        if d == size and p == prefix:
            return j
        p *= d
    return None


def prune_rows(mod: Any) -> Any:
    """The ``prune-rows`` stage on every Relax function of ``mod`` (see the module docstring)."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    made_from: dict[Any, tuple[Any, int, int]] = {}  # sliced var -> (full var, axis, row)

    @mutator
    class _Sink(PyExprMutator):
        def __init__(self, mod: Any, stop: frozenset) -> None:
            super().__init__(mod)
            self.stop = stop
            self.memo: dict[tuple[Any, int, int], Any] = {}

        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            seed = _row_slice(call)
            if seed is None or not isinstance(seed[0], relax.Var):
                return call
            return self.sliced(*seed)

        # -- x[axis = row], keeping the axis (size 1) ------------------------------------------------
        def take(self, x: Any, axis: int, row: int) -> Any:
            return self.builder_.emit(relax.op.strided_slice(x, [axis], [row], [row + 1]))

        def sliced(self, x: Any, axis: int, row: int) -> Any:
            if not isinstance(x, relax.Var) or x in self.stop:
                return self.take(x, axis, row)
            key = (x, axis, row)
            if key not in self.memo:
                value = self.lookup_binding(x)
                out = self.sink(value, x, axis, row) if value is not None else None
                if out is None:
                    out = self.take(x, axis, row)
                else:
                    made_from[out] = key
                self.memo[key] = out
            return self.memo[key]

        def sink(self, value: Any, x: Any, axis: int, row: int) -> Any | None:
            """``value[axis = row]`` computed from sliced inputs, or None where the slice cannot pass."""
            out_shape = _shape(x)
            if out_shape is None:
                return None
            if isinstance(value, relax.Var):
                return self.sliced(value, axis, row)
            if isinstance(value, relax.TupleGetItem):
                return self._split_item(value, axis, row)
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                return None
            name = value.op.name
            new_shape = list(out_shape)
            new_shape[axis] = 1
            n = len(out_shape)
            args = list(value.args)
            if name in ELEMENTWISE:
                new_args = []
                for a in args:
                    s = _shape(a)
                    if s is None:  # a PrimValue, or a non-static tensor
                        if isinstance(a, relax.PrimValue | relax.StringImm | relax.DataTypeImm):
                            new_args.append(a)
                            continue
                        return None
                    k = axis - (n - len(s))
                    new_args.append(a if k < 0 or s[k] == 1 else self.sliced(a, k, row) if s[k] == out_shape[axis]
                                    else None)
                    if new_args[-1] is None:
                        return None
                return self._emit(value, new_args)
            if name == "relax.nn.layer_norm":
                if axis in {a % n for a in value.attrs.axes}:
                    return None
                return self._emit(value, [self.sliced(args[0], axis, row), *args[1:]])
            if name in ("relax.nn.softmax", "relax.nn.log_softmax"):
                if int(value.attrs.axis) % n == axis:
                    return None
                return self._emit(value, [self.sliced(args[0], axis, row)])
            if name == "relax.permute_dims":
                perm = [int(a) for a in value.attrs.axes] if value.attrs.axes is not None else list(range(n))[::-1]
                return self._emit(value, [self.sliced(args[0], perm[axis], row)])
            if name == "relax.reshape":
                in_shape = _shape(args[0])
                j = _reshape_axis(in_shape, out_shape, axis) if in_shape is not None else None
                if j is None:
                    return None
                return self.builder_.emit(relax.op.reshape(self.sliced(args[0], j, row), new_shape))
            if name == "relax.broadcast_to":
                s = _shape(args[0])
                if s is None:
                    return None
                k = axis - (n - len(s))
                src = args[0] if k < 0 or s[k] == 1 else self.sliced(args[0], k, row)
                return self.builder_.emit(relax.op.broadcast_to(src, new_shape))
            if name == "relax.matmul":
                return self._matmul(value, axis, row, n, out_shape)
            return None

        def _matmul(self, value: Any, axis: int, row: int, n: int, out_shape: list[int]) -> Any | None:
            a, b = value.args
            sa, sb = _shape(a), _shape(b)
            if sa is None or sb is None or len(sa) < 2 or axis == n - 1:
                return None  # a vector operand, or the N axis (the weight's columns): not sliced
            if axis == n - 2:  # rows of the product: rows of the left operand
                return self._emit(value, [self.sliced(a, len(sa) - 2, row), b])
            new = []
            for t, s in ((a, sa), (b, sb)):  # a batch axis, broadcast as elementwise
                k = axis - (n - len(s))
                if k < 0 or k >= len(s) - 2 or s[k] == 1:
                    new.append(t)
                elif s[k] == out_shape[axis]:
                    new.append(self.sliced(t, k, row))
                else:
                    return None
            return self._emit(value, new)

        def _split_item(self, item: Any, axis: int, row: int) -> Any | None:
            tup = item.tuple_value
            call = self.lookup_binding(tup) if isinstance(tup, relax.Var) else tup
            if not isinstance(call, relax.Call) or getattr(call.op, "name", None) != "relax.split":
                return None
            n = len(_shape(call.args[0]) or [])
            if n == 0 or int(call.attrs.axis) % n == axis:
                return None
            parts = self.builder_.emit(relax.op.split(self.sliced(call.args[0], axis, row),
                                                      _sections(call.attrs.indices_or_sections), int(call.attrs.axis)))
            return self.builder_.emit(relax.TupleGetItem(parts, item.index))

        def _emit(self, value: Any, args: list[Any]) -> Any:
            return self.builder_.emit(relax.Call(value.op, args, value.attrs, value.ty_args))

    def sink(mod: Any, stop: frozenset) -> tuple[Any, dict[Any, tuple[Any, int, int]]]:
        made_from.clear()
        m = _Sink(mod, stop)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                m.builder_.update_func(gv, m.visit_expr(func))
        return relax.transform.DeadCodeElimination()(m.builder_.get()), dict(made_from)

    first, made = sink(mod, frozenset())
    used: set[Any] = set()
    for _gv, func in first.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: used.add(e) if isinstance(e, relax.Var) else None)
    # full values computed anyway: their rows are taken from them, not computed a second time
    stop = frozenset(full for full, _axis, _row in made.values() if full in used)
    out = sink(mod, stop)[0] if stop else first
    return relax.transform.CanonicalizeBindings()(out)


def _sections(v: Any) -> Any:
    """``split``'s indices_or_sections attribute as the op builder takes it."""
    if hasattr(v, "__len__"):
        return [int(i) for i in v]
    return int(v)


def matmul_macs(mod: Any) -> int:
    """Multiply-adds of every ``matmul`` in ``mod``'s Relax functions (static shapes): what ``prune-rows``
    saves is the difference of this before and after it."""
    from tvm import relax

    total = 0

    def visit(expr: Any) -> None:
        nonlocal total
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", None) == "relax.matmul":
            out, a = _shape(expr), _shape(expr.args[0])
            if out is not None and a is not None:
                n = 1
                for d in out:
                    n *= d
                total += n * a[-1]

    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return total

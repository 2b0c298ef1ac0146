"""The stage boundaries of docs/design.md, pinned.

- ``ssmc.runtime`` imports neither ``ssmc.train`` nor ``ssmc.compile``, except ``runtime/verify.py``'s
  ``_pytorch_reference`` (the PyTorch side of the comparison).
- The shared core (``ssmc/*.py``: errors, artifact, environments, the rollout loop, numerics, toolchain)
  imports no stage at all, so every stage can use it.

Checked twice: statically, over every import statement in the source (nested ones included), and by
importing the runtime's modules in a fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ssmc.train", "ssmc.compile")
#: (file, enclosing function) -> the stage modules it may import.
ALLOWED = {("runtime/verify.py", "_pytorch_reference"): {"ssmc.train.models", "ssmc.train.rollout"}}


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, enclosing top-level function or None) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = func
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and func is None:
                inner = child.name
            if isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, inner))
                found.extend((f"{child.module}.{a.name}", inner) for a in child.names)
            visit(child, inner)

    visit(tree, None)
    return found


def _stage_imports(folder: str) -> list[tuple[str, str | None, str]]:
    out = []
    for path in sorted((ROOT / folder).glob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for module, func in _imports(path):
            allowed = ALLOWED.get((rel, func), set())
            if module.startswith(STAGES) and not any(module == a or module.startswith(a + ".") for a in allowed):
                out.append((rel, func, module))
    return out


def test_runtime_source_imports_no_training_or_compiler_code() -> None:
    bad = _stage_imports("runtime")
    assert not bad, f"ssmc.runtime imports stage code outside verify's PyTorch reference: {bad}"


def test_shared_core_imports_no_stage() -> None:
    bad = [(f, fn, m) for f, fn, m in _stage_imports("ssmc") if not f.startswith("ssmc/cli/")]
    assert not bad, f"the shared core imports stage code: {bad}"


def test_the_allowed_exception_is_still_there() -> None:
    """If verify stopped needing the exception, ALLOWED would silently allow nothing; keep it exact."""
    mods = {m for m, f in _imports(ROOT / "runtime/verify.py") if f == "_pytorch_reference"}
    assert {"ssmc.train.models", "ssmc.train.rollout"} <= mods


def test_importing_the_runtime_loads_no_torch_tvm_or_stage_code() -> None:
    code = ("import json, sys\n"
            "import ssmc.runtime, ssmc.runtime.run, ssmc.runtime.hil, ssmc.runtime.verify, ssmc.runtime.binding\n"
            "import ssmc.runtime.native, ssmc.envs, ssmc.rollout, ssmc.numerics, ssmc.toolchain, ssmc.artifact\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    bad = [m for m in loaded if m.startswith((*STAGES, "torch", "tvm")) and m != "tvm_ffi"]
    assert not bad, f"importing ssmc.runtime loaded {bad}"
    assert "ssmc.runtime.verify" in loaded  # the import really happened


def test_a_missing_package_is_one_error_line_naming_the_install(tmp_path) -> None:
    """Without TVM (as after an install that lacks it), `ssmc compile` says what to install in one line."""
    code = ("import sys\n"
            "sys.modules['tvm'] = None  # `import tvm` now raises ModuleNotFoundError, as if it were not installed\n"
            "from ssmc.train.models import build_model, save_checkpoint\n"
            "extra = {'obs_mean': [0.0] * 3, 'obs_std': [1.0] * 3, 'rtg_scale': 1e-3, 'target_return': 1.0}\n"
            f"ck = save_checkpoint(build_model('dmm', 3, 1, K=4, hidden=16, n_layer=1, window=3, d_state=8), {str(tmp_path / 'ck')!r}, extra)\n"
            "from ssmc.cli import cli\n"
            f"cli(['compile', '--model', str(ck), '--target', 'host', '--out', {str(tmp_path / 'a.ssmc')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: ssmc compile needs the tvm package, part of ssmc's default install: pip install -e ."]
    assert "Traceback" not in proc.stderr

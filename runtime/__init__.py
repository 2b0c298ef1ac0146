"""ssmc.runtime: the C runtime (runtime/c/), its Python binding, verify and hardware-in-the-loop.

``Policy`` (ctypes over libssmc.so) is what ``ssmc run``, ``ssmc verify`` and ``ssmc hil`` drive;
``runtime_bundle`` builds the C library and the control-loop example for x86-64 or aarch64.
Importing this package never imports torch, TVM's Python package or the model code.
"""

from ssmc.runtime.binding import Policy, PolicyError
from ssmc.runtime.native import RuntimeBundle, runtime_bundle

__all__ = ["Policy", "PolicyError", "RuntimeBundle", "runtime_bundle"]

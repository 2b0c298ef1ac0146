"""ssmc.runtime: the C runtime, its Python binding, verify and hardware-in-the-loop (not yet built)."""

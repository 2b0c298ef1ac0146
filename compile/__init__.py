"""ssmc.compile: step export and lowering through TVM Relax (not yet built; see the compile issue)."""

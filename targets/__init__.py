"""ssmc.targets: target descriptors (not yet built; see the compile issue)."""

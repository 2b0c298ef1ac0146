"""ssmc: train, compile and verify Mamba-based offline-RL policies for embedded control loops."""

from ssmc.errors import SsmcError

__version__ = "0.1.0"
__all__ = ["SsmcError", "__version__"]

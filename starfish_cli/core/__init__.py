"""The core steps on a model in hand, shared by the command line's stages and the Python API."""

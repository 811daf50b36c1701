"""The functional core: pure array functions (fit engine, renderer, compiled kernels).

Nothing here imports from the layers above (models, the photutils-compatible shells,
pipeline, io, cli, viz).
"""

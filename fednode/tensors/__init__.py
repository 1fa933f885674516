"""Tensors: model file I/O, fixed-point grids, update encodings and the native merge kernel."""

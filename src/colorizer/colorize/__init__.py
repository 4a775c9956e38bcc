"""Colorizing archives at full resolution: inputs, the per-image worker, the local and Ray engines,
object storage, inference kernels, and the showcase."""

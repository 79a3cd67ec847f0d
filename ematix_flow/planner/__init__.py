"""Pure planning: DataFusion physical-plan bytes in, a stage graph and per-task plan slices out.

No network, no threads, no files: every function here is a transformation of bytes and values.
"""

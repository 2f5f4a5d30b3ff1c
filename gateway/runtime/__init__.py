"""Processes: the composition root, signals and the heap, the supervisor and its workers."""

"""The bottom layer: errors, ids, tasks, files, logs, TLS contexts and metrics.

Imports nothing of the gateway; everything else may import it."""

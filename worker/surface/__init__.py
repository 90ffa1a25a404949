"""The operator's surfaces: `python -m worker status`, the rotator's liveness marks and
how status judges them, the Prometheus metrics.

Imports the ground, worker.folder, worker.rasa and worker.remote; never
worker.programs.
"""

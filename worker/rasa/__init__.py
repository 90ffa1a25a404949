"""The Rasa side: the HTTP client, keeping each replica on the published model (canary,
rolling swaps, retries), the replicas' state in RUN_DIR, and the model server's rule
of how many replicas move at once.

Imports the ground and worker.folder; never worker.remote, worker.surface or
worker.programs.
"""

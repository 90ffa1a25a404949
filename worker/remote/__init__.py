"""Object storage (REMOTE_STORAGE): keeping the bucket on the published model, the S3
calls and what their errors mean, its state in RUN_DIR.

Imports the ground, worker.folder and worker.rasa (the client's secret scrubbing, the
state files' field readers); never worker.surface or worker.programs.
"""

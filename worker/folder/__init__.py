"""The folder's rules: which files are models, whole, loadable; when each arrived; which
one is latest; publishing it atomically; what may be deleted. Plain functions and
classes over a folder, no processes, no queues.

Imports only the ground (worker.settings, worker.logs, worker.text, worker.runfiles);
never worker.rasa, worker.remote, worker.surface or worker.programs.
"""

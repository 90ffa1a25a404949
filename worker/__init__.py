"""rasa-model-rotator: publish the newest whole Rasa model under a fixed name, prune the rest.

The ground, used by every wing: settings (read and checked in one place), logs, text,
runfiles. It imports no wing, with one named exception: settings checks
RASA_MIN_MODEL_VERSION with worker.folder.loadable's version parser.

The wings, bottom up (each imports only the ground and the wings before it): folder,
rasa, remote, surface, programs; __main__ starts the programs. No package imports
anything in its __init__.py: each program loads only the modules it uses.
"""

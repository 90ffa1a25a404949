"""Tests of worker.rasa: the sync against a stub Rasa on 127.0.0.1, the canary."""

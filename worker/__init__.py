"""rasa-model-rotator: publish the newest whole Rasa model under a fixed name, prune the rest."""

"""Tests of worker.programs: the channel, the debounce, the guard, the model server."""

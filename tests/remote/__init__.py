"""Tests of worker.remote: the bucket against moto in server mode, the manifest."""

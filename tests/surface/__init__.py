"""Tests of worker.surface: status, liveness and metrics of a running tool."""

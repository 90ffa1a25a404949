"""Tests of worker.folder: the folder's rules on real temporary folders."""

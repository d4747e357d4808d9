"""Externally trained checkpoints reported by signal files, and their evaluation."""

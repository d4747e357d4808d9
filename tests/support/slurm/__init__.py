"""Test-only code location and harness for the Slurm launcher's integration tests."""

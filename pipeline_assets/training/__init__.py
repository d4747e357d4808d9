"""Candidate training, evaluation and champion promotion."""

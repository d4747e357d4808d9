"""Streaming preprocessing engine and the resource-constraint sweep."""

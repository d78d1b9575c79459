"""Shared test helpers: real clusters, the nilearn seed reference, laziness checks."""

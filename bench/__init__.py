"""Benchmarks (`make bench`): results as JSON under bench/results/, summarised in README."""

"""Benchmarks: each prints a table and writes JSON; ratios are against a baseline run in the same process."""

"""Benchmark scripts of the lab (`make bench`): each prints tables and writes them under results/."""

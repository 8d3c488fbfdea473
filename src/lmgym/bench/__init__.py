"""Benchmarks: `lmgym bench speed` times the phases of one PPO iteration."""

"""Sampling from a policy and scoring what it wrote: the training rollout, held-out evaluation, logged data.
Every path runs through `lmgym.rollout.sampling` (tokenize, generate, decode, reward)."""

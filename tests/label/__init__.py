"""Tests of `lmgym label`: the labelling web app, its labels file, its sources and its statistics."""

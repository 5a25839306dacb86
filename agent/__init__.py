"""Proposers of train.py changes: the Claude agent and the offline mutator."""

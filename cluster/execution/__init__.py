"""Execution: the seam between the loop and the machines (executor.py: Ray or in-process), one experiment as a
one-GPU task (task.py, its spec.py) and each agent as an actor (agents.py). Runs happen in cluster/sandbox/."""

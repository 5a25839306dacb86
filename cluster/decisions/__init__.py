"""The decisions: what to run next and what reaches main. The policy interface (policy.py), the policies side by
side (policies/), the one read-only view they read (view.py) and the pure statistics (tournament.py)."""

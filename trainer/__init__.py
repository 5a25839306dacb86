"""What runs inside a sandbox: the trusted harness, the seed train.py, the runner.

Imports nothing from ``cluster`` or ``agent``: this package is shipped alone
into the trainer image.
"""

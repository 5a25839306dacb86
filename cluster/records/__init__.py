"""The records: the one writer (store.py) of the research repo (repo.py, git) and the ledger (ledger.py, Parquet),
and the state rebuilt from the ledger's events (state.py), live and after a crash by the same code."""

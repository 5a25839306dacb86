"""The loop: keeps every GPU busy (driver.py's Farm), asks the agents (pool.py) with what they are shown
(context.py), and stops a farm that cannot work (health.py, independence.py). It decides nothing itself."""

"""The farm itself: config, driver, sandboxes, research repo, ledger, CLI."""

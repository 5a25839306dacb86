"""The run browser (`farm ui`): a read-only web view of one run directory (ledger + research repo), live.

``cluster.ui.server.serve_ui`` runs it beside a farm; ``cluster.ui.cli`` is the command. Nothing is imported
here, so `farm` commands that do not browse never load the web stack.
"""

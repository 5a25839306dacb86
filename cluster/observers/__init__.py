"""The observers: what people watch, read from the farm's typed snapshot and the records, never written back.
The terminal's live view and status.json (live.py), Prometheus metrics (metrics.py), the end-of-run report
(report.py); the run browser is cluster/ui/."""

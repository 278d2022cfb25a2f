"""What a run leaves behind: run-dir files and W&B (tracking.py), the comparison report (report.py)."""

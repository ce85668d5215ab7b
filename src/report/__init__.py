"""Paper-style tables and plots from MLflow runs: `python -m src.report` (conf/report.yaml)."""

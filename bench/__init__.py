"""Throughput benchmark of token-service under gunicorn (see ``bench/run.py``)."""

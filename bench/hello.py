"""Baseline app for the benchmark: the cheapest Flask request, under the same gunicorn config.

Measuring it on the same machine, gunicorn settings and wrk parameters as the token endpoints turns
their requests/second into a ratio that says how much the token work costs, independent of how fast
the machine is.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify

app = Flask("bench_hello")


@app.get("/")
def hello() -> Response:
    """A small JSON answer, like the service's own responses but with no work behind it."""
    return jsonify(hello="world")

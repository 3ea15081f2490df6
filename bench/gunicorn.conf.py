"""gunicorn settings for the bench: the packaged ones (``token_service/gunicorn_conf.py``, as
``deploy/gunicorn.conf.py`` gives them), with the worker class from ``TOKEN_SERVICE_WORKER_CLASS``.

The packaged settings fix the worker class to gthread; the server-shape exploration (``bench/shapes.py``)
also measures sync workers, so this file lets the bench choose it. Everything else, workers, threads and
keep-alive included, comes from the packaged module and its ``TOKEN_SERVICE_*`` variables.
"""

import os as _os
import runpy as _runpy

# Run afresh (not a cached import), so the environment variables are read each time this file is.
_packaged = _runpy.run_module("token_service.gunicorn_conf")
globals().update({_name: _packaged[_name] for _name in _packaged["__all__"]})
worker_class = _os.environ.get("TOKEN_SERVICE_WORKER_CLASS", _packaged["worker_class"])

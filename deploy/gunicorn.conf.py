"""gunicorn settings for token-service: the packaged ones, ``token_service/gunicorn_conf.py``.

``token-service serve`` uses the packaged settings by itself; this file is for what names a file:
``gunicorn -c deploy/gunicorn.conf.py`` (bench/), and deployments that set
``TOKEN_SERVICE_GUNICORN_CONFIG`` to it. To change a setting, set its environment variable
(see the packaged module), or copy that module and point ``--gunicorn-config`` at the copy.
"""

import runpy as _runpy

# Run afresh (not a cached import), so the environment variables are read each time this file is.
_packaged = _runpy.run_module("token_service.gunicorn_conf")
globals().update({_name: _packaged[_name] for _name in _packaged["__all__"]})

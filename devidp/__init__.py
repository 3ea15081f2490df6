"""DEVELOPMENT/TEST ONLY OpenID Provider (``oidc-provider`` on Node) and its Python harness.

Never deploy this: it has no passwords, fixed cookie keys and in-memory state.
See :mod:`devidp.harness` for the API and ``python -m devidp --help`` for the CLI.
"""

"""Who is the caller: trusted issuers, their key caches, and bearer-token verification."""

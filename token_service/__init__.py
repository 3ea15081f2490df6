"""token-service: OIDC proof in, validated Conversations identity and role out, Twilio token minted."""

__version__ = "0.1.0"

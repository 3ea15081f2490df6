"""Tokens this service issues: the Twilio Access Token (``access``) and refresh tokens."""

"""Envelope encryption: the master key wraps tenant secrets; AES-256-GCM for data."""

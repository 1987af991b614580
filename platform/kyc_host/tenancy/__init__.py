"""Tenants: the schema of a tenant document, applying it, and the per-process registry."""

"""Retention, crypto-shredding erasure and the purge job (issue 5, design.md §6)."""

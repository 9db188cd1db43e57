"""Protocols, shared types, the registry and config helpers."""

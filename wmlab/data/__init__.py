"""Sequence replay and offline datasets."""

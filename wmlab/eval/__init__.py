"""Evaluation of agents and world models."""

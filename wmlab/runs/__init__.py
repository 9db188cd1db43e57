"""Run directories: what a run's config.json records and how a trained run is read back.

The low room that the trainers, agents, eval, data and studies share: reading a run never
imports the code that wrote it.
"""

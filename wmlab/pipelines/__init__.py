"""Multi-stage experiments: record data, train a world model, then a controller or a planner, then evaluate.

A pipeline composes agents, models, the trainers and the evaluators; nothing below it imports it.
"""

"""Planners that search action sequences against a rollout function."""

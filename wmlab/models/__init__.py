"""World model families, one file each (see wmlab.core.registry.MODELS)."""

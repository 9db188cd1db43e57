"""Environment adapters and built-in environments (see wmlab.envs.make)."""

"""Environment adapters and built-in environments.

`make_env(env_id, seed)` returns any built-in, registered or gymnasium environment with dict
observations (`image`, `vector`, `state`).
"""

from wmlab.envs.adapter import DictObservations, make_env

__all__ = ["DictObservations", "make_env"]

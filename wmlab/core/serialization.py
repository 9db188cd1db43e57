"""Safe, exact serialisation of nested state (agent weights, optimiser state, RNG states, counters).

Tensors and numpy arrays go to one safetensors file; the structure around them (dicts with any
key types, lists, tuples, numbers, strings) goes to JSON. Nothing is pickled, so loading a
checkpoint from someone else cannot run code.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from wmlab.core.errors import RunDirectoryError
from wmlab.core.files import sync, write_durably


def flatten_state(state: Any) -> tuple[dict[str, Any], Any]:
    """Split `state` into (tensors by path, JSON skeleton that refers to them)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def visit(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(np.array(value, copy=True, order="C"))  # keeps 0-d arrays 0-d
            return {"__ndarray__": path}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            items = [[encode_key(key), visit(item, f"{path}/{key}")] for key, item in value.items()]
            return {"__dict__": items}
        if isinstance(value, tuple):
            return {"__tuple__": [visit(item, f"{path}/{index}") for index, item in enumerate(value)]}
        if isinstance(value, list):
            return [visit(item, f"{path}/{index}") for index, item in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(
            f"cannot serialise {type(value).__name__} at {path or '/'}; use tensors, arrays, numbers, strings, lists or dicts"
        )

    return tensors, visit(state, "")


def encode_key(key: Any) -> Any:
    if isinstance(key, (bool, int, str)) or key is None:
        return key
    raise TypeError(f"dictionary keys must be str, int, bool or None, got {type(key).__name__}")


def unflatten_state(tensors: dict[str, Any], skeleton: Any) -> Any:
    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__ndarray__" in node:
                return tensors[node["__ndarray__"]].numpy()
            if "__tuple__" in node:
                return tuple(visit(item) for item in node["__tuple__"])
            if "__dict__" in node:
                return {key: visit(item) for key, item in node["__dict__"]}
            raise ValueError(f"malformed state skeleton node: {sorted(node)}")
        if isinstance(node, list):
            return [visit(item) for item in node]
        return node

    return visit(skeleton)


def save_state(state: Any, directory: Path, name: str) -> None:
    """Write `name.safetensors` and `name.json` under `directory`, both on disk (fsynced) when it returns."""

    directory.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = flatten_state(state)
    # safetensors refuses tensors that share memory; flatten_state already made them contiguous
    # copies per path, so clone only what still aliases.
    save_file({key: value.clone() for key, value in tensors.items()}, str(directory / f"{name}.safetensors"))
    sync(directory / f"{name}.safetensors")
    write_durably(directory / f"{name}.json", json.dumps(skeleton))


def load_state(directory: Path, name: str) -> Any:
    """Inverse of save_state; a missing or corrupt file raises RunDirectoryError naming it."""

    tensor_path, skeleton_path = directory / f"{name}.safetensors", directory / f"{name}.json"
    for path in (tensor_path, skeleton_path):
        if not path.is_file():
            raise RunDirectoryError(f"checkpoint file {path} is missing")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as error:  # safetensors raises its own SafetensorError on truncated files
        raise RunDirectoryError(f"checkpoint file {tensor_path} is corrupt ({error})") from None
    try:
        skeleton = json.loads(skeleton_path.read_text())
        return unflatten_state(tensors, skeleton)
    except (ValueError, KeyError) as error:
        raise RunDirectoryError(f"checkpoint file {skeleton_path} is corrupt ({error})") from None


def global_random_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global random states, in a form `save_state` writes exactly."""
    import torch

    return {
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps(np.random.get_state()[1].tolist()),
        "numpy_position": np.random.get_state()[2],
        "torch": torch.get_rng_state(),
    }


def restore_global_random_state(state: dict[str, Any]) -> None:
    """Inverse of `global_random_state`."""
    import torch

    python_state = json.loads(state["python"])
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    np.random.set_state(("MT19937", np.array(json.loads(state["numpy"]), dtype=np.uint32), state["numpy_position"]))
    torch.set_rng_state(state["torch"])


def save_checkpoint_directory(target: Path, states: dict[str, Any]) -> None:
    """Write each `name: state` of `states` with `save_state` into a fresh directory that replaces
    `target` only once complete, so that an interruption leaves the previous checkpoint whole."""
    staging = target.with_name(target.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    for name, state in states.items():
        save_state(state, staging, name)
    previous = target.with_name(target.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def module_states(modules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: the module's state dict} for an agent's `modules()`: the weights part of its
    `state_dict`, under the names the training loop broadcasts them by."""
    return {name: dict(module.state_dict()) for name, module in modules.items()}


def load_module_states(modules: dict[str, Any], state: dict[str, Any], aliases: dict[str, str] | None = None) -> None:
    """Inverse of `module_states`: load each module from `state[name]`, or from
    `state[aliases[name]]` where an older checkpoint named it so."""
    aliases = aliases or {}
    for name, module in modules.items():
        key = aliases[name] if name not in state and name in aliases else name
        if key not in state:
            raise RunDirectoryError(
                f"the checkpoint holds no weights for {name!r}; it has {', '.join(sorted(map(str, state)))}"
            )
        module.load_state_dict(state[key])

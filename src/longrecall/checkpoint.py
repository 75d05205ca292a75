"""Atomic checkpoints: safetensors weights + JSON config/trainer state, never half-written.

Every file is written to a temporary name in the same directory, fsynced and renamed into place
(``os.replace`` is atomic on POSIX).  Weight and optimizer files carry their step in the name and
the JSON manifest, written last, names the set that belongs together: a crash at any moment leaves
either the previous checkpoint or the new one, never a mixture.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _file_mode(path: Path) -> int:
    """Keep an existing file's permissions; new files get 0o644 (mkstemp's 0o600 would hide a
    report or a checkpoint from everyone else)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def save_checkpoint(directory: str | Path, model, optimizer, scheduler, step: int, config: dict,
                    extra: dict | None = None) -> None:
    """Write ``model-STEP.safetensors`` and ``optimizer-STEP.pt``, then ``checkpoint.json`` naming them.

    The manifest is replaced last and atomically, so it always names a complete set of files; the
    previous step's files are deleted only after that.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage (tied embeddings): store each tensor once, contiguous
    seen, weights = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        weights[name] = tensor.detach().contiguous().cpu()
    weights_name, optimizer_name = f"model-{step}.safetensors", f"optimizer-{step}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(weights, tmp, metadata={"step": str(step)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, directory / weights_name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    atomic_write_bytes(directory / optimizer_name, buffer.getvalue())
    manifest = {"step": step, "weights": weights_name, "optimizer": optimizer_name, "config": config, **(extra or {})}
    atomic_write_json(directory / "checkpoint.json", manifest)
    for old in list(directory.glob("model-*.safetensors")) + list(directory.glob("optimizer-*.pt")):
        if old.name not in (weights_name, optimizer_name):
            old.unlink(missing_ok=True)


def read_manifest(directory: str | Path) -> dict | None:
    path = Path(directory) / "checkpoint.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_weights(directory: str | Path, model) -> dict:
    """Load ``model.safetensors`` into ``model`` (tied weights restored); returns the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"no checkpoint in {str(directory)!r} (checkpoint.json missing)")
    weights = load_file(directory / manifest["weights"])
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied parameters are stored once; anything else missing is an error
    tied = {name for name in missing if name == "head.weight" and model.head.weight is model.embedding.weight}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {unexpected}")
    return manifest


class UnsafeCheckpointError(ValueError):
    """A checkpoint's optimizer file holds something other than tensors and plain data."""


def load_checkpoint(directory: str | Path, model, optimizer=None, scheduler=None) -> dict:
    """Load weights, and optimizer and scheduler state, from a checkpoint written by ``save_checkpoint``.

    The optimizer file is read with ``torch.load(weights_only=True)``: tensors and plain containers
    only, so a checkpoint someone hands you cannot run code when it is resumed (a pickled object is
    refused with ``UnsafeCheckpointError`` naming the file).
    """
    manifest = load_weights(directory, model)
    if optimizer is not None:
        path = Path(directory) / manifest["optimizer"]
        try:
            state = torch.load(path, weights_only=True)
        except Exception as error:  # torch raises UnpicklingError (or RuntimeError) for non-plain content
            raise UnsafeCheckpointError(
                f"{path} holds more than tensors and plain data (torch.load refused it with weights_only=True: "
                f"{str(error).splitlines()[0]}); longrecall does not load it, since unpickling it could run code"
            ) from None
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    return manifest

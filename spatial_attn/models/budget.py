"""What a model folder would cost, read from its configs and its safetensors headers before anything
is built, and the folder refused (with the estimate) when it could not be served.

A library builds a model from its config first and loads the weights after: a config that says
``num_hidden_layers: 1000000`` or ``hidden_size: 10**9`` allocates until the machine gives out, long
before a weight is read. A safetensors header is JSON that declares every tensor's shape: one that
declares terabytes, or offsets past the file's end, is refused from its first bytes. A config naming
remote code (``auto_map``) is refused here, before transformers would ask ``[y/N]`` on the server's
terminal. No function here imports torch or a model library.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Bytes per element of each safetensors dtype.
DTYPES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
MAX_HEADER = 100 * 2**20  #: a safetensors header larger than this is not one
MAX_SIDE = 4096  #: the largest model input side served (the app works on images of at most 2048)
SHARE = 0.75  #: of the memory available now, what one model may take
_WIDTHS = ("hidden_size", "d_model", "embed_dim", "n_embd", "dim")
_DEPTHS = ("num_hidden_layers", "num_layers", "n_layer", "depth", "encoder_layers")


def safetensors_bytes(file: Path) -> int:
    """The bytes of the tensors ``file``'s header declares, checked against the file itself."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(MAX_HEADER, size - 8):
            raise ValueError(f"{file} is not a safetensors file (its header length is {length})")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise ValueError(f"{file}: its safetensors header is not JSON") from None
    total, end = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{file}: tensor {name!r} has no entry in the header")
        shape, dtype = entry.get("shape"), entry.get("dtype")
        offsets = entry.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"{file}: tensor {name!r} has the shape {shape!r}")
        if dtype not in DTYPES and dtype not in ("BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2"):
            raise ValueError(f"{file}: tensor {name!r} has the dtype {dtype!r}")
        nbytes = math.prod(shape) * DTYPES.get(dtype, 1)
        if not (isinstance(offsets, list) and len(offsets) == 2 and offsets[1] - offsets[0] == nbytes):
            raise ValueError(
                f"{file}: tensor {name!r} declares {_gb(nbytes)} ({shape}, {dtype}) but its offsets are "
                f"{offsets!r}: the header is corrupt"
            )
        total += nbytes
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise ValueError(
            f"{file}: the header declares {_gb(end)} of tensors but the file holds {_gb(size)}: "
            "it is truncated or corrupt"
        )
    return total


def config_bytes(config: dict) -> int:
    """A rough float32 size of the model ``config`` describes (a transformer's layers, a UNet's
    blocks), enough to tell a 100 MB model from a 50 GB one; 0 when it says too little."""
    width = _first(config, _WIDTHS)
    depth = _first(config, _DEPTHS)
    params = 0
    if width and depth:
        inner = _first(config, ("intermediate_size", "ffn_dim", "mlp_dim")) or 4 * width
        params = depth * (4 * width * width + 2 * width * inner)
    heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
    if depth and _positive(heads) and _positive(head_dim):  # diffusers transformers (DiT, PixArt, SD3)
        params = max(params, depth * 12 * (heads * head_dim) ** 2)
    channels = config.get("block_out_channels")
    if isinstance(channels, list) and all(_positive(c) for c in channels):  # a UNet or a VAE
        per_block = config.get("layers_per_block", 2)
        per_block = per_block if _positive(per_block) else 2
        params = max(params, sum(2 * (2 * per_block + 1) * 9 * c * c for c in channels))
    return 4 * params


def check(folders: Iterable[Path], configs: Iterable[dict], name: str) -> None:
    """Refuse ``name`` when its weights (headers) or its configs say it would not fit in memory."""
    weights = sum(safetensors_bytes(f) for folder in folders for f in sorted(folder.glob("*.safetensors")))
    built = sum(config_bytes(c) for c in configs)
    estimate = max(weights, built)
    room = available_bytes()
    if estimate > SHARE * room:
        raise ValueError(
            f"{name} would take about {_gb(estimate)} (weights {_gb(weights)}, built from its config "
            f"{_gb(built)}); {_gb(room)} of memory is available and one model may take "
            f"{SHARE:.0%} of it: check the config's sizes"
        )


def check_side(side: Any, where: str) -> int:
    """A model input side read from a config: a whole number from 1 to :data:`MAX_SIDE`."""
    if not _positive(side) or side > MAX_SIDE:
        raise ValueError(f"{where}: an input side of {side!r} pixels; this app serves 1 to {MAX_SIDE}")
    return side


def refuse_remote_code(config: dict, where: Path) -> None:
    """A config that names code of its own (transformers' ``auto_map``, a custom pipeline)."""
    for key in ("auto_map", "custom_pipeline"):
        if config.get(key):
            raise ValueError(
                f"{where} names code of its own ({key}: {json.dumps(config[key])[:80]}); "
                "spatial-attn never runs code that comes with a model"
            )


def available_bytes() -> int:
    """Memory available now (``MemAvailable``), or the machine's total where that cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _first(config: dict, keys: tuple[str, ...]) -> int:
    for key in keys:
        if _positive(config.get(key)):
            return config[key]
    return 0


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _gb(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GB" if nbytes >= 2**28 else f"{nbytes / 2**20:.0f} MB"

"""Moving cached keys to another position: what lets one chunk's KV serve at any offset.

Rotary embeddings rotate each pair of a key's dimensions by the angle p * f_i, so rotations
compose, R(p + o) = R(o) R(p): a key cached at position p (rotated by R(p)) moves to p + o by
R(o) alone, and values do not move at all. Attention over keys moved so is exactly the joined
stream's attention under a block mask in which each chunk sees only itself (rotary attention
depends only on relative positions; tests/engine/test_per_example_kv.py holds the engine to it).

That needs frequencies that do not depend on the positions seen: the "default", "linear",
"llama3" and "yarn" rope types (yarn's attention factor, which scales cos and sin, is divided out
here: the cached key got it once already). "dynamic" and "longrope" change their frequencies with
the sequence length and are refused, as are learned absolute positions (GPT-2).

A model's layers are described by one entry each: the rotary module and its layer type (Gemma 3's
local and global layers rotate differently), or None for a layer without rotary positions
(SmolLM3's NoPE layers), whose keys are copied as they are.
"""

from __future__ import annotations

import torch

FIXED_FREQUENCY_ROPE = ("default", "linear", "llama3", "yarn")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def unsupported_reason(rotary_emb) -> str | None:
    """Why keys rotated by this module cannot be moved, or None when they can."""
    rope_type = getattr(rotary_emb, "rope_type", None)
    kinds = rope_type.values() if isinstance(rope_type, dict) else [rope_type]
    bad = sorted({str(kind) for kind in kinds if kind not in FIXED_FREQUENCY_ROPE})
    if bad:
        return f"rope type {', '.join(bad)} changes its frequencies with the sequence length, so cached keys cannot be re-rotated"
    return None


def rotation_by(offsets: torch.Tensor, rotary_emb, layer_type: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [T, 1, d] of R(offsets[t]) in float32, without the module's attention factor."""
    like = torch.empty(0, device=offsets.device)
    args = (like, offsets.long().unsqueeze(0)) + ((layer_type,) if layer_type is not None else ())
    cos, sin = rotary_emb(*args)
    name = f"{layer_type}_attention_scaling" if layer_type is not None else "attention_scaling"
    scale = float(getattr(rotary_emb, name, 1.0) or 1.0)
    return (cos[0].float() / scale).unsqueeze(1), (sin[0].float() / scale).unsqueeze(1)


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """keys [T, H, D] rotated by (cos, sin) of ``rotation_by``, in keys' dtype. A partial rotary
    (Phi-3) rotates only the leading dimensions its cos and sin cover."""
    work, width = keys.float(), cos.shape[-1]
    turned = work[..., :width] * cos + rotate_half(work[..., :width]) * sin
    if width < work.shape[-1]:
        turned = torch.cat((turned, work[..., width:]), dim=-1)
    return turned.to(keys.dtype)


def rerotate(keys: torch.Tensor, offsets: torch.Tensor, rotary_emb, layer_type: str | None = None) -> torch.Tensor:
    """keys [T, H, D] (each rotated at some position p) -> rotated at p + offsets[t]."""
    return rotate(keys, *rotation_by(offsets, rotary_emb, layer_type))


class KeyRotation:
    """The per-layer re-rotation of one model: ``layers[i]`` is (rotary module, layer type) or
    None (no rotary positions in layer i)."""

    def __init__(self, layers: list[tuple | None]) -> None:
        self.layers = layers

    def by(self, offsets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, the (cos, sin) that move keys by ``offsets`` (None: not moved), each distinct
        rotation computed once (every layer of most models shares one)."""
        tables: dict = {}
        rotations = []
        for entry in self.layers:
            if entry is None:
                rotations.append(None)
                continue
            rotary_emb, layer_type = entry
            key = (id(rotary_emb), layer_type)
            if key not in tables:
                tables[key] = rotation_by(offsets, rotary_emb, layer_type)
            rotations.append(tables[key])
        return rotations


def key_rotation(rotary_emb, num_layers: int, layer_types=None, no_rope_layers=None) -> KeyRotation | None:
    """The model's KeyRotation, or None when its keys cannot be moved (``unsupported_reason``
    says why). ``layer_types``: each layer's rotary layer type where the module keeps one
    rotation per type (Gemma 3); ``no_rope_layers``: SmolLM3's list, 1 where a layer uses rotary
    positions and 0 where it has none."""
    if rotary_emb is None or unsupported_reason(rotary_emb) is not None:
        return None
    layers = []
    for index in range(num_layers):
        if no_rope_layers is not None and not no_rope_layers[index]:
            layers.append(None)
        else:
            layers.append((rotary_emb, None if layer_types is None else layer_types[index]))
    return KeyRotation(layers)

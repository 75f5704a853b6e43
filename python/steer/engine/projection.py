"""The linear layers of a decode step, with a LoRA adapter applied to some rows only.

The runner does not call a Hugging Face or PEFT linear module: it reads the module's weights once,
at start-up, into a ``Projection``, so that

  * every projection goes through ``decode_linear``, which on the CPU streams each weight once for
    all of a step's rows (torch's GEMM reads it once per row for 2-3 rows);
  * expert = base + LoRA runs as one forward: the base weight serves every row, and the low-rank
    delta ``B (A x) * scaling`` of PEFT's ``lora.Linear`` is added to the first ``adapter_tokens``
    rows only (the engine puts the expert's rows first, the base stream's rows after them).

Merged adapters (``merge_adapters``, the engine's choice on the CPU for small float32 models):
the Projection also keeps ``W + sum_i s_i B_i A_i`` (and the bias with the adapters' bias), and a
call whose rows all take the adapters (plain sampling from a LoRA expert, an expert run with its
own base model) is one matmul on that copy instead of one plus two per adapter. Where a model's
weights stay in the CPU's caches a step is bound by its number of calls (on the demo model the
deltas took a quarter of a plain sampling step). A call with both kinds of rows keeps the delta:
one matmul over all rows plus the low-rank product is cheaper than two matmuls over their parts
(measured on the demo's STEER steps), so no call reads more weights than without the copy: its
cost is memory, and the engine makes it for small models only.

Supported: ``torch.nn.Linear``, GPT-2's ``Conv1D`` (weight stored [in, out]) and PEFT LoRA layers
over either (several active adapters are summed, as PEFT does). Anything PEFT can do that this
cannot reproduce exactly (DoRA and other LoRA variants, adapters PEFT merged into W, LoRA on embeddings,
modules_to_save copies) is refused with an error naming the module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from steer.ops.decode_linear import decode_linear


@dataclass(frozen=True)
class LoraDelta:
    """One adapter of one layer: y += lora_B(lora_A(x)) * scaling."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    b_bias: torch.Tensor | None  # PEFT's lora_bias=True
    scaling: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Through decode_linear like the base weights: torch's GEMM reads B [out, r] once per row
        # for a few rows, which made a LoRA expert's 2-3 rows of a STEER step cost 2-3 of its 1.
        low_rank = decode_linear(x.to(self.a.dtype), self.a)
        if self.b_bias is not None:  # (B A x + b) * s: the bias is scaled too
            return (decode_linear(low_rank, self.b, self.b_bias) * self.scaling).to(x.dtype)
        # B (A x) * s as B ((A x) * s): the scale on the [rows, r] intermediate, not on the
        # [rows, out] product (one pass over r values per row instead of out), and none at all
        # for the common alpha = r.
        if self.scaling != 1.0:
            low_rank.mul_(self.scaling)
        return decode_linear(low_rank, self.b).to(x.dtype)

    def dense(self, layout: str) -> torch.Tensor:
        """s B A in the base weight's layout ([out, in] for "out_in", [in, out] for "in_out")."""
        product = (self.b.to(torch.float64) @ self.a.to(torch.float64)) * self.scaling
        return product if layout == "out_in" else product.t()


@dataclass(frozen=True)
class Projection:
    weight: torch.Tensor
    bias: torch.Tensor | None
    layout: str  # "out_in" (nn.Linear) or "in_out" (GPT-2 Conv1D)
    deltas: tuple[LoraDelta, ...] = ()
    # The weight and bias with every delta added (merge_adapters), or None: the deltas run apart.
    merged_weight: torch.Tensor | None = None
    merged_bias: torch.Tensor | None = None

    def with_merged_adapters(self) -> Projection:
        """This projection with ``merged_weight`` / ``merged_bias`` computed (in float64, then
        rounded once to the weight's dtype); itself when it has no adapters."""
        if not self.deltas:
            return self
        weight = self.weight.to(torch.float64)
        bias = None if self.bias is None else self.bias.to(torch.float64)
        for delta in self.deltas:
            weight = weight + delta.dense(self.layout)
            if delta.b_bias is not None:
                scaled = delta.b_bias.to(torch.float64) * delta.scaling
                bias = scaled if bias is None else bias + scaled
        merged_bias = None if bias is None else bias.to(self.weight.dtype)
        return replace(self, merged_weight=weight.to(self.weight.dtype).contiguous(), merged_bias=merged_bias)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0 if self.layout == "out_in" else 1]

    def __call__(self, x: torch.Tensor, adapter_tokens=0, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, in] -> [T, out]; the adapters apply to x[:adapter_tokens], or, when
        ``adapter_tokens`` is a [T, 1] tensor of 0s and 1s (a CUDA graph's static batch, whose
        split cannot change between replays), to the rows where it is 1. ``out``: where to write
        it (see decode_linear)."""
        if self.merged_weight is not None and not isinstance(adapter_tokens, torch.Tensor) and adapter_tokens >= x.shape[0]:
            # Every row the expert's (plain sampling, an expert with its own base): one matmul.
            # Mixed rows keep the delta below: one matmul over all of them plus the low-rank
            # product costs less than two matmuls over their parts.
            return decode_linear(x, self.merged_weight, self.merged_bias, layout=self.layout, out=out)
        y = decode_linear(x, self.weight, self.bias, layout=self.layout, out=out)
        if not self.deltas:
            return y
        if isinstance(adapter_tokens, torch.Tensor):
            for delta in self.deltas:
                y += delta(x) * adapter_tokens.to(y.dtype)
        elif adapter_tokens:
            head = x[:adapter_tokens]
            for delta in self.deltas:
                y[:adapter_tokens] += delta(head)
        return y


def is_lora_layer(module) -> bool:
    return all(hasattr(module, name) for name in ("base_layer", "lora_A", "lora_B", "scaling"))


def _active_adapters(module) -> list[str]:
    """The adapters a PEFT layer applies now (linear ones in lora_A, embedding ones elsewhere)."""
    if getattr(module, "disable_adapters", False):
        return []
    held = set(module.lora_A) | set(getattr(module, "lora_embedding_A", {}))
    return [adapter for adapter in module.active_adapters if adapter in held]


def _plain_projection(module, name: str) -> Projection:
    if isinstance(module, torch.nn.Linear):
        return Projection(module.weight, module.bias, "out_in")
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        return Projection(module.weight, module.bias, "in_out")
    raise ValueError(f"{name}: the steer engine runs nn.Linear and GPT-2 Conv1D projections, got {type(module).__name__}")


def _lora_deltas(module, name: str) -> tuple[LoraDelta, ...]:
    if getattr(module, "merged", False):
        raise ValueError(
            f"{name}: the LoRA adapter is merged into the weights, so the base model cannot be recovered; "
            "call unmerge_adapter() first, or pass the base model separately"
        )
    deltas = []
    for adapter in _active_adapters(module):
        if getattr(module, "use_dora", {}).get(adapter, False) or getattr(module, "lora_variant", {}).get(adapter):
            raise ValueError(f"{name}: adapter {adapter!r} is a LoRA variant (DoRA, ...), which the steer engine does not run")
        lora_a = module.lora_A[adapter] if adapter in module.lora_A else None
        lora_b = module.lora_B[adapter] if adapter in module.lora_B else None
        if not isinstance(lora_a, torch.nn.Linear) or not isinstance(lora_b, torch.nn.Linear):
            raise ValueError(f"{name}: adapter {adapter!r} is not a linear LoRA ({type(module).__name__})")
        deltas.append(LoraDelta(lora_a.weight, lora_b.weight, lora_b.bias, float(module.scaling[adapter])))
    return tuple(deltas)


PEFT_COPIES = ("ModulesToSaveWrapper", "TrainableTokensWrapper")


def _refuse_peft_copies(module, name: str) -> None:
    if type(module).__name__ in PEFT_COPIES:
        raise ValueError(f"{name}: PEFT modules_to_save / trainable tokens are not supported by the steer engine")


def projection_of(module, name: str, *, merge_adapters: bool = False) -> Projection:
    """The weights of a linear module (plain, Conv1D or PEFT LoRA over either) as a Projection;
    ``merge_adapters``: with the merged copy of an adapted weight (see the module's docstring)."""
    _refuse_peft_copies(module, name)
    if is_lora_layer(module):
        base = _plain_projection(module.base_layer, name)
        projection = Projection(base.weight, base.bias, base.layout, _lora_deltas(module, name))
        return projection.with_merged_adapters() if merge_adapters else projection
    return _plain_projection(module, name)


def adapted_weight_bytes(model) -> int:
    """The bytes of the base weights that carry an active LoRA adapter: what merging would copy."""
    total = 0
    for module in model.modules():
        if is_lora_layer(module) and _active_adapters(module):
            weight = getattr(module.base_layer, "weight", None)
            if weight is not None:
                total += weight.numel() * weight.element_size()
    return total


def check_adapters_covered(model, covered: set[int]) -> None:
    """Refuse a model with adapter modules the runner would silently skip or apply to every row:
    LoRA on an embedding or any layer not read through ``projection_of``, and modules_to_save."""
    for name, module in model.named_modules():
        _refuse_peft_copies(module, name)
        if is_lora_layer(module) and id(module) not in covered and _active_adapters(module):
            raise ValueError(
                f"{name}: a LoRA adapter on a {type(module.base_layer).__name__} the steer engine does not run through "
                "its projections (only attention, MLP and LM-head linears are supported)"
            )


class ProjectionReader:
    """Reads a model's linear modules into Projections, remembering which ones it read so that an
    adapter anywhere else is refused rather than silently ignored."""

    def __init__(self, model, *, merge_adapters: bool = False) -> None:
        self.model, self.covered, self.has_adapters = model, set(), False
        self.merge_adapters = merge_adapters

    def __call__(self, module, name: str) -> Projection:
        self.covered.add(id(module))
        projection = projection_of(module, name, merge_adapters=self.merge_adapters)
        self.has_adapters |= bool(projection.deltas)
        return projection

    def check_all_adapters_covered(self) -> None:
        check_adapters_covered(self.model, self.covered)

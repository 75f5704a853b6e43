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

Fused projections (``fuse_projections``, the engine's choice on the CPU for small models): the
projections that read one input (q, k and v; gate and up) as one Projection whose weight is
theirs concatenated, and whose adapters are one delta: A stacked, B block-diagonal, one scale per
rank column (so the scales still go on the low-rank intermediate, as PEFT's do). One call in
place of three or two, for the same reason; the delta's B product and its sum into the output
are one ``addmm``.

Supported: ``torch.nn.Linear``, GPT-2's ``Conv1D`` (weight stored [in, out]) and PEFT LoRA layers
over either (several active adapters are summed, as PEFT does). Anything PEFT can do that this
cannot reproduce exactly (DoRA and other LoRA variants, adapters PEFT merged into W, LoRA on embeddings,
modules_to_save copies) is refused with an error naming the module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from steer.ops.decode_linear import decode_linear, uses_kernel


@dataclass(frozen=True)
class LoraDelta:
    """One adapter of one layer, y += (B (A x) + b) * scaling; or several adapters (of one layer,
    or of projections fused into one: ``fuse_projections``) as one: A stacked [sum r, in], B
    block-diagonal [out, sum r] and ``scaling`` a [sum r] tensor, one scale per rank column."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    b_bias: torch.Tensor | None  # PEFT's lora_bias=True
    scaling: float | torch.Tensor

    @property
    def bias_is_scaled(self) -> bool:
        """A fused delta (a scale per column) stores its bias already scaled (fuse_projections)."""
        return isinstance(self.scaling, torch.Tensor)

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        # Through decode_linear like the base weights (the C++ kernel where A is large enough to
        # be streamed from memory). The scale goes on the [rows, r] intermediate, not on the
        # [rows, out] product: one pass over r values per row instead of out, and none at all for
        # the common alpha = r. A bias, scaled too, is stored pre-scaled (fuse_projections).
        low_rank = decode_linear(x.to(self.a.dtype), self.a)
        if isinstance(self.scaling, torch.Tensor) or self.scaling != 1.0:
            low_rank.mul_(self.scaling)
        return low_rank

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.b_bias is not None and not self.bias_is_scaled:
            low_rank = decode_linear(x.to(self.a.dtype), self.a)  # (B A x + b) * s: as PEFT rounds it
            return (decode_linear(low_rank, self.b, self.b_bias) * self.scaling).to(x.dtype)
        return decode_linear(self._low_rank(x), self.b, self.b_bias).to(x.dtype)

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> None:
        """y += this delta of x, for y [rows, out] and x [rows, in]: the B product and the sum in
        one addmm where they share a dtype (a call of its own is a fixed ~10 us on the CPU, and a
        LoRA expert's STEER step has two or three of them per projection)."""
        low_rank = self._low_rank(x) if self.b_bias is None else None
        if low_rank is not None and low_rank.dtype == y.dtype == self.b.dtype and not uses_kernel(low_rank, self.b):
            y.addmm_(low_rank, self.b.t())
        else:
            y += self(x)

    def dense(self, layout: str) -> torch.Tensor:
        """s B A in the base weight's layout ([out, in] for "out_in", [in, out] for "in_out")."""
        scaling = self.scaling.to(torch.float64) if self.bias_is_scaled else self.scaling
        product = (self.b.to(torch.float64) * scaling) @ self.a.to(torch.float64)
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
                scaled = delta.b_bias.to(torch.float64) * (1.0 if delta.bias_is_scaled else delta.scaling)
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
            head, y_head = x[:adapter_tokens], y[:adapter_tokens]
            for delta in self.deltas:
                delta.add_to(y_head, head)
        return y


def fuse_projections(parts: list[Projection]) -> Projection:
    """One Projection computing ``parts`` side by side (its output is their outputs concatenated):
    q, k and v, or gate and up, which read the same input. One matmul instead of one per part,
    and their adapters as one delta (A stacked, B block-diagonal, a scale per rank column): on the
    CPU a decode step's calls, not its FLOPs, are what a small model's step costs. The weights are
    copied (the engine fuses small models only)."""
    first = parts[0]
    if any(p.merged_weight is not None for p in parts):
        raise ValueError("fuse_projections: fuse the parts first, then merge their adapters")
    axis = 0 if first.layout == "out_in" else 1
    for part in parts[1:]:
        if part.layout != first.layout or part.weight.dtype != first.weight.dtype or part.weight.device != first.weight.device:
            raise ValueError("fuse_projections: the parts differ in layout, dtype or device")
        if part.weight.shape[1 - axis] != first.weight.shape[1 - axis]:
            raise ValueError("fuse_projections: the parts read inputs of different sizes")
    weight = torch.cat([p.weight.detach() for p in parts], dim=axis)
    bias = None
    if any(p.bias is not None for p in parts):
        bias = torch.cat([p.bias.detach() if p.bias is not None else first.weight.new_zeros(p.out_features) for p in parts])
    delta = _fused_delta(parts)
    return Projection(weight, bias, first.layout, (delta,) if delta is not None else ())


def _fused_delta(parts: list[Projection]) -> LoraDelta | None:
    """Every part's adapters as one LoraDelta over the fused output (see fuse_projections)."""
    deltas = [(index, d) for index, p in enumerate(parts) for d in p.deltas]
    if not deltas:
        return None
    sample = deltas[0][1].a
    ranks = [d.a.shape[0] for _, d in deltas]
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + part.out_features)
    b = sample.new_zeros(offsets[-1], sum(ranks))
    b_bias = sample.new_zeros(offsets[-1]) if any(d.b_bias is not None for _, d in deltas) else None
    column = 0
    for (index, delta), rank in zip(deltas, ranks):
        rows = slice(offsets[index], offsets[index + 1])
        b[rows, column:column + rank] = delta.b.detach()
        if delta.b_bias is not None:  # (B A x + b) * s = B (s A x) + s b: stored scaled
            b_bias[rows] += delta.b_bias.detach() * delta.scaling
        column += rank
    scale_dtype = torch.promote_types(sample.dtype, torch.float32)  # the scales are not rounded to half precision
    scaling = torch.cat([torch.full((rank,), float(d.scaling), dtype=scale_dtype, device=sample.device) for (_, d), rank in zip(deltas, ranks)])
    a = torch.cat([d.a.detach().to(sample.dtype) for _, d in deltas])
    return LoraDelta(a, b.to(deltas[0][1].b.dtype), b_bias, scaling)


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
        return self._kept([module], projection_of(module, name))

    def fused(self, modules: list, names: list[str]) -> Projection:
        """The modules (reading one input) as one fused Projection (fuse_projections)."""
        return self._kept(modules, fuse_projections([projection_of(m, n) for m, n in zip(modules, names)]))

    def _kept(self, modules: list, projection: Projection) -> Projection:
        """``projection`` of ``modules``, remembered as read, with its merged copy if asked for."""
        self.covered.update(id(module) for module in modules)
        self.has_adapters |= bool(projection.deltas)
        return projection.with_merged_adapters() if self.merge_adapters else projection

    def check_all_adapters_covered(self) -> None:
        check_adapters_covered(self.model, self.covered)

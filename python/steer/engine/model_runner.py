"""Runs a step plan through the model(s): one batched forward per model over every stream of the
plan's groups (one forward in all when the base is the expert with its LoRA adapters off), and
the LM heads written straight into the sampler's [G, K, V] logits.

The logits buffer (docs/design.md, "the logits buffer"). It is allocated stream-major, [K, G, V]
contiguous, and handed to the sampler as the [G, K, V] view of it (strides V, G*V, 1; the
sampler takes any strides). Stream slot k of every group is then one contiguous [G, V] block:
slots 0..K_e-1 are the expert's (prompt, then negatives), slot K_e the base's, so each model's
LM head writes its slots with one matmul, and nothing is zero-filled or scattered. A group with
fewer streams than a slot count fills its missing slots with a copy of one of its rows (finite
logits under weight 0), picked by the gather that builds the LM head's input rows.
"""

from __future__ import annotations

import dataclasses

import torch

from steer.engine.attention import PagedAttention
from steer.engine.chunks import chunk_copies, chunks_to_compute, joined_streams
from steer.engine.scheduler import StepPlan
from steer.engine.step_batch import StepBatch

SAMPLER_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ModelRunner:
    """passes: (runner, namespaces) per forward of a step; a runner's adapters apply to the rows
    of its first namespace (the expert's, with a LoRA expert whose base is itself)."""

    def __init__(self, passes: list[tuple], attention: PagedAttention, device, decode_graphs=None) -> None:
        self.passes, self.attention, self.device = passes, attention, device
        self.decode_graphs = decode_graphs  # a DecodeGraphs, or None: every step eager
        self.block_size = attention.cache.block_size
        self.lm_head_rows = [runner.lm_head.out_features for runner, _ in passes]
        self.graph_forwards = 0  # forwards replayed from CUDA graphs, since the runner was made

    @torch.no_grad()  # model parameters may require grad; the decode matmul only runs without autograd
    def run(self, plan: StepPlan) -> torch.Tensor:
        """The [G, K, V] logits of the plan's groups (a view of a stream-major buffer)."""
        groups = plan.groups
        k_expert, k_base = expert_slots(groups), int(any(g.has_base for g in groups))
        vocab = min(self.lm_head_rows)
        hidden_of, dtype = self._forward_all(groups)
        dtype = dtype if dtype in SAMPLER_DTYPES else torch.float32  # float64 models (tests) sample in float32
        buffer = torch.empty((k_expert + k_base, len(groups), vocab), dtype=dtype, device=self.device)
        for (runner, namespaces), head_rows, (hidden, rows_of) in zip(self.passes, self.lm_head_rows, hidden_of):
            slots = [("expert", k) for k in range(k_expert)] if "expert" in namespaces else []
            if "base" in namespaces and k_base:
                slots.append(("base", 0))
            if not slots:
                continue
            first = 0 if slots[0][0] == "expert" else k_expert
            index = self._head_rows(groups, slots, rows_of)
            head_input = hidden[torch.tensor(index, device=self.device)]
            adapter_rows = k_expert * len(groups) if slots[0][0] == "expert" else 0
            out = buffer[first : first + len(slots)].view(len(slots) * len(groups), vocab)
            if head_rows == vocab and head_input.dtype == dtype:
                runner.lm_head(head_input, adapter_rows, out=out)
            else:  # a head padded past the other model's (its extra columns are never sampled), or another dtype
                out.copy_(runner.lm_head(head_input, adapter_rows)[:, :vocab])
            cap = runner.logit_soft_cap
            if cap:  # Gemma's final soft cap, which its LM head forward applies: cap * tanh(logits / cap)
                out.div_(cap).tanh_().mul_(cap)
        return buffer.permute(1, 0, 2)

    def _forward_all(self, groups):
        """Per pass, (the last hidden states of its rows, {(group index, namespace, stream index
        within the namespace): row}), and the hidden states' dtype.

        Joined negative streams (per-example KV) add the chunks they need computed as rows of the
        expert's pass, right after its expert rows (so its LoRA adapters apply to them; their
        hidden states are dropped), and the copies of their chunks to its batch."""
        joined = joined_streams(groups)
        results, dtype = [], None
        for runner, namespaces in self.passes:
            streams, rows_of, copies = [], {}, None
            for namespace in namespaces:
                for g_index, group in enumerate(groups):
                    for s_index, stream in enumerate(s for s in group.streams if s.namespace == namespace):
                        rows_of[(g_index, namespace, s_index)] = len(streams)
                        streams.append(stream)
                if namespace == "expert" and joined:
                    streams += chunks_to_compute(joined)
                    copies = chunk_copies(joined, runner.key_rotation, self.block_size, self.device)
                if namespace == namespaces[0]:
                    adapter_rows = len(streams)
            if not streams:
                results.append((None, rows_of))
                continue
            if self.decode_graphs is not None and copies is None and self.decode_graphs.applies(streams):
                hidden = self.decode_graphs.last_hidden(len(results), runner, self.attention, streams, adapter_rows)
                self.graph_forwards += 1
            else:
                batch = StepBatch.build(streams, self.block_size, self.device)
                if copies is not None:
                    batch = dataclasses.replace(batch, copies=copies)
                hidden = runner.last_hidden(self.attention, batch, adapter_rows=adapter_rows)
            dtype = hidden.dtype
            results.append((hidden, rows_of))
        return results, dtype

    @staticmethod
    def _head_rows(groups, slots, rows_of) -> list[int]:
        """For slot s and group g (slot-major), the hidden row whose logits fill it: the group's
        stream of that slot, else a stand-in (the group's first row in this pass, or any row)."""
        any_row = next(iter(rows_of.values()))
        index = []
        for namespace, k in slots:
            for g_index in range(len(groups)):
                row = rows_of.get((g_index, namespace, k))
                if row is None:
                    row = rows_of.get((g_index, namespace, 0), rows_of.get((g_index, "expert", 0), any_row))
                index.append(row)
        return index


def expert_slots(groups) -> int:
    """K_e: the expert's stream slots of a step, the most expert streams of any group."""
    return max(g.num_expert_streams for g in groups)


def slot_weights(groups, num_slots: int) -> list[list[float]]:
    """Each group's stream weights laid out on the buffer's slots: its expert streams, 0 for the
    expert slots it lacks, then the base slot (if the step has one: ``num_slots > K_e``)."""
    k_expert, rows = expert_slots(groups), []
    for group in groups:
        experts = group.num_expert_streams
        weights = group.weights[:experts] + [0.0] * (k_expert - experts)
        if num_slots > k_expert:
            weights.append(group.weights[-1] if group.has_base else 0.0)
        rows.append(weights)
    return rows

"""Finding and loading the expert and base models of a run, offline.

Everything that can be checked without loading weights (paths, adapter configs, tokenizers, the
context length) is checked by ``ModelSources.resolve`` and ``load_tokenizer`` first, so a bad
argument fails in a second with a message instead of after minutes of loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from steer.data.io import DataError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _local_file(source: str, filename: str) -> Path | None:
    """``filename`` of a model directory or of a model in the local Hugging Face cache; None if absent."""
    directory = Path(source).expanduser()
    if directory.is_dir():
        candidate = directory / filename
        return candidate if candidate.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(source, filename, local_files_only=True, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    return Path(found) if found else None


def _check_source(option: str, source: str) -> str:
    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{option} {source}: expected a model directory, got a file")
    if _local_file(source, "config.json") is None and _local_file(source, "adapter_config.json") is None:
        where = "directory has no config.json or adapter_config.json" if path.is_dir() else (
            "no such directory, and no model of that id in the local Hugging Face cache (steer never downloads)"
        )
        raise DataError(f"{option} {source}: {where}")
    return str(path) if path.is_dir() else source


@dataclass(frozen=True)
class ModelSources:
    """Where the expert's weights, its LoRA adapter (if any) and the base come from.

    expert_adapter set: the expert is ``base + adapter`` and runs with the base in one forward.
    """

    expert: str | None  # a full fine-tuned model; None when the expert is base + adapter
    expert_adapter: str | None
    base: str | None

    @classmethod
    def resolve(cls, expert: str, base: str | None, *, needs_base: bool) -> "ModelSources":
        expert = _check_source("--expert", expert)
        base = _check_source("--base", base) if base is not None else None
        adapter_config = _local_file(expert, "adapter_config.json")
        if adapter_config is None:
            if needs_base and base is None:
                raise DataError("gamma > 0 contrasts the expert with its base: give --base (or a PEFT adapter as --expert), or set --gamma 0")
            return cls(expert=expert, expert_adapter=None, base=base)
        if base is None:
            named = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
            if not named:
                raise DataError(f"--expert {expert} is a PEFT adapter that names no base model: give --base")
            base = _check_source(f"--base (from {adapter_config.name} of --expert)", named)
        return cls(expert=None, expert_adapter=expert, base=base)

    @property
    def tokenizer_sources(self) -> list[tuple[str, str]]:
        expert = self.expert or self.expert_adapter
        found = [("--expert", expert)] if _local_file(expert, "tokenizer_config.json") or _local_file(expert, "tokenizer.json") else []
        return found + ([("--base", self.base)] if self.base else [])

    def max_positions(self) -> int | None:
        config_path = _local_file(self.expert or self.base, "config.json")
        config = json.loads(config_path.read_text()) if config_path else {}
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if isinstance(config.get(key), int):
                return config[key]
        return None


def load_tokenizer(sources: ModelSources):
    """The run's tokenizer; a DataError if expert and base come with different ones."""
    from transformers import AutoTokenizer

    candidates = sources.tokenizer_sources
    if not candidates:
        raise DataError("no tokenizer found with the expert or the base model")
    tokenizers = [(option, AutoTokenizer.from_pretrained(src, local_files_only=True)) for option, src in candidates]
    (first_option, first), rest = tokenizers[0], tokenizers[1:]
    for option, other in rest:
        if first.get_vocab() != other.get_vocab() or first.all_special_ids != other.all_special_ids:
            raise DataError(
                f"the tokenizers of {first_option} and {option} differ ({len(first)} vs {len(other)} tokens): "
                "STEER combines the two models token by token, so they must share one tokenizer"
            )
    return first


def load_models(sources: ModelSources, *, dtype: torch.dtype):
    """(expert, base): base is None when the expert is base + adapter (the engine then runs both
    from one set of weights, the adapter off for the base rows) or when no base was given."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our own progress bar is the one that matters

    def load(source):
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True).eval()

    if sources.expert_adapter is not None:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question; not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return PeftModel.from_pretrained(load(sources.base), sources.expert_adapter, is_trainable=False).eval(), None
    return load(sources.expert), (load(sources.base) if sources.base else None)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise DataError(f"--dtype {name!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]

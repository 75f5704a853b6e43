"""Finding, checking and loading the expert and base models of a run: offline, and never running
code that comes with a model.

Everything that can be checked without loading weights is checked by ``ModelSources.resolve``
and ``load_tokenizer`` first, so a bad argument fails in a second with one line instead of after
minutes of loading:

* a source is a directory, or a model id of the local Hugging Face cache (resolved to its snapshot
  directory); steer never downloads;
* a model whose configs ask for its own Python code (``auto_map`` in config.json,
  tokenizer_config.json or adapter_config.json) is refused: steer loads only the architectures
  transformers implements, with ``trust_remote_code=False`` on every ``from_pretrained``;
* weights are read from safetensors files. Pickle files (``pytorch_model.bin``,
  ``adapter_model.bin``, ``*.pt``) can run code when unpickled, so a model that has only those is
  refused unless the run passes ``allow_pickle`` (``--allow-pickle``), and even then they are
  loaded with ``torch.load(weights_only=True)``, which refuses anything but tensors.

``model_digest`` fingerprints a model directory (its configs, tokenizer files and weights), so a
resumed run can tell that it continues with the very same models.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from steer.data.io import DataError, one_line
from steer.model_info import context_length

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONFIG_FILES = ("config.json", "adapter_config.json", "tokenizer_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FULLY_HASHED_BYTES = 32 * 2**20  # larger weight files are fingerprinted from samples of their bytes
SAMPLED_CHUNKS, CHUNK_BYTES = 64, 64 * 2**10


# -- finding a model ----------------------------------------------------------------------------------


def _cached_snapshot(source: str) -> Path | None:
    """The local Hugging Face cache directory of model id ``source``, or None."""
    from transformers.utils import cached_file

    for filename in ("config.json", "adapter_config.json"):
        try:
            found = cached_file(source, filename, local_files_only=True, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            found = None
        if found:
            return Path(found).parent
    return None


def resolve_model_dir(option: str, source: str) -> Path:
    """The absolute directory of a model given as a path or a cached model id; DataError if none."""
    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{option} {source}: expected a model directory, got a file")
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise DataError(f"{option} {source}: directory has no config.json or adapter_config.json")
        return path.resolve()
    snapshot = _cached_snapshot(source)
    if snapshot is None:
        raise DataError(f"{option} {source}: no such directory, and no model of that id in the local Hugging Face cache (steer never downloads)")
    return snapshot.resolve()


def _read_json(option: str, path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{option}: {path} is not a readable JSON file ({error})") from None
    if not isinstance(value, dict):
        raise DataError(f"{option}: {path} holds a JSON {type(value).__name__}, not an object")
    return value


def refuse_model_code(option: str, directory: Path) -> None:
    """DataError when a config of ``directory`` asks transformers to import the model's own code."""
    for name in CONFIG_FILES:
        path = directory / name
        if path.is_file() and _read_json(option, path).get("auto_map"):
            raise DataError(
                f"{option} {directory}: {name} asks to run the model's own Python code (auto_map); steer never runs "
                "code that comes with a model: use a model whose architecture transformers implements"
            )


def _pickle_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES and not p.name.startswith("training_args"))


def check_weights(option: str, directory: Path, *, allow_pickle: bool) -> None:
    """DataError unless ``directory`` has weights steer will load: safetensors, or pickle files
    when ``allow_pickle``."""
    if any(directory.glob("*.safetensors")):
        return
    pickles = _pickle_files(directory)
    if not pickles:
        raise DataError(f"{option} {directory}: no weights found (no *.safetensors file)")
    if not allow_pickle:
        raise DataError(
            f"{option} {directory}: has only pickle weights ({', '.join(pickles)}), and unpickling can run code: convert "
            "them to safetensors, or pass --allow-pickle to load them with torch.load(weights_only=True)"
        )


# -- fingerprints ---------------------------------------------------------------------------------------


def _hash_file(digest, path: Path) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as handle:
        if size <= FULLY_HASHED_BYTES:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
            return
        # A large weight file: its safetensors header (names, dtypes, shapes, offsets) and evenly
        # spaced samples of its bytes. Two different fine-tunes differ in nearly every weight.
        header_size = int.from_bytes(handle.read(8), "little") if path.suffix == ".safetensors" else 0
        digest.update(handle.read(min(header_size, 100 * 2**20)))
        for index in range(SAMPLED_CHUNKS):
            handle.seek(index * (size - CHUNK_BYTES) // (SAMPLED_CHUNKS - 1))
            digest.update(handle.read(CHUNK_BYTES))


def model_digest(directory: Path) -> str:
    """A fingerprint of a model directory: its config, tokenizer and weight files (names, sizes and
    contents; weight files over 32 MiB by their header and 64 samples of 64 KiB)."""
    digest = hashlib.sha256()
    names = set(CONFIG_FILES) | set(TOKENIZER_FILES) | {"generation_config.json"} | set(_pickle_files(directory))
    for path in sorted(Path(directory).iterdir()):
        weights = path.suffix == ".safetensors" or path.name.endswith(".safetensors.index.json")
        if path.is_file() and (path.name in names or weights):
            _hash_file(digest, path)
    return digest.hexdigest()[:16]


# -- the run's models -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSources:
    """Where the expert's weights, its LoRA adapter (if any) and the base come from: absolute
    directories, checked to hold no model code and loadable weights.

    expert_adapter set: the expert is ``base + adapter`` and runs with the base in one forward.
    """

    expert: str | None  # a full fine-tuned model; None when the expert is base + adapter
    expert_adapter: str | None
    base: str | None
    allow_pickle: bool = False

    @classmethod
    def resolve(cls, expert: str, base: str | None, *, needs_base: bool, allow_pickle: bool = False) -> "ModelSources":
        expert_dir = resolve_model_dir("--expert", expert)
        base_dir = resolve_model_dir("--base", base) if base is not None else None
        adapter_config = expert_dir / "adapter_config.json"
        if not adapter_config.is_file():
            if needs_base and base_dir is None:
                raise DataError("gamma > 0 contrasts the expert with its base: give --base (or a PEFT adapter as --expert), or set --gamma 0")
            sources = cls(expert=str(expert_dir), expert_adapter=None, base=base_dir and str(base_dir), allow_pickle=allow_pickle)
        else:
            if base_dir is None:
                named = _read_json("--expert", adapter_config).get("base_model_name_or_path")
                if not isinstance(named, str) or not named:
                    raise DataError(f"--expert {expert} is a PEFT adapter that names no base model: give --base")
                base_dir = resolve_model_dir(f"--base (from {adapter_config.name} of --expert)", named)
            sources = cls(expert=None, expert_adapter=str(expert_dir), base=str(base_dir), allow_pickle=allow_pickle)
        sources.check()
        return sources

    def _models(self) -> list[tuple[str, str]]:
        """(option, directory) of every model directory of the run."""
        found = [("--expert", self.expert or self.expert_adapter)]
        return found + ([("--base", self.base)] if self.base else [])

    def check(self) -> None:
        for option, directory in self._models():
            refuse_model_code(option, Path(directory))
            check_weights(option, Path(directory), allow_pickle=self.allow_pickle)

    @property
    def tokenizer_sources(self) -> list[tuple[str, str]]:
        expert = Path(self.expert or self.expert_adapter)
        found = [("--expert", str(expert))] if (expert / "tokenizer_config.json").is_file() or (expert / "tokenizer.json").is_file() else []
        return found + ([("--base", self.base)] if self.base else [])

    def _config(self) -> dict:
        """The model config of the expert's weights (the base's, for an adapter); a multimodal
        config's text part."""
        option, directory = ("--expert", self.expert) if self.expert else ("--base", self.base)
        config_path = Path(directory) / "config.json"
        config = _read_json(option, config_path) if config_path.is_file() else {}
        return config["text_config"] if isinstance(config.get("text_config"), dict) else config

    def max_positions(self) -> int | None:
        return context_length(self._config())

    def model_type(self) -> str | None:
        return self._config().get("model_type")

    def vocab_size(self) -> int | None:
        value = self._config().get("vocab_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def fingerprints(self) -> dict:
        """The run metadata that names the models: absolute directories and their digests."""
        expert = self.expert or self.expert_adapter
        return {
            "expert": expert, "expert_digest": model_digest(Path(expert)),
            "base": self.base, "base_digest": model_digest(Path(self.base)) if self.base else None,
        }


def load_tokenizer(sources: ModelSources):
    """The run's tokenizer; a DataError if expert and base come with different ones."""
    from transformers import AutoTokenizer

    candidates = sources.tokenizer_sources
    if not candidates:
        raise DataError("no tokenizer found with the expert or the base model")
    tokenizers = []
    for option, directory in candidates:
        try:
            tokenizers.append((option, AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)))
        except Exception as error:  # a broken tokenizer file is bad input, said in one line
            raise DataError(f"{option} {directory}: could not load its tokenizer ({one_line(error)})") from None
    (first_option, first), rest = tokenizers[0], tokenizers[1:]
    for option, other in rest:
        if first.get_vocab() != other.get_vocab() or first.all_special_ids != other.all_special_ids:
            raise DataError(
                f"the tokenizers of {first_option} and {option} differ ({len(first)} vs {len(other)} tokens): "
                "STEER combines the two models token by token, so they must share one tokenizer"
            )
    return first


def _load_failure(what: str, option: str, directory: str, error: BaseException) -> DataError:
    """One line for a failed load: an unknown architecture, corrupt weights, or a pickle that
    torch.load(weights_only=True) refused because it holds more than tensors."""
    cause = error
    while cause is not None and not isinstance(cause, pickle.UnpicklingError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return DataError(f"{option} {directory}: could not load {what}: refused to unpickle its weights, which hold more than tensors (objects that could run code)")
    return DataError(f"{option} {directory}: could not load {what} ({one_line(error)})")


@contextmanager
def _quiet_loading():
    """transformers and peft warn about their own internals while loading; not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*pickle protocol.*")
        warnings.filterwarnings("ignore", message="Found missing adapter keys")  # refused in our own words
        yield


def _load_causal_lm(option: str, directory: str, *, dtype: torch.dtype, allow_pickle: bool):
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_loading():
            model, info = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, local_files_only=True, trust_remote_code=False,
                use_safetensors=None if allow_pickle else True, weights_only=True, output_loading_info=True,
            )  # fmt: skip
    except Exception as error:  # unknown architecture, corrupt or refused weights: one line, no traceback
        raise _load_failure("the model", option, directory, error) from None
    _refuse_missing_weights(option, directory, info)
    return model.eval()


def _a_few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _refuse_missing_weights(option: str, directory: str, info: dict) -> None:
    """transformers fills the parameters a checkpoint lacks with random values and only logs it:
    a stripped tensor, or a config with more layers than the weights, would then generate noise
    that looks like a run. Missing weights are refused, naming a few."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise DataError(
            f"{option} {directory}: the weights lack {len(missing)} of the model's parameters ({_a_few(missing)}); "
            "transformers would fill them with random values: is the checkpoint complete and its config.json the one it was saved with?"
        )


def _load_adapter(model, directory: str):
    from peft import PeftModel

    try:
        with _quiet_loading():
            adapted = PeftModel.from_pretrained(model, directory, is_trainable=False).eval()
            saved = _adapter_checkpoint_keys(Path(directory))
    except Exception as error:  # refused pickles (weights_only) and corrupt adapters alike
        raise _load_failure("the LoRA adapter", "--expert", directory, error) from None
    _refuse_missing_adapter_weights(directory, adapted, saved)
    return adapted


def _adapter_checkpoint_keys(directory: Path) -> set[str]:
    """The tensor names of the adapter file PEFT loaded (safetensors first, as PEFT looks)."""
    from safetensors import safe_open

    tensors = directory / "adapter_model.safetensors"
    if tensors.is_file():
        with safe_open(tensors, framework="pt") as handle:
            return set(handle.keys())
    return set(torch.load(directory / "adapter_model.bin", map_location="meta", weights_only=True))


def _refuse_missing_adapter_weights(directory: str, adapted, saved: set[str]) -> None:
    """PEFT initialises the adapter tensors its file lacks (lora_A at random) and only warns: the
    expert would then be the base plus noise. Refused, naming a few."""
    from peft.utils import get_peft_model_state_dict

    missing = sorted(set(get_peft_model_state_dict(adapted)) - saved)
    if missing:
        raise DataError(
            f"--expert {directory}: the LoRA adapter's file lacks {len(missing)} of its tensors ({_a_few(missing)}); "
            "PEFT would initialise them at random: is adapter_model.safetensors complete and adapter_config.json its own?"
        )


def load_models(sources: ModelSources, *, dtype: torch.dtype):
    """(expert, base): base is None when the expert is base + adapter (the engine then runs both
    from one set of weights, the adapter off for the base rows) or when no base was given."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our own progress bar is the one that matters
    sources.check()  # again: the directories may have changed since the plan was made
    allow_pickle = sources.allow_pickle
    if sources.expert_adapter is not None:
        base = _load_causal_lm("--base", sources.base, dtype=dtype, allow_pickle=allow_pickle)
        return _load_adapter(base, sources.expert_adapter), None
    expert = _load_causal_lm("--expert", sources.expert, dtype=dtype, allow_pickle=allow_pickle)
    base = _load_causal_lm("--base", sources.base, dtype=dtype, allow_pickle=allow_pickle) if sources.base else None
    return expert, base


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DataError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise DataError(f"--device {name}: steer runs on cpu or cuda devices")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise DataError(f"--dtype {name!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]

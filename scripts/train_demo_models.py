#!/usr/bin/env python
"""Train the tiny demo models shipped in ``python/steer/demo/models/`` (used by ``steer demo``).

``steer demo`` generates synthetic programmer jokes with STEER offline, in seconds, on a laptop
CPU. It needs a *base* model that knows general English but no programmer jokes, and an *expert*
that is the same base plus a LoRA adapter fine-tuned on programmer jokes, so that the expert-vs-
base contrast means "jokiness". This script builds both from scratch:

1. Corpora, downloaded at training time only (nothing of them is committed or shipped):

   * general: the fortune cookies of Debian's ``fortunes`` and ``fortunes-min`` packages, fetched
     with ``apt-get download`` and unpacked with ``dpkg -x`` (no root, nothing installed). The
     strfile files under ``usr/share/games/fortunes/`` hold entries separated by lines that hold
     only ``%``; ``.dat`` index files, ``.u8`` links, ``off/`` (offensive, in none of these
     packages but skipped if present) and ``ascii-art`` are skipped. Each entry is normalised:
     overstrike sequences (``X<BS>Y``, old-style underline/bold) reduced to the printed
     characters, accents stripped, other control characters dropped, all whitespace runs (line
     breaks, indentation) collapsed to one space. Attribution lines (``-- Mark Twain``) are
     kept, joined to the quote with one space: they are part of what makes a fortune look like
     one. Entries longer than ``--max-chars`` (400), not printable ASCII after that, with fewer
     than 40% letters (ASCII art, code), exact duplicates and any entry that contains one of the
     pyjokes jokes are dropped: the base must never see the domain data.
   * domain: ``pyjokes.get_jokes(language="en", category="all")`` (283 one-line programmer jokes).

2. Tokenizer: a byte-level BPE (``tokenizers``) trained on the fortunes only (as a base model's
   tokenizer knows nothing of the domain it is later tuned on; ``--tokenizer-corpus both`` adds
   the jokes, see SOURCES.md for why that is worse), ``--vocab-size`` 2048
   with ``<|pad|>`` = 0, ``<|bos|>`` = 1, ``<|eos|>`` = 2. Its alphabet is the printable ASCII
   the corpora hold, not all 256 bytes: every token then occurs in the training data (see
   ``train_tokenizer``). No prefix space and no post-processor, so
   ``decode(encode(text)) == text`` for printable-ASCII text (checked on every corpus text; the
   normaliser strips accents, other characters are dropped) and ``add_special_tokens=True`` adds
   *nothing*: callers add bos/eos themselves. Saved as a ``PreTrainedTokenizerFast``
   (``AutoTokenizer.from_pretrained(dir)`` works offline, with transformers 4 and 5).

3. Text format: every text is ``[bos] + tokens(text) + [eos]``; generation starts from ``[bos]``
   and stops at eos. Training sequences *pack* several texts, shuffled, into ``--pack-len``
   tokens (``[bos] t1 [eos] [bos] t2 [eos] ...``, a text never split), attention running across
   them as in ordinary LM pre-training. That is exactly the layout of STEER's negative contexts
   (examples joined by ``[eos] [bos]``, then the sample's own tokens), so the models have learnt
   to read earlier examples in their context, which negative prompting relies on: trained on
   single texts only, a model has never seen a second ``[bos]`` and its view of the negative
   context is noise. ``in_context_loss`` measures the effect (SOURCES.md).

4. Base: a tiny ``LlamaForCausalLM`` (tied embeddings) trained from scratch on the fortunes
   (AdamW, warmup + cosine, batches of packed sequences, fp32, ``--threads`` CPU
   threads), with a held-out split reported per epoch. The few tokens that never occur in its
   training data keep their initial embedding rows (see ``train_base``). Stored in fp16 to keep the package small;
   the expert is trained on top of the fp16-rounded weights, so what ships is what was trained
   and measured.

5. Expert: a PEFT LoRA on all linear projections (q/k/v/o/gate/up/down; no DoRA, no
   modules_to_save, nothing on the embeddings: the steer engine refuses those) trained on 90% of
   the jokes, the rest held out to watch overfitting. Then ``--samples`` texts are sampled from
   the expert (T=1, top_k=10) and compared with the jokes, to measure verbatim memorisation.

6. Output under ``--out``: ``base/`` (config, fp16 safetensors, generation config, tokenizer),
   ``expert/`` (adapter_config.json, adapter_model.safetensors, tokenizer copy) and
   ``SOURCES.md`` (provenance, licences, command, hyperparameters, results); the full report
   with all samples goes to ``steer_demo_train_log.json`` in ``--workdir`` (or the temp dir).

Usage (from the repository root, in the dev venv; needs ``apt-get``, ``dpkg``, ``pyjokes``,
``peft``, ``tokenizers``)::

    python scripts/train_demo_models.py                       # defaults used for the shipped models
    python scripts/train_demo_models.py --workdir /tmp/steer-demo-corpora --out /tmp/models

The run is seeded (``--seed``) and single-process; with the same package versions, thread count
and corpora it reproduces the same weights up to floating-point non-determinism of the CPU kernels.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "python" / "steer" / "demo" / "models"

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
DEBIAN_PACKAGES = ("fortunes", "fortunes-min")
FORTUNE_DIR = Path("usr/share/games/fortunes")
SKIPPED_FORTUNE_FILES = {"ascii-art"}  # pictures, not text
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_BASE_NAME = "steer-demo-base"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------


def _overstrike(line: str) -> str:
    """What a terminal shows for a line with backspaces: "A\bA" (bold) and "_\bA" or "___\b\b\bABC"
    (underline) print the letters; an underscore struck over a letter keeps the letter."""
    out: list[str] = []
    col = 0
    for ch in line:
        if ch == "\b":
            col = max(0, col - 1)
            continue
        if col < len(out):
            if ch != "_" or out[col] in " _":
                out[col] = ch
        else:
            out.append(ch)
        col += 1
    return "".join(out)


def normalise(text: str) -> str:
    """One line of text: overstrikes resolved, accents stripped (NFKD, combining marks dropped, as
    the tokenizer's normaliser does), other control characters dropped, whitespace runs (line
    breaks, indentation) collapsed to one space."""
    text = "\n".join(_overstrike(line) for line in text.split("\n"))
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = "".join(c for c in text if c.isprintable() or c.isspace())
    return " ".join(text.split())


def is_ascii(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


def download_fortunes(workdir: Path) -> tuple[Path, dict[str, str]]:
    """``apt-get download`` + ``dpkg -x`` the fortune packages into workdir; reuses earlier .debs.

    Returns the unpacked root and {package: version}."""
    debs = workdir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for package in DEBIAN_PACKAGES:
        if not list(debs.glob(f"{package}_*.deb")):
            log(f"apt-get download {package}")
            done = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(
                    f"apt-get download {package} failed (needs Debian/Ubuntu apt with package lists: "
                    f"apt-get update):\n{done.stderr}"
                )
    root = workdir / "unpacked"
    versions = {}
    for package in DEBIAN_PACKAGES:
        (deb,) = sorted(debs.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        versions[package] = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
    return root, versions


def read_fortunes(root: Path, jokes: list[str], max_chars: int, only: set[str] | None = None) -> tuple[list[str], dict]:
    """The normalised fortunes of every strfile file under root/usr/share/games/fortunes/ (of
    the files named in ``only``, when given: one category such as ``computers``)."""
    folder = root / FORTUNE_DIR
    stats = {"files": [], "entries": 0, "too_long": 0, "non_ascii": 0, "few_letters": 0, "duplicates": 0, "contain_joke": 0}
    joke_keys = [j.lower() for j in jokes]
    seen, texts = set(), []
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.is_symlink() or path.suffix in (".dat", ".u8") or path.name in SKIPPED_FORTUNE_FILES:
            continue  # off/ (offensive) is a directory, .u8 are links to the same files
        if only is not None and path.name not in only:
            continue
        stats["files"].append(path.name)
        raw = path.read_bytes().decode("utf-8", errors="replace")
        for entry in re.split(r"^%\n", raw, flags=re.M):
            text = normalise(entry)
            if not text:
                continue
            stats["entries"] += 1
            if len(text) > max_chars:
                stats["too_long"] += 1
            elif not is_ascii(text):
                stats["non_ascii"] += 1
            elif sum(c.isalpha() for c in text) < 0.4 * len(text):
                stats["few_letters"] += 1
            elif text in seen:
                stats["duplicates"] += 1
            elif any(key in text.lower() for key in joke_keys):
                stats["contain_joke"] += 1
            else:
                seen.add(text)
                texts.append(text)
    stats["kept"] = len(texts)
    stats["chars"] = sum(len(t) for t in texts)
    return texts, stats


def read_jokes() -> list[str]:
    import pyjokes

    jokes = [normalise(j) for j in pyjokes.get_jokes(language="en", category="all")]
    assert all(is_ascii(j) for j in jokes), [j for j in jokes if not is_ascii(j)]
    return jokes


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """Byte-level BPE; saved as a PreTrainedTokenizerFast and reloaded through AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Accents stripped like normalise() does; the alphabet is the printable ASCII of the corpora
    # (no initial 256-byte alphabet): a token the models never saw would keep an untrained
    # embedding row, which LoRA fine-tuning can lift into the expert's samples and STEER's
    # contrast then amplifies. Characters outside the alphabet are dropped when encoding.
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],  # ids 0, 1, 2
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
    save_tokenizer(wrapped, out_dir)
    reloaded = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    ids = [reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id]
    assert ids == [0, 1, 2], ids
    return reloaded


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json, loadable by transformers 4
    and 5: transformers 5 names its fast tokenizer class ``TokenizersBackend`` and writes no
    special_tokens_map.json; ``PreTrainedTokenizerFast`` is the name both versions know."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    config["add_bos_token"] = config["add_eos_token"] = False
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def check_round_trip(tokenizer, texts: list[str]) -> None:
    bad = [t for t in texts if tokenizer.decode(tokenizer.encode(t, add_special_tokens=False)) != t]
    assert not bad, f"{len(bad)} texts do not round-trip, e.g. {bad[0]!r}"
    assert tokenizer.encode(texts[0]) == tokenizer.encode(texts[0], add_special_tokens=False), "bos added"


def encode_all(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = [[bos] + tokenizer.encode(t, add_special_tokens=False) + [eos] for t in texts]
    too_long = sum(len(ids) > max_len for ids in out)
    assert not too_long, f"{too_long} examples exceed {max_len} tokens"
    return out


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def batches(examples: list[list[int]], batch_size: int, rng: random.Random, shuffle: bool = True):
    """Length-bucketed batches: shuffle, sort windows of 50 batches by length, shuffle the batches."""
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    window = batch_size * 50
    out = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(examples[i]))
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(out)
    return out


def pack(examples: list[list[int]], length: int, rng: random.Random) -> list[list[int]]:
    """The examples shuffled and concatenated into sequences of at most ``length`` tokens; an
    example is never split (each starts with its own bos), a sequence is closed when the next
    example does not fit."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    packed, current = [], []
    for i in order:
        if current and len(current) + len(examples[i]) > length:
            packed.append(current)
            current = []
        current = current + examples[i]
    if current:
        packed.append(current)
    return packed


def collate(examples: list[list[int]], rows: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and next-token targets (-100 on padding). Causal attention never lets a
    real token see the padding after it, so no attention mask is needed."""
    length = max(len(examples[r]) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(examples[r])] = torch.tensor(examples[r])
    targets = ids[:, 1:].clone()
    for i, r in enumerate(rows):
        targets[i, len(examples[r]) - 1 :] = -100
    return ids[:, :-1], targets


def batch_loss(model, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the real target tokens, and their count."""
    logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


@torch.no_grad()
def mean_loss(model, examples: list[list[int]], pad_id: int, batch_size: int = 64) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for rows in batches(examples, batch_size, random.Random(0), shuffle=False):
        loss, n = batch_loss(model, *collate(examples, rows, pad_id))
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / count


def train_step(model, optimizer, lr: float, packed: list[list[int]], rows: list[int], pad_id: int) -> tuple[torch.Tensor, int]:
    """One AdamW step on the packed sequences ``rows`` at learning rate ``lr``, gradients clipped to
    norm 1 (parameters without a gradient, such as a frozen base under LoRA, are left out); returns
    the summed loss and the number of target tokens."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss, n = batch_loss(model, *collate(packed, rows, pad_id))
    (loss / n).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, n


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def train_base(args, tokenizer, train: list[list[int]], held: list[list[int]], report: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).train()
    n_params = sum(p.numel() for p in model.parameters())
    # Tokens that never occur in the base's training data (BPE intermediate merges that are always
    # merged further, <|pad|>, and with --tokenizer-corpus both tokens of the jokes only such as
    # "Chuck") would only ever get the softmax's push-down, which Adam turns into full-size steps
    # along one shared direction: collinear rows that the expert cannot lift one of without
    # lifting all. Their rows (tied: input and output) keep their random initialisation instead.
    seen = torch.zeros(config.vocab_size, dtype=torch.bool)
    for ids in train:
        seen[ids] = True
    frozen = (~seen).nonzero().flatten()
    frozen = frozen[frozen != tokenizer.bos_token_id]
    embedding = model.get_input_embeddings().weight
    initial_rows = embedding.detach()[frozen].clone()
    report["base_frozen_rows"] = [tokenizer.convert_ids_to_tokens(int(i)) for i in frozen]
    report["base_frozen_ids"] = [int(i) for i in frozen]
    log(f"base: {n_params:,} parameters, {len(train)} train / {len(held)} held-out fortunes; "
        f"{len(frozen)} embedding rows kept at their initialisation: {report['base_frozen_rows']}")
    optimizer = make_optimizer(model, args.base_lr, args.weight_decay)
    rng = random.Random(args.seed)
    steps_per_epoch = math.ceil(len(pack(train, args.pack_len, random.Random(args.seed))) / args.base_batch_size)
    total = steps_per_epoch * args.base_epochs
    if args.base_max_steps:
        total = min(total, args.base_max_steps)
    warmup = report["base_warmup"] = min(args.base_warmup, total // 5 + 1)
    step, started = 0, time.time()
    report["base_epochs"] = []
    for epoch in range(args.base_epochs):
        total_loss, count = 0.0, 0
        packed = pack(train, args.pack_len, rng)
        for rows in batches(packed, args.base_batch_size, rng):
            if step >= total:
                break
            lr = cosine_lr(step, total, warmup, args.base_lr, args.base_lr * 0.1)
            loss, n = train_step(model, optimizer, lr, packed, rows, tokenizer.pad_token_id)
            with torch.no_grad():
                embedding[frozen] = initial_rows
            total_loss, count, step = total_loss + float(loss.detach()), count + n, step + 1
            if step % 100 == 0:
                log(f"base step {step}/{total}: train loss {total_loss / count:.3f} ({time.time() - started:.0f}s)")
        if count == 0:
            break
        held_loss = mean_loss(model, held, tokenizer.pad_token_id)
        row = {"epoch": epoch + 1, "step": step, "train_loss": total_loss / count, "held_out_loss": held_loss,
               "seconds": time.time() - started}
        report["base_epochs"].append(row)
        log(f"base epoch {epoch + 1}: train {row['train_loss']:.3f}, held-out {held_loss:.3f} ({row['seconds']:.0f}s)")
    report["base_steps"] = step
    report["base_train_seconds"] = time.time() - started
    report["base_parameters"] = n_params
    return model.eval()


def train_expert(args, base, tokenizer, train: list[list[int]], held: list[list[int]], report: dict):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=LORA_TARGETS,
        bias="none",
        use_dora=False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"expert: LoRA r={args.lora_r} alpha={args.lora_alpha}: {n_lora:,} trainable parameters, "
        f"{len(train)} train / {len(held)} held-out jokes")
    optimizer = make_optimizer(model, args.expert_lr, 0.0)
    rng = random.Random(args.seed + 1)
    total, warmup = args.expert_steps, min(20, args.expert_steps // 5 + 1)
    pad = tokenizer.pad_token_id
    curve = [{"step": 0, "train_loss": mean_loss(model, train, pad), "held_out_loss": mean_loss(model, held, pad)}]
    log(f"expert step 0: train {curve[0]['train_loss']:.3f}, held-out {curve[0]['held_out_loss']:.3f}")
    step, started = 0, time.time()
    model.train()
    while step < total:
        packed = pack(train, args.pack_len, rng)
        for rows in batches(packed, args.expert_batch_size, rng):
            if step >= total:
                break
            train_step(model, optimizer, cosine_lr(step, total, warmup, args.expert_lr, args.expert_lr * 0.1), packed, rows, pad)
            step += 1
            if step % args.expert_eval_every == 0 or step == total:
                row = {"step": step, "train_loss": mean_loss(model, train, pad), "held_out_loss": mean_loss(model, held, pad)}
                curve.append(row)
                log(f"expert step {step}: train {row['train_loss']:.3f}, held-out {row['held_out_loss']:.3f} "
                    f"({time.time() - started:.0f}s)")
    report["expert_curve"] = curve
    report["expert_train_seconds"] = time.time() - started
    report["lora_parameters"] = n_lora
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Saving, reloading, checks
# ----------------------------------------------------------------------------------------------


def save_base(model, tokenizer, out: Path) -> None:
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.to(torch.float16).save_pretrained(out)
    model.to(torch.float32)
    save_tokenizer(tokenizer, out)
    for path in out.iterdir():
        path.chmod(0o644)  # safetensors writes 0600


def load_base(out: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True).eval()


def save_expert(model, tokenizer, out: Path, base_dir: Path) -> None:
    """The adapter only; adapter_config.json names the placeholder ADAPTER_BASE_NAME as its base."""
    out.mkdir(parents=True, exist_ok=True)
    # Saved against the real base directory (PEFT reads its config.json to check the vocabulary
    # was not resized), then renamed: the demo always loads base/ itself.
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(out)
    model.peft_config["default"].base_model_name_or_path = ADAPTER_BASE_NAME
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model card template
    path = out / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = ADAPTER_BASE_NAME
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    assert not config.get("use_dora") and not config.get("modules_to_save"), config
    assert sorted(config["target_modules"]) == sorted(LORA_TARGETS), config["target_modules"]
    save_tokenizer(tokenizer, out)
    for path in out.iterdir():
        path.chmod(0o644)


def load_expert(out: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(out / "base"), out / "expert").eval()


@torch.no_grad()
def sample(model, tokenizer, n: int, seed: int, max_new_tokens: int, top_k: int = 10) -> list[str]:
    torch.manual_seed(seed)
    ids = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=top_k, temperature=1.0,
        top_p=1.0, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return [tokenizer.decode(row[1:], skip_special_tokens=True) for row in out]


def memorisation(samples: list[str], train_jokes: list[str], all_jokes: list[str]) -> dict:
    """How many samples are verbatim jokes, and how many are near copies (difflib ratio >= 0.8)."""
    train_set, all_set = set(train_jokes), set(all_jokes)

    def closest(text: str) -> float:
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(text)
        best = 0.0
        for joke in all_jokes:
            matcher.set_seq1(joke)
            if matcher.real_quick_ratio() > best and matcher.quick_ratio() > best:
                best = max(best, matcher.ratio())
        return best

    ratios = [closest(s) for s in samples]
    return {
        "samples": len(samples),
        "exact_train_copies": sum(s in train_set for s in samples),
        "exact_joke_copies": sum(s in all_set for s in samples),
        "near_copies_ratio_ge_0.8": sum(r >= 0.8 for r in ratios),
        "mean_closest_ratio": sum(ratios) / len(ratios),
    }


@torch.no_grad()
def in_context_loss(model, targets: list[list[int]], context: list[list[int]], n_context: int, seed: int) -> tuple[float, float]:
    """Mean loss (nats per token) on the texts of ``targets`` alone, and after ``n_context`` texts
    of ``context`` packed before each (the layout of a negative prompt); the same tokens are
    scored both times. Lower with context = the model reads its context."""
    rng = random.Random(seed)
    totals = [0.0, 0.0]
    count = 0
    for target in targets:
        prefix = [t for ids in rng.sample(context, n_context) for t in ids]
        for k, ids in enumerate((target, prefix + target)):
            logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0, -(len(target) - 1):]
            totals[k] += float(F.cross_entropy(logits.float(), torch.tensor(target[1:]), reduction="sum"))
        count += len(target) - 1
    return totals[0] / count, totals[1] / count


@torch.no_grad()
def token_mass(model, examples: list[list[int]], token_ids: list[int], pad_id: int) -> tuple[float, float]:
    """Mean probability the model gives token_ids together: after bos, and at later positions."""
    ids, targets = collate(examples, list(range(len(examples))), pad_id)
    mass = model(input_ids=ids).logits.softmax(-1)[:, :, token_ids].sum(-1)
    real = targets != -100
    return float(mass[:, 0].mean()), float(mass[:, 1:][real[:, 1:]].mean())


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------
# SOURCES.md
# ----------------------------------------------------------------------------------------------


def write_sources(out: Path, args, report: dict) -> None:
    r = report
    base_rows = "\n".join(
        f"| {e['epoch']} | {e['step']} | {e['train_loss']:.3f} | {e['held_out_loss']:.3f} | {e['seconds']:.0f} |"
        for e in r["base_epochs"]
    )
    expert_rows = "\n".join(
        f"| {e['step']} | {e['train_loss']:.3f} | {e['held_out_loss']:.3f} |" for e in r["expert_curve"]
    )
    mem, mem_base = r["memorisation_expert"], r["memorisation_base"]
    fs = r["fortune_stats"]
    best = min(r["expert_curve"], key=lambda e: e["held_out_loss"])
    sizes = r["sizes"]
    versions = r["versions"]
    text = f"""# Demo models: sources, licences, training

Two tiny models for `steer demo` (synthetic programmer jokes with STEER, offline, on a CPU):

* `base/`: a {r['base_parameters'] / 1e6:.2f}M-parameter `LlamaForCausalLM` trained from scratch on
  fortune cookies (general English quotes and jokes, **no** programmer jokes from pyjokes);
* `expert/`: a PEFT LoRA adapter for that base ({r['lora_parameters']:,} parameters), fine-tuned on the
  English pyjokes programmer jokes. Load the base, then `PeftModel.from_pretrained(base, "expert")`
  (`steer.demo.models.load_demo_expert()`); the base is the same model with the adapter disabled.

Both were produced by `scripts/train_demo_models.py` (see its docstring). **The weights are derived
from the two corpora below. No corpus text is shipped in this directory or in the package**: the
corpora are downloaded at training time only, and the demo reads the pyjokes jokes it compares
against from the installed `pyjokes` package at run time.

## Corpora

| corpus | source | version | licence |
|---|---|---|---|
| general (base) | Debian packages `fortunes` and `fortunes-min` (source package `fortune-mod`), <https://packages.debian.org/bookworm/fortunes>, <https://packages.debian.org/bookworm/fortunes-min>, fetched with `apt-get download` | {versions['fortunes']} / {versions['fortunes-min']} | BSD licence of the University of California (3 clauses: the advertising clause deleted), per `/usr/share/doc/fortunes/copyright` in both packages; upstream fortune-mod {r['upstream']}. The quotations themselves are by their many (mostly attributed) authors, collected over decades in the BSD fortune databases. |
| domain (expert) | `pyjokes.get_jokes(language="en", category="all")`, <https://pypi.org/project/pyjokes/>, <https://github.com/pyjokes/pyjokes> | pyjokes {versions['pyjokes']} | BSD-3-Clause (`LICENCE.txt` in the pyjokes dist-info: "Copyright 2014- Pyjokes Society") |

General corpus preparation: all strfile files of both packages except `ascii-art` (`.dat`
indexes and `.u8` links skipped; no `off/` offensive files are in these packages), split on `%`
lines; overstrikes resolved, accents stripped, control characters dropped, whitespace collapsed
to single spaces (a quote and its `-- Author` attribution become one line). Of
{fs['entries']:,} entries, {fs['too_long']:,} longer than {args.max_chars} characters, {fs['non_ascii']} not printable
ASCII, {fs['few_letters']} with fewer than 40% letters (ASCII art, code), {fs['duplicates']} duplicates and
{fs['contain_joke']} that contain a pyjokes joke were dropped: **{fs['kept']:,} fortunes** ({fs['chars']:,}
characters) from {len(fs['files'])} files, of which {r['base_held_out']} held out for evaluation. Domain
corpus: **{r['jokes']} jokes** ({r['jokes_train']} for training, {r['jokes_held_out']} held out).

## Tokenizer

Byte-level BPE (`tokenizers` {versions['tokenizers']}) trained on {'the fortunes only (the general corpus)' if args.tokenizer_corpus == 'general' else 'both corpora'}: vocabulary
{r['vocab_size']}, special tokens `<|pad|>` = 0, `<|bos|>` = 1, `<|eos|>` = 2. The alphabet is the
printable ASCII of the corpora rather than all 256 bytes, so that (nearly) every token occurs in
the training data; the normaliser strips accents (NFKD) and characters outside the alphabet are
dropped when encoding. No prefix space, no post-processor: `decode(encode(text)) == text` for
printable ASCII (checked on every corpus text), and `encode(text)` adds **no** special tokens;
every training example is `[<|bos|>] + encode(text) + [<|eos|>]`, and generation starts from
`[<|bos|>]` and stops at `<|eos|>`. Mean tokens per text (without bos/eos): fortunes
{r['mean_tokens_fortune']:.1f}, jokes {r['mean_tokens_joke']:.1f}.

## Training

Command (from the repository root, {r['platform']}, {args.threads} CPU threads, torch
{versions['torch']}, transformers {versions['transformers']}, peft {versions['peft']}):

```
{r['command']}
```

**Base**: `LlamaForCausalLM`, hidden {args.hidden_size}, {args.layers} layers, {args.heads} heads
({args.kv_heads} key/value heads), MLP {args.intermediate_size}, max positions {args.max_len}, tied
embeddings: {r['base_parameters']:,} parameters. AdamW (betas 0.9/0.95, weight decay
{args.weight_decay} on matrices), peak learning rate {args.base_lr}, {r['base_warmup']} warmup steps then
cosine to 10%, {args.base_epochs} epochs of batches of {args.base_batch_size} sequences of up to
{args.pack_len} tokens, fortunes packed as `[<|bos|>] f1 [<|eos|>] [<|bos|>] f2 ...` and shuffled anew
every epoch ({r['base_steps']} steps), gradient clipping 1.0, fp32, seed {args.seed}.
Loss is the mean next-token cross-entropy (nats) over real tokens, eos included:

| epoch | step | train loss (epoch mean) | held-out loss | elapsed s |
|---|---|---|---|---|
{base_rows}

Stored in fp16 ({sizes['base_weights'] / 1e6:.2f} MB); held-out loss of the stored weights loaded back in
fp32: {r['base_held_out_loss_fp16']:.3f}.

The {len(r['base_frozen_rows'])} tokens that never occur in the base's training data keep their random
initial embedding rows (tied: input and output): {', '.join('`' + t + '`' for t in r['base_frozen_rows'])}
(BPE intermediate merges that are always merged further, and `<|pad|>`). Trained, they would only get
the softmax's push-down, which AdamW turns into full-size steps along one shared direction (an
earlier 256-byte-alphabet version put a third of the expert's first-token probability on
never-seen byte tokens, which STEER's contrast amplified).

Why the tokenizer knows only the fortunes: a version whose BPE was trained on both corpora had
joke-only tokens such as `Chuck` (never seen by the base, its embedding row left at its small random
initialisation). To raise it after `<|bos|>` the LoRA had to push the hidden state hard, which also
lifted stray mid-sentence tokens (`,`, `ar`, `Ġall`) to about 1% each; the base rates those near
zero at the start of a text, so STEER's expert-vs-base contrast multiplied them into its top 10,
and 15% of STEER samples began with a fragment (", does nothing..."), against none of plain
sampling. With the general tokenizer the expert spells `Ch`+`uck` from pieces the base knows, and
the same check gives 0 of 100 (both measured on shorter base runs of 600 steps). Probability both models give the
{len(r['unseen_tokens'])} tokens in no training text, on the jokes: expert {r['unseen_mass_expert'][0]:.4f} after
`<|bos|>`, {r['unseen_mass_expert'][1]:.4f} later; base {r['unseen_mass_base'][0]:.4f} and {r['unseen_mass_base'][1]:.4f}.

**Expert**: LoRA r={args.lora_r}, alpha={args.lora_alpha}, dropout {args.lora_dropout}, on
{', '.join(LORA_TARGETS)} of every layer (no DoRA, no `modules_to_save`, nothing on the embeddings),
trained on top of the fp16-rounded base for {args.expert_steps} steps of {args.expert_batch_size} packed sequences of jokes
(AdamW, peak learning rate {args.expert_lr}, warmup then cosine to 10%, no weight decay), fp32,
stored in fp32 ({sizes['adapter_weights'] / 1e6:.2f} MB):

| step | train loss | held-out loss |
|---|---|---|
{expert_rows}

Step count: the held-out loss bottoms out early ({best['held_out_loss']:.3f} at step {best['step']}) and
then creeps up while the train loss keeps falling. Near that minimum the samples are still mostly
fortune-like; further on they pick up the jokes' templates ("Chuck Norris can...", "How many
programmers...", "There are two kinds of...") while still not reciting jokes (memorisation
check below: the adapter is far too small to store {r['jokes_train']} jokes). `--expert-steps` {args.expert_steps}
trades {r['expert_curve'][-1]['held_out_loss'] - best['held_out_loss']:.2f} nats of held-out loss for a clearer
expert-vs-base contrast. Held-out joke loss: expert {r['expert_held_out_loss_reloaded']:.3f}, base
{r['base_joke_held_out_loss']:.3f}.

**In context.** Both models are trained on packed sequences, the layout of STEER's negative
contexts (examples joined by `<|eos|><|bos|>`, then the sample). Loss on the held-out jokes alone and
after {r['in_context_n']} training jokes packed before each (nats per token, the same tokens scored):
expert {r['in_context_expert'][0]:.3f} alone, {r['in_context_expert'][1]:.3f} in context; base
{r['in_context_base'][0]:.3f} alone, {r['in_context_base'][1]:.3f} in context. Jokes say little about
each other, so the context helps little, but it no longer hurts: an earlier version trained on
single texts only scored 1.3 nats (expert) and 0.5 nats (base) *worse* with such a context, so its
negative streams were noise to it, and negative prompting changed little
(`benchmarks/results/quality/quality.md` measures these models).

Training time: base {r['base_train_seconds'] / 60:.1f} min, expert {r['expert_train_seconds'] / 60:.1f} min;
whole script {r['total_seconds'] / 60:.1f} min.

## Memorisation check

{mem['samples']} texts sampled from `[<|bos|>]` (temperature 1, top_k 10, up to {args.sample_tokens} new tokens):

| model | exact copies of a training joke | exact copies of any pyjokes joke | near copies (difflib ratio >= 0.8) | mean ratio to the closest joke |
|---|---|---|---|---|
| expert | {mem['exact_train_copies']} | {mem['exact_joke_copies']} | {mem['near_copies_ratio_ge_0.8']} | {mem['mean_closest_ratio']:.2f} |
| base (adapter disabled) | {mem_base['exact_train_copies']} | {mem_base['exact_joke_copies']} | {mem_base['near_copies_ratio_ge_0.8']} | {mem_base['mean_closest_ratio']:.2f} |

## Files

Total size {sizes['total'] / 1e6:.2f} MB: `base/` {sizes['base'] / 1e6:.2f} MB (config.json, model.safetensors,
generation_config.json, tokenizer files), `expert/` {sizes['expert'] / 1e6:.2f} MB (adapter_config.json,
adapter_model.safetensors, a copy of the tokenizer files). `adapter_config.json` names
`{ADAPTER_BASE_NAME}` as its base: a placeholder, the base is always loaded from `base/` first.
"""
    (out / "SOURCES.md").write_text(text)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (base/, expert/, SOURCES.md)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the .debs are downloaded and unpacked (reused if present); default: a temporary directory, removed at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--max-chars", type=int, default=400, help="drop longer fortunes")
    p.add_argument("--base-held-out", type=int, default=400, help="fortunes held out for the base's evaluation")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--tokenizer-corpus", choices=("general", "both"), default="general",
                   help="train the BPE on the fortunes only (a base model's tokenizer knows nothing of the domain) or on fortunes and jokes")
    p.add_argument("--max-len", type=int, default=256, help="max_position_embeddings (and longest example)")
    p.add_argument("--hidden-size", type=int, default=224)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate-size", type=int, default=512)
    p.add_argument("--base-epochs", type=int, default=5)
    p.add_argument("--base-max-steps", type=int, default=0, help="stop the base earlier (0: all epochs); for quick trials")
    p.add_argument("--pack-len", type=int, default=256, help="tokens per packed training sequence (<= --max-len)")
    p.add_argument("--base-batch-size", type=int, default=8, help="packed sequences per step")
    p.add_argument("--base-lr", type=float, default=3e-3)
    p.add_argument("--base-warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--jokes-held-out", type=float, default=0.1, help="share of the jokes held out")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--expert-steps", type=int, default=260)
    p.add_argument("--expert-batch-size", type=int, default=2, help="packed sequences per step")
    p.add_argument("--expert-lr", type=float, default=2e-3)
    p.add_argument("--expert-eval-every", type=int, default=20)
    p.add_argument("--in-context", type=int, default=5, help="texts packed before each held-out joke for the in-context check")
    p.add_argument("--samples", type=int, default=50, help="texts sampled for the memorisation check")
    p.add_argument("--sample-tokens", type=int, default=100, help="max new tokens per sampled text")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.pack_len > args.max_len:
        raise SystemExit(f"--pack-len {args.pack_len} exceeds --max-len {args.max_len}: the model could not attend that far")
    started = time.time()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    report: dict = {"command": " ".join(shlex.quote(a) for a in ["python", "scripts/train_demo_models.py", *(argv if argv is not None else sys.argv[1:])])}
    report["platform"] = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    report["versions"] = {p: metadata.version(p) for p in ("torch", "transformers", "peft", "tokenizers", "pyjokes")}

    temp = None
    workdir = args.workdir
    if workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="steer-demo-corpora-")
        workdir = Path(temp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        root, versions = download_fortunes(workdir)
        report["versions"].update(versions)
        changelog = subprocess.run(["zcat", str(root / "usr/share/doc/fortunes/changelog.gz")], capture_output=True, text=True).stdout
        match = re.search(r"fortune-mod[- ]?(\d[\w.]*)", changelog) or re.search(r"(\d+\.\d+\.\d+)", versions["fortunes"])
        report["upstream"] = match.group(1) if match else versions["fortunes"]
        jokes = read_jokes()
        fortunes, fortune_stats = read_fortunes(root, jokes, args.max_chars)
    finally:
        if temp is not None:
            temp.cleanup()
    report["fortune_stats"] = fortune_stats
    report["jokes"] = len(jokes)
    log(f"corpora: {fortune_stats['kept']} fortunes (of {fortune_stats['entries']}), {len(jokes)} jokes")

    out = args.out
    if out.exists():
        for sub in ("base", "expert"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer(fortunes + (jokes if args.tokenizer_corpus == "both" else []), args.vocab_size, out / "base")
    check_round_trip(tokenizer, fortunes + jokes)
    report["vocab_size"] = len(tokenizer)
    log(f"tokenizer: {len(tokenizer)} tokens, round trip ok")

    fortune_ids = encode_all(tokenizer, fortunes, args.max_len)
    joke_ids = encode_all(tokenizer, jokes, args.max_len)
    report["mean_tokens_fortune"] = sum(len(x) - 2 for x in fortune_ids) / len(fortune_ids)
    report["mean_tokens_joke"] = sum(len(x) - 2 for x in joke_ids) / len(joke_ids)

    rng = random.Random(args.seed)
    order = list(range(len(fortune_ids)))
    rng.shuffle(order)
    held_base = [fortune_ids[i] for i in order[: args.base_held_out]]
    train_base_ids = [fortune_ids[i] for i in order[args.base_held_out :]]
    report["base_held_out"] = len(held_base)

    order = list(range(len(jokes)))
    rng.shuffle(order)
    n_held = round(len(jokes) * args.jokes_held_out)
    held_jokes, train_jokes = sorted(order[:n_held]), sorted(order[n_held:])
    report["jokes_train"], report["jokes_held_out"] = len(train_jokes), len(held_jokes)

    base = train_base(args, tokenizer, train_base_ids, held_base, report)
    save_base(base, tokenizer, out / "base")
    base = load_base(out / "base")  # fp16-rounded weights, in fp32: what ships
    report["base_held_out_loss_fp16"] = mean_loss(base, held_base, tokenizer.pad_token_id)
    log(f"base stored in fp16: held-out loss {report['base_held_out_loss_fp16']:.3f}")

    expert = train_expert(args, base, tokenizer, [joke_ids[i] for i in train_jokes], [joke_ids[i] for i in held_jokes], report)
    save_expert(expert, tokenizer, out / "expert", out / "base")

    expert = load_expert(out)
    pad = tokenizer.pad_token_id
    report["expert_held_out_loss_reloaded"] = mean_loss(expert, [joke_ids[i] for i in held_jokes], pad)
    with expert.disable_adapter():
        report["base_joke_held_out_loss"] = mean_loss(expert, [joke_ids[i] for i in held_jokes], pad)
    # Tokens the base never saw (kept at their initial rows) other than "Chuck"-like joke tokens:
    # the mass both models give them on the jokes should stay small.
    unseen = [i for i in report["base_frozen_ids"] if i != pad and not any(i in joke_ids[j] for j in train_jokes)]
    report["unseen_tokens"] = [tokenizer.convert_ids_to_tokens(i) for i in unseen]
    report["unseen_mass_expert"] = token_mass(expert, joke_ids, unseen, pad)
    with expert.disable_adapter():
        report["unseen_mass_base"] = token_mass(expert, joke_ids, unseen, pad)
    log(f"mass on the {len(unseen)} tokens in no training text: expert {report['unseen_mass_expert']}, "
        f"base {report['unseen_mass_base']} (after bos, later)")
    held = [joke_ids[i] for i in held_jokes]
    train_joke_ids = [joke_ids[i] for i in train_jokes]
    report["in_context_n"] = args.in_context
    report["in_context_expert"] = in_context_loss(expert, held, train_joke_ids, args.in_context, args.seed)
    with expert.disable_adapter():
        report["in_context_base"] = in_context_loss(expert, held, train_joke_ids, args.in_context, args.seed)
    log(f"in context ({args.in_context} jokes before each held-out joke): expert {report['in_context_expert']}, "
        f"base {report['in_context_base']} (alone, in context)")
    log(f"reloaded expert: held-out joke loss {report['expert_held_out_loss_reloaded']:.3f} "
        f"(base: {report['base_joke_held_out_loss']:.3f})")

    expert_samples = sample(expert, tokenizer, args.samples, args.seed, args.sample_tokens)
    with expert.disable_adapter():
        base_samples = sample(expert, tokenizer, args.samples, args.seed, args.sample_tokens)
    train_texts = [jokes[i] for i in train_jokes]
    report["memorisation_expert"] = memorisation(expert_samples, train_texts, jokes)
    report["memorisation_base"] = memorisation(base_samples, train_texts, jokes)
    report["expert_samples"], report["base_samples"] = expert_samples, base_samples
    log(f"memorisation: expert {report['memorisation_expert']}, base {report['memorisation_base']}")

    report["sizes"] = {
        "base": dir_size(out / "base"),
        "expert": dir_size(out / "expert"),
        "base_weights": (out / "base" / "model.safetensors").stat().st_size,
        "adapter_weights": (out / "expert" / "adapter_model.safetensors").stat().st_size,
    }
    report["total_seconds"] = time.time() - started
    report["sizes"]["total"] = report["sizes"]["base"] + report["sizes"]["expert"]
    write_sources(out, args, report)
    report["sizes"]["total"] = dir_size(out)
    log_path = (args.workdir or Path(tempfile.gettempdir())) / "steer_demo_train_log.json"
    log_path.write_text(json.dumps(report, indent=1))
    log(f"done in {report['total_seconds'] / 60:.1f} min: {out} ({report['sizes']['total'] / 1e6:.2f} MB), log {log_path}")
    for name, texts in (("expert", expert_samples[:10]), ("base", base_samples[:10])):
        print(f"\n{name} samples:")
        for t in texts:
            print("  -", t)


if __name__ == "__main__":
    main()

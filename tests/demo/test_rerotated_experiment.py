"""benchmarks/quality/rerotated_negatives.py: the approximation it measures is the one it claims
(each example's chunk computed alone, its keys re-rotated to the chunk's offset, equals the
joined stream under its block mask), and the script runs end to end on the demo."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_llama

pytest.importorskip("peft")
pytest.importorskip("pyjokes")

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "quality"


@pytest.fixture(scope="module")
def experiment():
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("rerotated_negatives", SCRIPTS / "rerotated_negatives.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPTS))
    sys.modules.pop("run_quality", None)


def test_block_mask_lets_each_chunk_see_itself_and_the_tail_see_everything(experiment):
    allowed = experiment.block_mask([2, 3], 2)[0, 0] == 0
    want = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)  # fmt: skip
    assert torch.equal(allowed, want)


@torch.no_grad()
def test_the_block_mask_is_each_chunk_run_alone_with_its_keys_re_rotated(experiment):
    """The engine would cache a chunk's KV at positions 0.. and rotate its keys by the chunk's
    offset; the experiment computes the joined stream under the block mask. They agree: the
    tail's logits after two chunks computed alone (keys re-rotated) match the masked forward."""
    from transformers import DynamicCache

    model = tiny_llama(seed=3).eval()
    chunks, tail = [[1, 5, 6, 7, 2], [1, 9, 10, 2]], [1, 11, 12]
    joined = [t for chunk in chunks for t in chunk] + tail
    masked = model(input_ids=torch.tensor([joined]), attention_mask=experiment.block_mask([5, 4], 3, torch.float64)).logits[0, -3:]

    rotary = model.model.rotary_emb
    keys, values, offset = None, None, 0
    for chunk in chunks:
        cache = DynamicCache()
        model(input_ids=torch.tensor([chunk]), past_key_values=cache, use_cache=True)  # positions 0..len-1
        layer_keys, layer_values = [], []
        for layer in cache.layers:
            k = layer.keys  # [1, Hkv, L, D], rotated at 0..L-1
            cos, sin = rotary(k, torch.full((1, k.shape[2]), offset))  # R(o): R(p + o) = R(o) R(p)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            half = k.shape[-1] // 2
            rotated = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
            layer_keys.append(k * cos + rotated * sin)
            layer_values.append(layer.values)
        keys = layer_keys if keys is None else [torch.cat(p, dim=2) for p in zip(keys, layer_keys)]
        values = layer_values if values is None else [torch.cat(p, dim=2) for p in zip(values, layer_values)]
        offset += len(chunk)
    assembled = DynamicCache()
    for index, (k, v) in enumerate(zip(keys, values)):
        assembled.update(k, v, index)
    # the tail's positions follow the cache's length (offset); transformers 5.25 builds a wrong mask
    # from position_ids given without an attention mask or cache positions, so none are given
    assert assembled.get_seq_length() == offset
    got = model(input_ids=torch.tensor([tail]), past_key_values=assembled, use_cache=True).logits[0]
    torch.testing.assert_close(got, masked, atol=1e-4, rtol=1e-4)
    full = model(input_ids=torch.tensor([joined])).logits[0, -3:]
    assert (full - masked).abs().max() > 1e-3  # the mask does change something: no cross-example attention


def test_the_experiment_runs_on_the_demo(experiment, tmp_path):
    out = tmp_path / "results"
    assert experiment.main(["--draws", "2", "--generate", "10", "--seeds", "0", "--max-new-tokens", "8",
                            "--embedder", "tfidf", "--out", str(out)]) == 0  # fmt: skip
    result = json.loads((out / "rerotated.json").read_text())[0]
    assert result["domain"] == "pyjokes" and result["draws"] == 2
    kl = result["summary"]["negative_kl"]
    assert 0 <= kl["re-rotated chunks"]["mean"] < kl["no negative context"]["mean"]
    assert {len(runs) for runs in result["generated"].values()} == {1}
    table = (out / "rerotated.md").read_text()
    assert "| re-rotated chunks |" in table and "| normalised_3grams |" in table


@pytest.mark.parametrize("argv, message", [
    (["--draws", "0"], "must be at least 1"),
    (["--negatives", "0"], "must be at least 1"),
    (["--generate", "5"], "at least 10 samples"),
])  # fmt: skip
def test_bad_settings_are_refused_with_one_line(experiment, tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        experiment.main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_draw_larger_than_the_pool_is_refused(experiment, tmp_path):
    with pytest.raises(SystemExit, match="needs 284"):
        experiment.main(["--negatives", "283", "--draws", "1", "--generate", "0", "--out", str(tmp_path)])

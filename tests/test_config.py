import math

import pytest
import torch

from steer import SteerConfig, steer_weights


def test_defaults_are_the_papers():
    config = SteerConfig()
    assert (config.gamma, config.eta, config.num_negatives, config.top_k) == (0.2, 0.2, 5, 10)
    assert config.negative_mode == "concat" and config.num_negative_streams == 1
    torch.testing.assert_close(config.weights(), torch.tensor([1.2, -0.2, -0.2]))


def test_separate_mode_splits_eta_over_streams():
    config = SteerConfig(eta=0.6, num_negatives=3, negative_mode="separate")
    torch.testing.assert_close(config.weights(), torch.tensor([1.2, -0.2, -0.2, -0.2, -0.2]))


def test_weights_sum_to_one_minus_eta_and_rescale_undoes_it():
    assert float(steer_weights(0.4, 0.3, 4).sum()) == pytest.approx(0.7)
    assert float(steer_weights(0.4, 0.3, 4, rescale=True).sum()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gamma": -0.1}, "gamma"),
        ({"eta": math.nan}, "eta"),
        ({"eta": 1.0, "rescale": True}, "eta must be < 1"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": 1e-6}, "use 0 for greedy decoding"),
        ({"temperature": 2e4}, "temperature must be <= 10000"),
        ({"gamma": 1e5}, "gamma must be <= 10000"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"negative_mode": "mean"}, "negative_mode"),
        ({"plausibility_alpha": 1.0}, "plausibility_alpha"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SteerConfig(**kwargs)


def test_no_negatives_is_fine_without_eta():
    assert SteerConfig(eta=0.0, num_negatives=0).weights().tolist() == pytest.approx([1.2, -0.2])


def test_steer_weights_rejects_eta_without_streams():
    with pytest.raises(ValueError, match="negative stream"):
        steer_weights(0.2, 0.2, 0)


def test_eta_above_one_is_refused_with_the_reason_everywhere():
    from tiny_models import tiny_llama

    from steer.hf.processor import SteerLogitsProcessor

    with pytest.raises(ValueError, match="eta must be <= 1.*inverts the expert's distribution"):
        SteerConfig(eta=2.0)
    with pytest.raises(ValueError, match="eta must be <= 1"):
        steer_weights(0.2, 1.5, 1)
    model = tiny_llama()
    with pytest.raises(ValueError, match="eta must be <= 1"):
        SteerLogitsProcessor(model, model, [1, 2, 3], eta=1.01)


def test_eta_one_is_a_pure_contrast_allowed_with_one_warning():
    with pytest.warns(UserWarning, match="eta = 1: the stream weights sum to 0") as caught:
        config = SteerConfig(eta=1.0)
    assert len(caught) == 1
    assert float(config.weights().sum()) == pytest.approx(0.0)


def test_the_cli_refuses_eta_above_one_and_warns_at_one_in_a_line(tmp_path, capsys):
    from steer.cli import main

    out = tmp_path / "out.jsonl"
    assert main(["generate", "--eta", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("steer generate: error: --eta: eta must be <= 1")
    assert not out.exists()

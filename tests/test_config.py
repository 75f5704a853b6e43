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

"""The app in this process (FastAPI's TestClient, no socket): what needs a model ``steer serve``'s
CLI would not start with."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


def test_per_example_kv_on_a_model_without_rotary_positions_is_a_400_naming_it():
    from fastapi.testclient import TestClient
    from model_dirs import character_tokenizer
    from tiny_models import tiny_gpt2

    from steer import SteerConfig
    from steer.engine.engine import SteerEngine
    from steer.serving.app import ServeSettings, create_app

    tokenizer = character_tokenizer()
    models = [tiny_gpt2(seed=s, vocab_size=len(tokenizer)) for s in (1, 2)]
    config = SteerConfig(max_new_tokens=4)
    app = create_app(SteerEngine(*models, config=config), tokenizer, ["a joke", "another one"],
                     ServeSettings(model_name="tiny", config=config))  # fmt: skip
    try:
        with TestClient(app) as client:
            body = {"prompt": "", "max_tokens": 4, "eta": 0.5, "per_example_kv": True}
            response = client.post("/v1/completions", json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "per_example_kv" and "GPT-2's positions are learned" in error["message"], error
            assert client.post("/v1/completions", json={**body, "per_example_kv": False}).status_code == 200
    finally:
        app.state.steer.loop.stop()

"""The request-level API: add_request, step, abort_request, has_unfinished_requests, and
per-request STEER and sampling parameters in one batch."""

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import EOS, expert_and_base

from steer import SteerConfig
from steer.engine.engine import SteerEngine
from steer.engine.sequence import Request
from steer.hf.uncached import steer_generate_uncached

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 12, 13, 14], [40]]
NEGATIVES = [[[20, 21, 22, 23]], [[30, 31], [40, 41, 42, 43], [44]], [[50]], [[60, 61], [62]]]
NEW = 8


@pytest.fixture(scope="module")
def models():
    return expert_and_base("llama")


@pytest.fixture(scope="module")
def models32():
    expert, base = expert_and_base("llama")
    return expert.float(), base.float()


def engine_of(models, **options):
    config = options.pop("config", SteerConfig(temperature=0.0, max_new_tokens=NEW))
    return SteerEngine(*models, config=config, block_size=4, kv_cache_memory=options.pop("kv_cache_memory", 2**20), **options)


def requests(**overrides):
    return [Request(p, n, NEW, eos_token_id=EOS, **overrides) for p, n in zip(PROMPTS, NEGATIVES)]


def all_free(engine):
    return engine.blocks.num_free_blocks == engine.blocks.num_blocks


def drain(engine):
    """Step to the end; {request id: (token ids, finish reason)} and the per-step outputs."""
    done, steps = {}, []
    while engine.has_unfinished_requests():
        outputs = engine.step()
        steps.append(outputs)
        for output in outputs:
            if output.finished:
                assert output.request_id not in done, "a request finished twice"
                done[output.request_id] = (output.token_ids, output.finish_reason)
    return done, steps


def test_step_outputs_add_up_to_generate(models):
    engine = engine_of(models)
    want = engine.generate(requests())
    ids = [engine.add_request(r, request_id=f"r{i}") for i, r in enumerate(requests())]
    assert ids == ["r0", "r1", "r2", "r3"] and engine.num_unfinished_requests() == 4
    done, steps = drain(engine)
    assert [done[i] for i in ids] == [(w.token_ids, w.finish_reason) for w in want]
    for request_id in ids:  # every step adds one token; token_ids is everything so far
        seen = []
        for outputs in steps:
            for output in outputs:
                if output.request_id == request_id:
                    assert len(output.new_token_ids) == 1
                    seen += output.new_token_ids
                    assert output.token_ids == seen
                    assert output.finish_reason is None or output.finished
    assert all_free(engine) and engine.step() == []


def test_a_request_joins_a_running_batch_and_gets_the_tokens_it_gets_alone(models):
    engine = engine_of(models)
    alone = engine.generate([requests()[2]])[0]
    engine.add_request(requests()[0])
    engine.step()
    engine.step()
    late = engine.add_request(requests()[2])
    done, _ = drain(engine)
    assert done[late] == (alone.token_ids, alone.finish_reason)
    assert all_free(engine)


def test_abort_frees_the_blocks_at_once_and_the_others_go_on(models):
    engine = engine_of(models)
    want = engine.generate(requests())
    ids = [engine.add_request(r) for r in requests()]
    engine.step()
    used = engine.blocks.num_used_blocks
    assert engine.abort_request(ids[1]) is True
    assert engine.blocks.num_used_blocks < used
    assert engine.abort_request(ids[1]) is False and engine.abort_request("never") is False
    done, _ = drain(engine)
    assert set(done) == {ids[0], ids[2], ids[3]}
    assert [done[i][0] for i in (ids[0], ids[2], ids[3])] == [want[i].token_ids for i in (0, 2, 3)]
    assert all_free(engine)


def test_request_ids_are_checked(models):
    engine = engine_of(models)
    engine.add_request(requests()[0], request_id="same")
    with pytest.raises(ValueError, match="'same' is already in use"):
        engine.add_request(requests()[1], request_id="same")
    with pytest.raises(RuntimeError, match="generate\\(\\) drives the engine's steps itself"):
        engine.generate(requests())
    engine.abort_request("same")
    assert all_free(engine) and len(engine.generate(requests())) == 4


def test_a_bad_request_is_refused_before_it_takes_a_block(models):
    engine = engine_of(models)
    with pytest.raises(ValueError, match="prompt_ids\\[1\\] = 500 is not a token id"):
        engine.add_request(Request([5, 500], [[20]], 4))
    with pytest.raises(ValueError, match="negative_ids is empty, but eta = 0.5"):
        engine.add_request(Request([5, 6], [], 4, eta=0.5))
    assert not engine.has_unfinished_requests() and all_free(engine)


@pytest.mark.parametrize("gamma, eta", [(0.0, 0.0), (0.9, 0.3), (0.3, 0.0), (0.0, 0.7)])
def test_per_request_gamma_and_eta_are_the_formula_in_a_mixed_batch(models, gamma, eta):
    """One batch of requests with the engine's defaults and requests with their own gamma / eta:
    each greedy output is the uncached formula with its own coefficients."""
    expert, base = models
    engine = engine_of(models, config=SteerConfig(gamma=0.5, eta=0.5, temperature=0.0, max_new_tokens=NEW))
    batch = [Request(p, n, NEW, eos_token_id=EOS, **({"gamma": gamma, "eta": eta} if i % 2 else {})) for i, (p, n) in enumerate(zip(PROMPTS, NEGATIVES))]
    results = engine.generate(batch)
    for row, result in enumerate(results):
        g, e = (gamma, eta) if row % 2 else (0.5, 0.5)
        negatives = [torch.tensor(n) for n in NEGATIVES[row]]
        want = steer_generate_uncached(expert, base, torch.tensor(PROMPTS[row]), negatives, gamma=g, eta=e, max_new_tokens=NEW, eos_token_id=EOS)
        assert result.token_ids == want.tolist(), f"row {row} (gamma {g}, eta {e})"


def test_per_request_sampling_parameters_share_a_batch(models):
    """Requests with their own seed and sampler give the same tokens in a mixed batch as alone."""
    engine = engine_of(models, config=SteerConfig(top_k=5, seed=3, max_new_tokens=NEW))
    mixed = [
        Request(PROMPTS[0], NEGATIVES[0], NEW, seed=11, temperature=0.7),
        Request(PROMPTS[1], NEGATIVES[1], NEW, seed=12, top_k=0, top_p=0.8),
        Request(PROMPTS[2], NEGATIVES[2], NEW, seed=13, temperature=0.0),
        Request(PROMPTS[3], NEGATIVES[3], NEW, seed=14, gamma=0.0, eta=0.0),
    ]
    together = engine.generate(mixed)
    for request, result in zip(mixed, together):
        assert engine.generate([request]) == [result]
    greedy = engine_of(models, config=SteerConfig(temperature=0.0, max_new_tokens=NEW)).generate([Request(PROMPTS[2], NEGATIVES[2], NEW)])
    assert together[2].token_ids == greedy[0].token_ids


def test_gamma_without_a_base_model_is_refused_per_request(models):
    expert, _ = models
    engine = SteerEngine(expert, config=SteerConfig(gamma=0.0, eta=0.5, temperature=0.0), block_size=4)
    with pytest.raises(ValueError, match="gamma = 0.4 needs a base model"):
        engine.add_request(Request(PROMPTS[0], NEGATIVES[0], 4, gamma=0.4))
    engine.add_request(Request(PROMPTS[0], NEGATIVES[0], 4))
    done, _ = drain(engine)
    assert len(done) == 1


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3), st.integers(1, 5), st.sampled_from([None, 0.0, 0.6])),
        st.tuples(st.just("abort"), st.integers(0, 20)),
        st.tuples(st.just("step"), st.integers(1, 3)),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(operations=OPERATIONS)
def test_any_sequence_of_add_abort_and_step_gives_every_block_back(models32, operations):
    engine = engine_of(models32, config=SteerConfig(seed=5, max_new_tokens=5), kv_cache_memory=2**16, max_batch_rows=8)
    added, finished, aborted = [], set(), set()
    for operation in operations:
        if operation[0] == "add":
            _, which, new, eta = operation
            added.append(engine.add_request(Request(PROMPTS[which], NEGATIVES[which], new, eta=eta)))
        elif operation[0] == "abort" and added:
            request_id = added[operation[1] % len(added)]
            if engine.abort_request(request_id):
                aborted.add(request_id)
        else:
            for _ in range(operation[1]):
                finished |= {o.request_id for o in engine.step() if o.finished}
    done, _ = drain(engine)
    finished |= set(done)
    assert finished | aborted == set(added) and not finished & aborted
    assert all_free(engine)
    assert len(engine.generate([Request(PROMPTS[0], NEGATIVES[0], 3)])) == 1


@pytest.mark.parametrize("error", [RuntimeError("forward failed"), KeyboardInterrupt()], ids=["RuntimeError", "KeyboardInterrupt"])
def test_an_error_inside_a_step_drops_every_request_and_frees_its_blocks(models, monkeypatch, error):
    engine = engine_of(models)
    fresh = engine_of(models).generate(requests())
    ids = [engine.add_request(r) for r in requests()]
    engine.step()
    runner = engine.passes[1][0]
    original = runner.last_hidden
    monkeypatch.setattr(runner, "last_hidden", lambda *a, **k: (_ for _ in ()).throw(error))
    with pytest.raises(type(error)):
        engine.step()
    monkeypatch.setattr(runner, "last_hidden", original)
    assert not engine.has_unfinished_requests() and all_free(engine)
    assert all(engine.abort_request(i) is False for i in ids)
    assert engine.generate(requests()) == fresh


def poison(engine, bad: dict, monkeypatch):
    """Make the forward's logits NaN in the rows of the requests ``bad`` names, from the step at
    which each has generated ``bad[request_id]`` tokens on: their model's numbers gone wrong."""
    original = engine.runner.run

    def run(plan):
        logits = original(plan)
        for row, group in enumerate(plan.groups):
            if len(group.generated) >= bad.get(group.request_id, NEW + 1):
                logits[row, 1, 7] = float("nan")
        return logits

    monkeypatch.setattr(engine.runner, "run", run)


@pytest.mark.parametrize("mixed_samplers", [False, True], ids=["one sampler", "two samplers"])
def test_a_request_whose_logits_are_nan_fails_alone_and_the_others_get_their_tokens(models, monkeypatch, mixed_samplers):
    """A row the sampler refuses (NaN) fails its request alone, finish_reason "error" with the
    sampler's message; the others draw the tokens they draw without it (their noise is keyed by
    their seed, not their place in the batch), and every block comes back, none of the failed
    request's left to the prefix cache."""
    engine = engine_of(models, config=SteerConfig(top_k=5, max_new_tokens=NEW))
    batch = [dataclasses.replace(r, seed=20 + i, temperature=0.8 if mixed_samplers and i % 2 else None) for i, r in enumerate(requests())]
    alone = {i: engine.generate([r])[0] for i, r in enumerate(batch) if i not in (1, 2)}
    poison(engine, {"r1": 2, "r2": 0}, monkeypatch)  # r2 on its prefill step, r1 two tokens in, in other steps
    ids = [engine.add_request(r, request_id=f"r{i}") for i, r in enumerate(batch)]
    done, steps = drain(engine)
    failed = [o for outputs in steps for o in outputs if o.finish_reason == "error"]
    assert sorted(o.request_id for o in failed) == ["r1", "r2"]
    for output in failed:
        assert output.finished and "logits contain NaN" in output.error and "stream 1" in output.error
    assert len(done["r1"][0]) == 2 and done["r2"][0] == []  # the tokens drawn before it went wrong
    assert {i: done[ids[i]] for i in alone} == {i: (r.token_ids, r.finish_reason) for i, r in alone.items()}
    assert all_free(engine) and not engine.has_unfinished_requests()
    for namespace in ("expert", "base"):  # r2's prompt has two full blocks, which only r2 held
        assert engine.blocks.cached_prefix_tokens(namespace, batch[2].prompt_ids) == 0


def test_generate_raises_naming_the_request_whose_logits_are_nan(models, monkeypatch):
    engine = engine_of(models)
    want = engine.generate(requests())
    poison(engine, {("generate", 2): 3}, monkeypatch)
    with pytest.raises(ValueError, match=r"^requests\[2\]: logits contain NaN"):
        engine.generate(requests())
    assert all_free(engine) and not engine.has_unfinished_requests()
    monkeypatch.undo()
    assert engine.generate(requests()) == want


def test_a_step_builds_no_autograd_graph_for_models_whose_weights_require_grad(models32):
    """Weights fresh from from_pretrained require grad; the LM heads must still run without
    autograd (and so through the decode matmul on the CPU), as the decoder does."""
    expert, base = models32
    assert all(p.requires_grad for p in expert.parameters())
    engine = engine_of(models32)
    engine.add_request(requests()[0])
    plan = engine.scheduler.schedule()
    logits = engine.runner.run(plan)
    assert not logits.requires_grad and logits.grad_fn is None
    engine.scheduler.release_all(computed=False)


def test_a_bad_request_id_or_request_object_is_one_clear_error(models):
    engine = engine_of(models)
    with pytest.raises(ValueError, match="request_id must be hashable \\(a str or an int, say\\), got list"):
        engine.add_request(requests()[0], request_id=["not", "hashable"])
    with pytest.raises(ValueError, match="request_id must be hashable"):
        engine.abort_request({"not": "hashable"})
    with pytest.raises(ValueError, match="^request must be a steer.Request, got dict"):
        engine.add_request({"prompt_ids": [5]})
    assert not engine.has_unfinished_requests() and all_free(engine)


@pytest.mark.parametrize("graphs", ["off", "static"])
def test_step_stats_count_every_step_by_kind(graphs):
    expert, base = expert_and_base("llama")
    engine = SteerEngine(expert, base, config=SteerConfig(temperature=0.0, max_new_tokens=6), block_size=4,
                         decode_graphs=graphs, max_batch_rows=12)  # fmt: skip
    for index, prompt in enumerate(([5, 6, 7], [8, 9], [10, 11, 12, 13])):
        engine.add_request(Request(prompt, [[20, 21, 22]], 6), request_id=index)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    stats = engine.step_stats.as_dict()
    decode = "graph" if graphs == "static" else "decode"
    assert set(stats) == {"prefill", decode} and sum(s["steps"] for s in stats.values()) == steps
    assert stats["prefill"]["steps"] == 1 and stats["prefill"]["rows"] == 9  # 3 requests x (prompt, negative, base)
    assert stats["prefill"]["tokens"] == 2 * (3 + 2 + 4) + 3 * 3  # the prompts twice (expert, base), the negatives
    assert stats[decode]["steps"] == 5 and stats[decode]["tokens"] == stats[decode]["rows"] == 5 * 9
    assert all(s["seconds"] > 0 and s["ms_per_step"] == pytest.approx(1000 * s["seconds"] / s["steps"]) for s in stats.values())

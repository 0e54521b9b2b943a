"""STRIDE's second operator bank (`second_layer`): its scores are the mix of the first bank's and those of
a residual-form run at the second place on designs of its own; its stages live apart; a rerun with
another weight reuses them; torchrun's phases give the single-process scores."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import stride.method.attributor as stride_attributor
from stride.api import attribute
from stride.config import StrideConfig
from stride.data import load_data
from stride.distributed import Shard
from stride.errors import StrideError
from stride.method.hybrid import mix
from stride.models import decoder_blocks, default_layer, load_causal_lm
from stride.store import RunStore
from stride.tasks import CausalLMTask

SMALL = dict(n_subsets=48, subsets_per_example=6, rank=8, epochs=2, batch_size=16, learning_rate=3e-2, designs=2,
             cv_queries=4)  # fmt: skip


def _run(model_dir, corpus, out, seed=0, **config):
    return attribute(model_dir, corpus["train"], corpus["queries"], out, config=StrideConfig(**{**SMALL, **config}),
                     seed=seed, progress=False)  # fmt: skip


def _se(folder):
    return load_file(str(folder / "scores.safetensors"))["scores_se"].double()


def test_second_bank_scores_are_the_mix_of_both_banks(gpt2_dir, corpus, tmp_path):
    first = _run(gpt2_dir, corpus, tmp_path / "first")
    second_seed = stride_attributor.DESIGN_SEED_STRIDE * SMALL["designs"]  # its designs continue the first's seeds
    second = _run(gpt2_dir, corpus, tmp_path / "second", seed=second_seed, form="residual", layer=0)
    both = _run(gpt2_dir, corpus, tmp_path / "both", second_layer=0, second_weight=0.3)
    a, b = first.scores.double().numpy(), second.scores.double().numpy()
    assert np.allclose(both.scores.double().numpy(), mix(a, b, 0.3), rtol=1e-5, atol=1e-6)
    # standard errors: the first bank's carried at 0.7, the second's at 0.3 on the first bank's scale
    scale = torch.as_tensor(a.std(axis=1, keepdims=True) / b.std(axis=1, keepdims=True))
    carried = 0.3 * _se(tmp_path / "second") * scale
    expected = ((0.7 * _se(tmp_path / "first")) ** 2 + carried**2).sqrt()
    assert torch.allclose(_se(tmp_path / "both"), expected, rtol=1e-4, atol=1e-9)
    info = json.loads((tmp_path / "both" / "info.json").read_text())
    assert info["settings"]["second_layer"] == 0 and "second_operators_design1" in info["stages"]
    assert (tmp_path / "both" / "stages" / "second_bank" / "stages" / "operators_design1.json").is_file()
    # another weight reuses every stage of both banks
    _run(gpt2_dir, corpus, tmp_path / "both", second_layer=0, second_weight=0.6)
    stages = json.loads((tmp_path / "both" / "info.json").read_text())["stages"]
    assert all(stage["reused"] for name, stage in stages.items() if not name.endswith("hybrid"))
    # new queries reuse both banks' training side
    attribute(gpt2_dir, corpus["train"], corpus["train"], tmp_path / "new_queries", reuse_from=tmp_path / "both",
              config=StrideConfig(**SMALL, second_layer=0), seed=0, progress=False)  # fmt: skip
    stages = json.loads((tmp_path / "new_queries" / "info.json").read_text())["stages"]
    assert stages["second_operators_design1"]["reused"] and stages["operators"]["reused"]
    assert not stages["second_responses"]["reused"]


def test_auto_second_place_is_the_last_block(gpt2_dir, corpus, tmp_path):
    """`second_layer: auto` steers the last decoder block: the same stages and scores as naming that block."""
    auto = _run(gpt2_dir, corpus, tmp_path / "run", second_layer="auto", second_weight=0.3)
    block = len(decoder_blocks(load_causal_lm(gpt2_dir)[0])) - 1
    stage = tmp_path / "run" / "stages" / "second_bank" / "stages" / "operators.json"
    assert json.loads(stage.read_text())["arguments"]["layer"] == block
    named = _run(gpt2_dir, corpus, tmp_path / "run", second_layer=block, second_weight=0.3)
    stages = json.loads((tmp_path / "run" / "info.json").read_text())["stages"]
    assert all(stage["reused"] for name, stage in stages.items() if not name.endswith("hybrid"))
    assert torch.equal(auto.scores, named.scores)


def test_auto_second_place_is_the_last_block_where_it_is_not_the_default_one(gpt2_four_blocks):
    """On a 4-block model the default block (about 0.6 of the depth) is block 2; auto takes block 3."""
    assert default_layer(4) == 2 and CausalLMTask().second_place(gpt2_four_blocks) == 3


@pytest.mark.parametrize("config, message", [
    ({"second_layer": 0, "second_weight": 1.5}, "second_weight must be in"),
    ({"second_layer": 99}, "second_layer 99: "),
])  # fmt: skip
def test_bad_second_bank_is_refused(gpt2_dir, corpus, tmp_path, config, message):
    with pytest.raises(StrideError, match=message):
        _run(gpt2_dir, corpus, tmp_path / "run", **config)
    assert not (tmp_path / "run" / "run.json").exists()


def test_sharded_phases_train_and_measure_the_second_bank_too(gpt2_dir, corpus, tmp_path):
    """Two ranks' phases, run one after the other in this process (a barrier between phases), leave
    every stage of both banks behind: the single-process path then reuses all of them."""
    model, tokenizer = load_causal_lm(gpt2_dir)
    train, queries = (load_data(corpus[name], tokenizer, 64) for name in ("train", "queries"))
    config = StrideConfig(**SMALL, second_layer=0)

    def attributor(folder):
        return stride_attributor.create(
            stride_attributor.MethodContext(model, None, 0, RunStore(folder), "", False, config)
        )

    sharded = [attributor(tmp_path / "sharded").shard_phases(train, queries, Shard(rank, 2, rank)) for rank in (0, 1)]
    for phase in range(len(sharded[0])):
        for rank in (0, 1):
            sharded[rank][phase]()
    after = attributor(tmp_path / "sharded")
    after.prepare(train)
    scores = after.score(queries)
    assert after.stage_info["second_operators"]["reused"] and after.stage_info["second_operators_design1"]["reused"]
    fresh = attributor(tmp_path / "fresh")
    fresh.prepare(train)
    assert torch.equal(scores, fresh.score(queries))


def test_top_k_with_a_second_bank_equals_the_dense_scores(gpt2_dir, corpus, tmp_path, monkeypatch):
    """Both banks' scores are made two queries at a time for --top-k, and rank as the dense ones do."""
    dense = _run(gpt2_dir, corpus, tmp_path / "run", second_layer=0)
    monkeypatch.setattr("stride.core.topk.CHUNK_ENTRIES", 2 * dense.scores.shape[1])
    top = attribute(gpt2_dir, corpus["train"], corpus["queries"], tmp_path / "run", seed=0, progress=False,
                    config=StrideConfig(**SMALL, second_layer=0), top_k=3)  # fmt: skip
    order = torch.argsort(dense.scores, dim=1, descending=True, stable=True)
    assert torch.equal(top.top.top_indices, order[:, :3])
    assert torch.allclose(top.top.top_scores, dense.scores.gather(1, order[:, :3]), rtol=1e-5, atol=1e-7)

"""`stride train-lm`: pre-training from scratch and fine-tuning, with a recorded recipe."""

import json

import pytest
import torch

from stride.cli import main
from stride.data import load_data
from stride.lm_training import LMRecipe, example_losses, train_lm
from stride.models import load_causal_lm

RECIPE = {"architecture": "llama", "n_layers": 1, "hidden_size": 32, "n_heads": 2, "vocab_size": 300,
          "context": 48, "epochs": 2, "learning_rate": 1e-2, "batch_size": 16}  # fmt: skip


def test_pretrain_then_finetune_lower_the_training_loss(corpus, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))
    scratch, tuned = tmp_path / "scratch", tmp_path / "tuned"
    assert main(["train-lm", "--train", str(corpus["train"]), "--out", str(scratch), "--recipe", str(recipe),
                 "--seed", "3", "--quiet"]) == 0  # fmt: skip
    record = json.loads((scratch / "recipe.json").read_text())
    assert record["recipe"]["seed"] == 3 and record["recipe"]["architecture"] == "llama"
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]
    assert main(["train-lm", "--train", str(corpus["train"]), "--out", str(tuned), "--base", str(scratch),
                 "--recipe", str(recipe), "--quiet"]) == 0  # fmt: skip
    model, tokenizer = load_causal_lm(scratch)
    tuned_model, _ = load_causal_lm(tuned)
    data = load_data(corpus["train"], tokenizer, 48)
    assert example_losses(tuned_model, data).mean() < example_losses(model, data).mean()
    assert json.loads((tuned / "recipe.json").read_text())["base"] == str(scratch)


def test_same_recipe_and_seed_give_the_same_weights(corpus, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({**RECIPE, "epochs": 1}))
    for name in ("a", "b"):
        assert main(["train-lm", "--train", str(corpus["train"]), "--out", str(tmp_path / name),
                     "--recipe", str(recipe), "--quiet"]) == 0  # fmt: skip
    a, _ = load_causal_lm(tmp_path / "a")
    b, _ = load_causal_lm(tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_an_ensemble_from_train_lm_feeds_trak_from_the_command_line(corpus, tmp_path):
    from safetensors.torch import load_file

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({**RECIPE, "architecture": "gpt2"}))
    model = tmp_path / "model"
    assert main(["train-lm", "--train", str(corpus["train"]), "--out", str(model), "--recipe", str(recipe),
                 "--ensemble", "2", "--quiet"]) == 0  # fmt: skip
    member = model / "ensemble" / "seed_1"
    assert json.loads((member / "recipe.json").read_text())["recipe"]["seed"] == 1
    config = tmp_path / "trak.json"
    config.write_text(json.dumps({"proj_dim": 64}))
    common = ["attribute", "--model", str(model), "--train", str(corpus["train"]), "--queries", str(corpus["queries"]),
              "--method", "trak", "--config", str(config), "--quiet"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--checkpoints", str(member)]) == 0
    info = json.loads((tmp_path / "two" / "info.json").read_text())
    assert info["settings"]["checkpoints"] == [str(member)]
    one, two = (load_file(str(tmp_path / name / "scores.safetensors"))["scores"] for name in ("one", "two"))
    assert not torch.allclose(one, two)


@pytest.mark.parametrize("architecture", ["qwen2", "gpt_neox"])
def test_other_architectures_train_save_and_load(corpus, tmp_path, architecture):
    recipe = LMRecipe.from_dict({**RECIPE, "architecture": architecture})
    folder = train_lm(corpus["train"], tmp_path / architecture, recipe, progress=False)
    model, tokenizer = load_causal_lm(folder)
    assert model.config.model_type == architecture
    record = json.loads((folder / "recipe.json").read_text())
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]
    data = load_data(corpus["train"], tokenizer, 48)
    assert example_losses(model, data).mean() == pytest.approx(record["epoch_losses"][-1], rel=0.3)

"""bench/scale.py's part size: shapes, STRIDE's memory rules, measured commands and the resumable record."""

import argparse
import sys

import pytest
from bench.measuring import measure
from bench.scale_size import Shape, _previous, size_table, stride_rules

RULES = argparse.Namespace(size_logit_bank_gib=2.0, size_step_logits_gib=1.0)


def test_shapes_follow_gpt2_and_qwen2_0_5b():
    assert Shape.parse("gpt2:12x768:50257").sizes(64)["n_head"] == 12
    qwen = Shape.parse("qwen2:4x896:151936").sizes(64)
    assert (qwen["num_attention_heads"], qwen["num_key_value_heads"], qwen["intermediate_size"]) == (14, 2, 4864)
    assert Shape.parse("qwen2:2x64:1024").sizes(32)["num_key_value_heads"] == 1
    for bad in ("gpt2:12x768", "llama:2x64:1024", "gpt2:axb:1024"):
        with pytest.raises(argparse.ArgumentTypeError):
            Shape.parse(bad)


def test_the_logit_form_is_kept_while_its_bank_fits_and_the_batch_shrinks_with_the_vocabulary():
    small = stride_rules(Shape.parse("gpt2:2x64:1024"), 64, RULES)
    assert small["settings"] == {} and small["logit_bank_gib"] < 0.2
    gpt2 = stride_rules(Shape.parse("gpt2:12x768:50257"), 64, RULES)  # 9 GiB of operators with Adam
    assert gpt2["settings"]["form"] == "hashed_logit" and gpt2["settings"]["training_expansion"] == "second_order"
    assert "batch_size" not in gpt2["settings"]  # second-order training holds no steered logits
    qwen = stride_rules(Shape.parse("qwen2:4x896:151936"), 64, RULES)
    assert qwen["logit_bank_gib"] > 27 and qwen["settings"]["form"] == "hashed_logit"
    roomy = argparse.Namespace(size_logit_bank_gib=100.0, size_step_logits_gib=1.0)
    assert stride_rules(Shape.parse("gpt2:12x768:50257"), 64, roomy)["settings"] == {"batch_size": 4}


def test_a_measured_command_that_fails_or_runs_too_long_is_recorded_with_its_reason():
    ok = measure([sys.executable, "-c", "print('done')"])
    assert ok["status"] == "ok" and ok["stdout"] == "done" and ok["peak_rss_gib"] > 0
    failed = measure([sys.executable, "-c", "import sys; print('stride: warning: odd', file=sys.stderr); sys.exit(3)"])
    assert (
        failed["status"] == "failed" and failed["reason"].startswith("exit status 3") and failed["warnings"] == ["odd"]
    )
    slow = measure([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert slow["status"] == "timed out" and slow["wall_seconds"] < 30 and slow["peak_rss_gib"] is None


def test_a_rerun_keeps_the_record_of_its_configuration_and_refuses_another(tmp_path):
    path = tmp_path / "size.json"
    assert _previous(path, {"size_n": 64})["measurements"] == {}
    path.write_text('{"configuration": {"size_n": 64}, "shapes": {}, "measurements": {"s": {}}}')
    assert _previous(path, {"size_n": 64})["measurements"] == {"s": {}}
    with pytest.raises(SystemExit, match="size_n"):
        _previous(path, {"size_n": 128})


def test_the_table_gives_multiples_of_the_forward_pass_and_the_reason_of_a_failure():
    shape = {"parameters": 124e6, "stride": {"settings": {"form": "hashed_logit"}}, "baselines_track_head": False}
    done = {
        "forward": {"status": "ok", "seconds": 10.0, "wall_seconds": 15.0, "peak_rss_gib": 1.0},
        "stride_one_design": {"status": "ok", "seconds": 30.0, "forward_multiple": 3.0, "wall_seconds": 35.0,
                              "peak_rss_gib": 2.0},
        "ekfac": {"status": "ok", "seconds": 300.0, "forward_multiple": 30.0, "wall_seconds": 305.0,
                  "peak_rss_gib": 3.0},
        "logra": {"status": "timed out", "reason": "longer than 60 s", "wall_seconds": 60.0, "peak_rss_gib": None},
    }  # fmt: skip
    table = size_table({"shapes": {"gpt2:12x768:50257": shape}, "measurements": {"gpt2:12x768:50257": done}})
    assert "hashed_logit" in table and "output head not tracked" in table and "longer than 60 s" in table
    assert "EK-FAC / STRIDE with one design: 10.0x" in table

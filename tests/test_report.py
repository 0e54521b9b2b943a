"""`stride report`: escaping of untrusted text, the size bound, bad input, and the page in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from stride.api import attribute
from stride.cli import main
from stride.data import write_jsonl
from stride.report import write_report

SCRIPT_PAYLOAD = "<script>document.title='PWNED'</script>"
IMG_PAYLOAD = "\"><img id=pwned src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
SCREENSHOT = Path("/tmp/report_screenshot.png")


def _fake_run(root: Path, train_rows: list[dict], query_rows: list[dict], scores: np.ndarray,
              model: Path | None = None) -> Path:  # fmt: skip
    """A run folder as stride attribute writes it, with scores of our choosing (and no model unless given)."""
    train = write_jsonl(train_rows, root / "train.jsonl")
    queries = write_jsonl(query_rows, root / "queries.jsonl")
    run = root / "run"
    run.mkdir()
    save_file({"scores": torch.as_tensor(scores, dtype=torch.float32)}, str(run / "scores.safetensors"))
    inputs = {"model": str(model or root / "model"), "train": str(train), "queries": str(queries)}
    (run / "info.json").write_text(json.dumps({"method": "test", "inputs": inputs}))
    return run


def _planted_rows(n_train: int) -> list[dict]:
    rows = [{"text": f"ordinary example {i}", "source": "a" if i % 2 else "b"} for i in range(n_train)]
    rows[1] = {"text": f"{SCRIPT_PAYLOAD} and more", "source": IMG_PAYLOAD}
    rows[2] = {"text": f"{IMG_PAYLOAD} and more", "source": SCRIPT_PAYLOAD}
    return rows


def test_planted_markup_is_escaped_everywhere(tmp_path):
    queries = [{"text": SCRIPT_PAYLOAD, "source": IMG_PAYLOAD}, {"text": IMG_PAYLOAD, "source": "b"}]
    scores = np.linspace(0, 1, 2 * 40).reshape(2, 40)
    scores[:, 1:3] = 5.0  # both planted examples in every top list
    page = write_report(_fake_run(tmp_path, _planted_rows(40), queries, scores), continuation_tokens=0).read_text()
    for payload in (SCRIPT_PAYLOAD, IMG_PAYLOAD, "<img", 'onerror="document'):
        assert payload not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data block and the page's own script
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in page  # the query, as text
    assert "\\u003cscript\\u003edocument.title='PWNED'\\u003c/script\\u003e and more" in page  # an example, as data
    assert "script-src &#x27;sha256-" in page and "http" not in page.replace('http-equiv="', "")


def test_size_stays_under_5_mb_for_500_queries_with_distinct_long_examples(tmp_path):
    n_queries, k = 500, 10
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghij klmnopqrs tuvwxyz ", dtype="S1")
    texts = [rng.choice(letters, 900).tobytes().decode() for _ in range(2 * k * n_queries)]
    train = [{"text": text, "source": f"s{i % 7}"} for i, text in enumerate(texts)]
    queries = [{"text": texts[2 * k * q][:200], "source": f"s{q % 7}"} for q in range(n_queries)]
    scores = np.zeros((n_queries, len(texts)), dtype=np.float32)
    for q in range(n_queries):  # every query has its own 10 + 10 extremes: 10,000 distinct examples
        scores[q, 2 * k * q : 2 * k * q + k] = 1 + rng.random(k)
        scores[q, 2 * k * q + k : 2 * k * (q + 1)] = -1 - rng.random(k)
    path = write_report(_fake_run(tmp_path, train, queries, scores), continuation_tokens=0, k=k)
    page = path.read_text()
    assert path.stat().st_size < 5_000_000
    assert page.count('<article class="card"') == n_queries and page.count("<li data-e=") == 2 * k * n_queries
    data = json.loads(re.search(r'id="stride-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["train"]) == 2 * k * n_queries and all(left_out > 0 for _, left_out, _ in data["train"].values())


def test_prompt_completion_data_and_the_continuation_of_the_prompt(gpt2_dir, tmp_path):
    train = [{"prompt": f"Q{i}: ", "completion": f"answer {i}", "source": "x"} for i in range(12)]
    queries = [{"prompt": "Anything that can go ", "completion": "wrong will."}]
    run = _fake_run(tmp_path, train, queries, np.arange(12.0)[None], model=gpt2_dir)
    page = write_report(run, continuation_tokens=5, k=3).read_text()
    assert '<span class="prompt">Anything that can go </span><span class="completion">wrong will.</span>' in page
    assert '<p class="cont">model (greedy): Anything that can go <mark>' in page
    data = json.loads(re.search(r'id="stride-data">(.*?)</script>', page, re.S).group(1))
    assert data["train"]["11"] == ["Q11: answer 11", 0, {"source": "x"}] and sorted(map(int, data["train"])) == [
        0, 1, 2, 9, 10, 11]  # fmt: skip


def _expect_error(capsys, argv: list[str], *fragments: str) -> None:
    code = main(["report", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    line = err.splitlines()[-1]
    assert line.startswith("stride: error:") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in line, err


def test_bad_input_gives_one_line(tmp_path, capsys):
    run = _fake_run(tmp_path, _planted_rows(8), [{"text": "q"}], np.zeros((1, 8)))
    _expect_error(capsys, ["--run", str(tmp_path / "nope")], "run folder not found")
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, ["--run", str(tmp_path / "empty")], "holds no scores.safetensors")
    _expect_error(capsys, ["--run", str(run), "--k", "0"], "k must be at least 1")
    _expect_error(capsys, ["--run", str(run)], "model path recorded", "is gone")  # continuations need the model
    gt = tmp_path / "gt"
    gt.mkdir()
    save_file({"subsets": torch.ones(4, 9, dtype=torch.uint8), "losses": torch.rand(2, 4, 1)},
              str(gt / "losses.safetensors"))  # fmt: skip
    _expect_error(capsys, ["--run", str(run), "--continuation-tokens", "0", "--groundtruth", str(gt)],
                  "cannot compare", "n_train mismatch")  # fmt: skip
    write_jsonl([{"text": "one more"}] * 9, tmp_path / "train.jsonl")
    _expect_error(capsys, ["--run", str(run), "--continuation-tokens", "0"], "changed after the run")
    info = json.loads((run / "info.json").read_text())
    (run / "info.json").write_text(json.dumps({**info, "digests": {"queries": "0" * 64}}))
    _expect_error(capsys, ["--run", str(run), "--continuation-tokens", "0"], "queries at", "changed after the run")
    (tmp_path / "train.jsonl").unlink()
    _expect_error(capsys, ["--run", str(run), "--continuation-tokens", "0"], "train path recorded", "is gone")


# ------------------------------------------------------------------ a real run, a real model, a real browser


@pytest.fixture(scope="module")
def fielded_run(gpt2_dir, corpus, tmp_path_factory) -> dict[str, Any]:
    """A TF-IDF run of the tiny GPT-2 on a training file with a `source` field and planted markup,
    seven queries (two with planted markup), and a ground truth of its shapes."""
    root = tmp_path_factory.mktemp("fielded")
    texts = [json.loads(line)["text"] for line in corpus["train"].open()]
    train = [{"text": text, "source": ["murphy", "fortunes", "other"][i % 3]} for i, text in enumerate(texts)]
    train[5]["text"], train[7]["text"] = f"{SCRIPT_PAYLOAD} Nothing is easy.", f"{IMG_PAYLOAD} Or hard."
    queries = [{"text": text, "source": "murphy" if i < 4 else "other"} for i, text in enumerate(texts[10:15])]
    queries += [{"text": train[5]["text"], "source": "planted"}, {"text": train[7]["text"], "source": "planted"}]
    train_path, queries_path = write_jsonl(train, root / "train.jsonl"), write_jsonl(queries, root / "queries.jsonl")
    result = attribute(gpt2_dir, train_path, queries_path, root / "run", method="tfidf", progress=False)
    rng = np.random.default_rng(0)
    subsets = rng.random((24, len(train))) < 0.5
    losses = 3 - subsets @ result.scores.numpy().T + 0.3 * rng.normal(size=(2, 24, len(queries)))
    metadata = {f"{name}_sha256": value for name, value in result.info["digests"].items()}
    (root / "gt").mkdir()
    save_file({"subsets": torch.as_tensor(subsets.astype(np.uint8)), "losses": torch.as_tensor(losses).float()},
              str(root / "gt" / "losses.safetensors"), metadata=metadata)  # fmt: skip
    return {"run": root / "run", "gt": root / "gt", "n_queries": len(queries)}


def test_cli_report_of_a_real_run_with_continuations_and_lds(fielded_run, capsys):
    assert main(["report", "--run", str(fielded_run["run"]), "--groundtruth", str(fielded_run["gt"])]) == 0
    path = fielded_run["run"] / "report.html"
    assert capsys.readouterr().out.strip() == f"wrote {path}"
    page = path.read_text()
    assert page.count('<article class="card"') == fielded_run["n_queries"]
    assert page.count('<p class="cont">model (greedy): ') == fielded_run["n_queries"]
    assert "Linear datamodeling score" in page and 'src="data:image/png;base64,' in page
    assert '<select data-side="train" data-field="source">' in page
    assert SCRIPT_PAYLOAD not in page and IMG_PAYLOAD not in page
    assert write_report(fielded_run["run"], fielded_run["run"] / "again.html", fielded_run["gt"]).read_text() == page


def _chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


def _browse(binary: str, profile: Path, url: str, *flags: str) -> str:
    command = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=3000", *flags, url]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def _cards(dom: str) -> tuple[int, int]:
    """(cards, visible cards) in a dumped DOM."""
    cards = re.findall(r'<article class="card"[^>]*>', dom)
    return len(cards), sum(" hidden" not in card for card in cards)


def test_report_in_headless_chromium(fielded_run, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install chromium)")
    page = write_report(fielded_run["run"], tmp_path / "report.html", fielded_run["gt"])
    url, n = page.as_uri(), fielded_run["n_queries"]
    dom = _browse(binary, tmp_path / "profile", url, "--dump-dom")
    assert _cards(dom) == (n, n)
    assert f">{n} of {n} queries shown<" in dom
    assert "<title>stride report" in dom and "PWNED</title>" not in dom
    assert 'data-pwned="1"' not in dom and 'id="pwned"' not in dom
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom  # the planted example, shown as text
    assert dom.count('<span class="i">#') == 2 * 10 * n  # every example row filled by the page's script

    filtered = _browse(binary, tmp_path / "profile", url + "#query.source=murphy", "--dump-dom")
    assert _cards(filtered) == (n, 4) and f">4 of {n} queries shown<" in filtered
    searched = _browse(binary, tmp_path / "profile", url + "#q=pwned&query.source=planted", "--dump-dom")
    assert _cards(searched) == (n, 2)

    shot = tmp_path / "report.png"
    _browse(binary, tmp_path / "profile", url, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars")
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT)

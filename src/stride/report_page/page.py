"""One self-contained HTML page from the report's data; every string from the data is untrusted.

Strings in the markup go through `html.escape(..., quote=True)`; the training examples travel
once each in a JSON block (`<`, `>` and `&` written as `\\u003c`, ... so no `</script>` can close
it) that the page's script puts into the rows with `textContent`. A Content-Security-Policy allows
only the page's own script and style (by hash) and images from data URIs: no network, and no
script that an escaping mistake let in would run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stride.report_page.assets import SCRIPT, STYLE

QUERY_CHARS = 2000  # longest query text shown
EXAMPLE_CHARS = (160, 600)  # fewest and most characters shown of a training example
EXAMPLE_BUDGET = 2_500_000  # characters of training text in one page, shared by its distinct examples
MAX_FILTER_VALUES = 60  # fields with more distinct values are searchable, not offered as filters


@dataclass
class ExampleView:
    """A training example: its text and its other fields (as strings)."""

    text: str
    fields: dict[str, str]


@dataclass
class QueryView:
    """A query: its parts ((role, text): `text`, or `prompt` and `completion`), other fields, the
    model's greedy continuation ((prefix, generated) or None), its extremes ((train index, score),
    best first) and its LDS when there is ground truth."""

    index: int
    parts: list[tuple[str, str]]
    fields: dict[str, str]
    continuation: tuple[str, str] | None
    top: list[tuple[int, float]]
    bottom: list[tuple[int, float]]
    lds: float | None = None


@dataclass
class LDSView:
    """The LDS summary (`LDSReport.to_dict()`) and its PNG plot, if drawn."""

    summary: dict[str, Any]
    png: bytes | None


@dataclass
class ReportData:
    """Everything the page shows."""

    title: str
    facts: list[tuple[str, str]]
    queries: list[QueryView]
    examples: dict[int, ExampleView]
    lds: LDSView | None = None
    notes: list[str] = field(default_factory=list)


def esc(text: str) -> str:
    """Text for HTML markup, attribute values included."""
    return html.escape(text, quote=True)


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no `<`, `>` or `&` (they appear only inside strings)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escaped)
    return text


def clip(text: str, limit: int) -> tuple[str, int]:
    """The first `limit` characters and how many were left out."""
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


def example_limit(n_examples: int) -> int:
    """Characters shown per training example, so that the page stays small for many distinct examples."""
    low, high = EXAMPLE_CHARS
    return max(low, min(high, EXAMPLE_BUDGET // max(1, n_examples)))


def _hash_source(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def _head(title: str) -> str:
    policy = (f"default-src 'none'; img-src data:; style-src {_hash_source(STYLE)}; "
              f"script-src {_hash_source(SCRIPT)}")  # fmt: skip
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(policy)}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style></head>\n")  # fmt: skip


def _facts(facts: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>" for name, value in facts)
    return f'<table class="facts">{rows}</table>\n'


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _lds_section(view: LDSView) -> str:
    s = view.summary
    facts = [
        ("mean LDS", f"{_number(s.get('mean'))} ({s.get('confidence', 0.95):.0%} CI {_number(s.get('ci_low'))} to "
                     f"{_number(s.get('ci_high'))})"),
        ("queries", f"{s.get('n_queries', 0) - s.get('n_excluded', 0)} of {s.get('n_queries')} "
                    f"({s.get('n_excluded')} excluded: constant target; {s.get('n_constant_predictions', 0)} with "
                    "constant predictions, counted as 0)"),
        ("retrained subsets x seeds", f"{s.get('n_subsets')} x {s.get('n_seeds')}"),
    ]  # fmt: skip
    if s.get("ceiling") is not None:
        facts.append(("mean LDS against one seed", _number(s.get("mean_single_seed"))))
        facts.append(("seed-vs-seed ceiling (one seed)",
                      f"{_number(s['ceiling'])} (CI {_number(s.get('ceiling_ci_low'))} to "
                      f"{_number(s.get('ceiling_ci_high'))})"))  # fmt: skip
    image = ""
    if view.png is not None:
        data = base64.b64encode(view.png).decode()
        image = f'<img alt="LDS: predicted against actual, per-query histogram" src="data:image/png;base64,{data}">'
    else:
        image = "<p>No plot: matplotlib is not installed (pip install 'stride-tda[plots]').</p>"
    return f'<section class="lds"><h2>Linear datamodeling score</h2>{_facts(facts)}{image}</section>\n'


def _filter_values(items: Iterable[dict[str, str]]) -> dict[str, list[str]]:
    """Per field, its distinct values, when there are few enough to choose from (not an id: at most
    MAX_FILTER_VALUES, and at most half as many as the items)."""
    values: dict[str, set[str]] = {}
    n_items = 0
    for fields in items:
        n_items += 1
        for name, value in fields.items():
            values.setdefault(name, set()).add(value)
    return {name: sorted(found) for name, found in sorted(values.items())
            if len(found) <= min(MAX_FILTER_VALUES, n_items / 2)}  # fmt: skip


def _select(side: str, label: str, name: str, values: list[str]) -> str:
    options = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
    return (f'<label>{esc(label)} {esc(name)} <select data-side="{side}" data-field="{esc(name)}">'
            f'<option value="">any</option>{options}</select></label>')  # fmt: skip


def _controls(data: ReportData) -> str:
    selects = [_select("query", "query", name, values)
               for name, values in _filter_values(q.fields for q in data.queries).items()]  # fmt: skip
    selects += [_select("train", "example", name, values)
                for name, values in _filter_values(e.fields for e in data.examples.values()).items()]  # fmt: skip
    return (f'<div class="controls"><input id="search" type="search" placeholder="search queries and examples" '
            f'aria-label="search">{"".join(selects)}<span id="shown"></span></div>\n')  # fmt: skip


def _rows(entries: list[tuple[int, float]]) -> str:
    return "".join(f'<li data-e="{index}"><b>{score:+.4g}</b></li>' for index, score in entries)


def _query_text(parts: list[tuple[str, str]]) -> str:
    spans = []
    for role, text in parts:
        shown, left_out = clip(text, QUERY_CHARS)
        cut = f'<span class="cut"> [… {left_out} more characters not shown]</span>' if left_out else ""
        spans.append(f'<span class="{role}">{esc(shown)}</span>{cut}')
    return f'<p class="query">{"".join(spans)}</p>'


def _card(query: QueryView) -> str:
    badges = "".join(f'<span class="f">{esc(name)}: {esc(value)}</span>' for name, value in query.fields.items())
    lds = f'<span class="badge">LDS {_number(query.lds)}</span>' if query.lds is not None else ""
    continuation = ""
    if query.continuation is not None:
        prefix, generated = query.continuation
        continuation = (f'<p class="cont">model (greedy): {esc(clip(prefix, QUERY_CHARS)[0])}'
                        f"<mark>{esc(generated)}</mark></p>")  # fmt: skip
    return (f'<article class="card" id="q{query.index}" data-q="{query.index}">'
            f"<header><h2>query {query.index}</h2>{lds}{badges}</header>{_query_text(query.parts)}{continuation}"
            f'<div class="cols"><section class="top"><h3>most influential (top {len(query.top)})</h3>'
            f'<ol class="ex">{_rows(query.top)}</ol></section>'
            f'<section class="bottom"><h3>least influential (bottom {len(query.bottom)})</h3>'
            f'<ol class="ex">{_rows(query.bottom)}</ol></section></div></article>\n')  # fmt: skip


def _page_data(data: ReportData) -> dict[str, Any]:
    limit = example_limit(len(data.examples))
    train = {}
    for index, example in data.examples.items():
        text, left_out = clip(example.text, limit)
        train[str(index)] = [text, left_out, example.fields]
    return {"train": train, "queries": {str(q.index): q.fields for q in data.queries}}


def render_page(data: ReportData) -> str:
    """The whole page as one string."""
    notes = "".join(f"<p>{esc(note)}</p>" for note in data.notes)
    return (_head(data.title)
            + f"<body><main><h1>{esc(data.title)}</h1>\n{_facts(data.facts)}{notes}"
            + (_lds_section(data.lds) if data.lds is not None else "")
            + _controls(data)
            + "<noscript><p>Turn on JavaScript to see the training examples' texts.</p></noscript>\n"
            + "".join(_card(query) for query in data.queries)
            + f'</main>\n<script type="application/json" id="stride-data">{script_json(_page_data(data))}</script>\n'
            + f"<script>{SCRIPT}</script>\n</body></html>\n")  # fmt: skip

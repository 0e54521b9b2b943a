"""The page's inline stylesheet and script (no network: system fonts, no libraries).

The script fills each example row from the embedded JSON with `textContent` (never as HTML),
and applies the search box and the field filters; the URL fragment holds their state
(`#q=WORDS&query.FIELD=VALUE&train.FIELD=VALUE`), so a link (or a headless browser) opens the
page filtered.
"""

STYLE = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --top: #1f7a3a; --bottom: #a8322d; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
main { max-width: 1400px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 20px; margin: 8px 0 4px; }
h2 { font-size: 15px; margin: 0; }
h3 { font-size: 13px; margin: 0 0 6px; color: var(--muted); font-weight: 600; }
table.facts { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
table.facts th { text-align: left; color: var(--muted); font-weight: 500; padding: 1px 14px 1px 0; }
table.facts td { padding: 1px 0; word-break: break-all; }
section.lds { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px;
              margin-bottom: 16px; }
section.lds img { max-width: min(100%, 1000px); height: auto; }
.controls { position: sticky; top: 0; z-index: 1; background: var(--bg); padding: 10px 0;
            border-bottom: 1px solid var(--line); display: flex; flex-wrap: wrap; gap: 10px; align-items: center; }
.controls input { font: inherit; padding: 5px 8px; width: 320px; border: 1px solid var(--line); border-radius: 4px; }
.controls select { font: inherit; padding: 4px; border: 1px solid var(--line); border-radius: 4px; }
.controls #shown { color: var(--muted); }
article.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px;
               margin: 14px 0; }
article.card header { display: flex; gap: 10px; align-items: baseline; flex-wrap: wrap; }
[hidden] { display: none !important; }
.query { white-space: pre-wrap; margin: 8px 0; font-size: 15px; }
.query .prompt { color: var(--muted); }
.cont { white-space: pre-wrap; margin: 4px 0 10px; font-size: 13px; color: var(--muted); }
.cont mark { background: #fff1b8; color: var(--fg); }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
@media (max-width: 900px) { .cols { grid-template-columns: 1fr; } }
ol.ex { list-style: none; margin: 0; padding: 0; }
ol.ex li { padding: 4px 0; border-top: 1px solid #eef0f3; white-space: pre-wrap; word-break: break-word; }
ol.ex li.dim { opacity: 0.3; }
ol.ex b { font-variant-numeric: tabular-nums; font-weight: 600; margin-right: 6px; }
.top b { color: var(--top); }
.bottom b { color: var(--bottom); }
.i { color: var(--muted); font-size: 12px; margin-right: 6px; }
.f { display: inline-block; font-size: 11px; color: #37414f; background: #e9edf3; border-radius: 3px;
     padding: 0 5px; margin-left: 6px; white-space: nowrap; }
.cut { color: var(--bottom); font-size: 12px; font-style: italic; }
.badge { font-size: 12px; color: var(--muted); }
"""

SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("stride-data").textContent);
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.card"));
  var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-side]"));
  var search = document.getElementById("search");
  var shown = document.getElementById("shown");

  function element(tag, cls, text) {
    var node = document.createElement(tag);
    node.className = cls;
    node.textContent = text;
    return node;
  }

  function fill(row) {
    var key = row.getAttribute("data-e");
    var example = data.train[key];
    row.appendChild(element("span", "i", "#" + key));
    var text = element("span", "t", example[0]);
    if (example[1] > 0) {
      text.appendChild(element("span", "cut", " [… " + example[1] + " more characters not shown]"));
    }
    row.appendChild(text);
    Object.keys(example[2]).forEach(function (field) {
      row.appendChild(element("span", "f", field + ": " + example[2][field]));
    });
  }

  function keyOf(select) {
    return select.getAttribute("data-side") + "." + select.getAttribute("data-field");
  }

  function matchesFilter(card, select, rows) {
    var field = select.getAttribute("data-field");
    if (select.getAttribute("data-side") === "query") {
      return data.queries[card.getAttribute("data-q")][field] === select.value;
    }
    var any = false;
    rows.forEach(function (row) {
      if (data.train[row.getAttribute("data-e")][2][field] === select.value) {
        any = true;
      } else {
        row.classList.add("dim");
      }
    });
    return any;
  }

  function writeFragment(words, active) {
    var params = new URLSearchParams();
    if (words) { params.set("q", search.value.trim()); }
    active.forEach(function (select) { params.set(keyOf(select), select.value); });
    try { history.replaceState(null, "", "#" + params.toString()); } catch (error) { /* file: URLs may refuse */ }
  }

  function apply() {
    var words = search.value.trim().toLowerCase().split(/\\s+/).filter(Boolean);
    var active = selects.filter(function (select) { return select.value !== ""; });
    var count = 0;
    cards.forEach(function (card, index) {
      var rows = Array.prototype.slice.call(card.querySelectorAll("li[data-e]"));
      rows.forEach(function (row) { row.classList.remove("dim"); });
      var haystack = haystacks[index];
      var ok = words.every(function (word) { return haystack.indexOf(word) >= 0; });
      active.forEach(function (select) { ok = matchesFilter(card, select, rows) && ok; });
      card.hidden = !ok;
      count += ok ? 1 : 0;
    });
    shown.textContent = count + " of " + cards.length + " queries shown";
    writeFragment(words.length > 0, active);
  }

  function readFragment() {
    var params = new URLSearchParams(location.hash.replace(/^#/, ""));
    if (params.has("q")) { search.value = params.get("q"); }
    selects.forEach(function (select) {
      var value = params.get(keyOf(select));
      if (value === null) { return; }
      if (!Array.prototype.some.call(select.options, function (o) { return o.value === value; })) {
        var option = element("option", "", value);
        option.value = value;
        select.appendChild(option);
      }
      select.value = value;
    });
  }

  var haystacks = cards.map(function (card) {
    card.querySelectorAll("li[data-e]").forEach(fill);
    return card.textContent.toLowerCase();
  });
  readFragment();
  search.addEventListener("input", apply);
  selects.forEach(function (select) { select.addEventListener("change", apply); });
  window.addEventListener("hashchange", function () { readFragment(); apply(); });
  apply();
})();
"""

"""The standalone SVG charts: well-formed, every value shown, missing values marked as such."""

from __future__ import annotations

from xml.etree import ElementTree

from mixerlab.web.charts import score_color, score_grid

SVG = "{http://www.w3.org/2000/svg}"


def test_score_grid_shows_each_cell_its_mark_and_the_missing_ones() -> None:
    rows = {"memorize": ["baseline", "vocab_size=512"], "compress": ["baseline"]}
    values = {"a_model": {"memorize": {"baseline": 0.9993, "vocab_size=512": 0.4724}, "compress": {"baseline": 0.25}},
              "another_model_with_a_long_name": {"memorize": {"baseline": 0.5}}}
    marks = {"a_model": {"memorize": {"vocab_size=512": "(2/6)"}}}
    note = "(n/6): only n of 6 trainings done; grey: not run yet, and this note is long enough to widen the chart"
    svg = score_grid(rows, list(values), values, "per setting", note=note, marks=marks)
    root = ElementTree.fromstring(svg)  # well-formed, standalone (own namespace and styles)
    assert root.tag == f"{SVG}svg" and root.find(f"{SVG}style") is not None
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert titles == [
        "a_model memorize baseline: 0.9993", "another_model_with_a_long_name memorize baseline: 0.5000",
        "a_model memorize vocab_size=512: 0.4724 (2/6)", "another_model_with_a_long_name memorize vocab_size=512: not run",
        "a_model compress baseline: 0.2500", "another_model_with_a_long_name compress baseline: not run",
    ]
    fills = [r.get("fill") for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert fills.count(score_color(None)) == 2 and fills[0] == score_color(0.9993) != fills[4]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"memorize", "compress", "vocab_size=512", "another_model_with_a_long_name", note} <= set(texts)
    width = int(root.get("width"))
    assert width >= 6 * len(note) and width >= 190 + 2 * 7 * len("another_model_with_a_long_name")

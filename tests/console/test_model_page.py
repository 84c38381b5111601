"""The model page's words about where its numbers come from (rendered from the template, no server)."""

from __future__ import annotations

import re
from typing import Any

from admin.console.render import environment


def _page(**extra: Any) -> str:
    m: dict[str, Any] = {"version": 2, "status": "accepted", "default": False, "val_accuracy": 0.9,
                         "holdout_accuracy": None, "recipe": {}, "lineage": {}, "per_class": {}, "plots": [],
                         "recipe_rows": [], "refitted": None, **extra}  # fmt: skip
    html = environment().get_template("model.html").render(m=m, nav=[], session=None, csrf="", path="/console")
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_a_refit_model_says_its_validation_accuracy_is_the_selection_runs() -> None:
    words = _page(refitted={"images": 88, "seeds": [0, 1], "epochs": [5, 4]})
    assert "Validation accuracy (training) 90.0% (the selection run's: the served head was then refit on 88" in words
    assert "selection run" not in _page()

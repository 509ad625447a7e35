"""The lesion call reads the same, and explains itself, in `genlab predict`, the API and the page:
the call first, then the most likely class on its side, then the rule that made it - also when
the single most likely class is the healthy one while the lesion classes together make the call."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.cli import main
from genlab.families.classifier import Classifier
from genlab.metrics.classification import lesion_reading

# A, B, C (lesions), Z (healthy): Z is the largest single class, but P(lesion) = 0.703 >= 0.5
PROBS = [0.25, 0.23, 0.223, 0.297]
NAMES = ["A", "B", "C", "Z"]


def test_reading_when_the_top_class_is_healthy_but_the_lesion_classes_make_the_call():
    r = lesion_reading(PROBS, NAMES, [3], 0.5)
    assert r["call"] is True and r["probability"] == pytest.approx(0.703)
    assert r["top_class"] == "Z" and r["likely_class"] == "A" and r["likely_probability"] == 0.25
    assert r["rule"] == "P(lesion) = 1 - P(Z) = 0.703 >= threshold 0.5"
    assert r["summary"] == ("LESION, most likely lesion class A (0.250); rule: P(lesion) = 1 - P(Z) "
                            "= 0.703 >= threshold 0.5; the single most likely class is Z (0.297), "
                            "but the lesion classes A, B and C together have 0.703")


def test_reading_of_plain_cases():
    r = lesion_reading([0.05, 0.05, 0.1, 0.8], NAMES, [3], 0.5)
    assert not r["call"] and r["likely_class"] == "Z"
    assert r["summary"] == "no lesion; rule: P(lesion) = 1 - P(Z) = 0.200 < threshold 0.5"
    assert lesion_reading([0.2, 0.8], ["healthy", "lesion"], [0], 0.5)["summary"].startswith("LESION;")
    assert lesion_reading([0.1, 0.9], ["0", "1"], [], 0.5) is None  # not a lesion task


def test_predict_and_the_api_say_the_same(tmp_path_factory, tmp_path, monkeypatch, capsys):
    pytest.importorskip("fastapi", reason="serving needs the [serve] extra")
    from serve_helpers import tiny_brain_run

    from genlab.serve.images import Decoded
    from genlab.serve.model import ServedModel

    run_dir = tiny_brain_run(tmp_path_factory)
    monkeypatch.setattr(Classifier, "predict_proba",
                        lambda self, x: torch.tensor([PROBS] * len(x)))
    scan = tmp_path / "scan.png"
    Image.fromarray(np.zeros((128, 96), np.uint8)).save(scan)

    capsys.readouterr()
    assert main(["predict", str(run_dir), str(scan)]) == 0
    line = capsys.readouterr().out.strip()
    assert main(["predict", str(run_dir), str(scan), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    [api] = ServedModel(run_dir).predict([(Decoded(torch.zeros(1, 128, 96), "scan.png"), False)])

    assert api["class"] == rec["class"] == "Z"  # the single most likely class, as before
    expected = lesion_reading(torch.tensor(PROBS).tolist(), NAMES, [3], 0.5)  # float32 as served
    assert api["lesion"] == rec["lesion_call"] == expected
    assert rec["lesion"] is True and rec["p_lesion"] == pytest.approx(0.703)
    assert line.startswith(f"{scan}: LESION, most likely lesion class A (0.250); rule: ")
    assert api["lesion"]["summary"] in line
    assert list(api)[:2] == ["name", "lesion"]  # the call comes first in the answer too

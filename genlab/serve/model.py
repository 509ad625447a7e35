"""The served classifier: the run loaded with genlab.load_run (recipe.yaml + best.pt, loaded
with weights_only=True, eval mode, on the configured device) and one batched prediction function.

The answer for an image is the family's own: probabilities = `Classifier.predict_proba`
(softmax of the logits, without gradients), P(lesion) = `Classifier.lesion_probability`
(1 - P(negative classes)), a lesion call at or above `model.lesion_threshold`, read out by
`genlab.metrics.classification.lesion_reading` (the call, the most likely class on its side,
the rule, one summary sentence) — exactly what `genlab predict` prints. A Grad-CAM overlay (the
predicted class, `Classifier.gradcam` and `genlab.metrics.gradcam.overlay`) is drawn only for
images that ask for one; it is the one place that takes gradients (with respect to the input; no
parameter's .grad is touched).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

import genlab
from genlab.core.files import jsonable
from genlab.engine.runs import load_run
from genlab.families.base import require
from genlab.metrics.classification import lesion_reading
from genlab.serve.images import FORMATS, Decoded, png_base64


class ServedModel:
    def __init__(self, run_dir: Path, device: str = "cpu", checkpoint: str = "best"):
        self.run = load_run(Path(run_dir), checkpoint, device)
        require(self.run.model, "classify", "genlab serve")
        self.model = self.run.model.eval()
        self.names = list(self.run.info.class_names)
        self.channels, h, w = self.run.info.input_shape
        self.size = (int(h), int(w))
        self.threshold = float(self.model.cfg.lesion_threshold)
        self.negative = [self.names[i] for i in self.model.negative]

    # -- description -------------------------------------------------------------------------
    def info(self) -> dict:
        run, cfg = self.run, self.model.cfg
        c, (h, w) = self.channels, self.size
        test, source = None, None
        if run.meta["metrics"] is not None:
            test, source = run.meta["metrics"].get("test"), "metrics.json (end of training)"
        evaluated = run.run_dir / "eval" / "test" / "metrics.json"
        eval_block = None
        if evaluated.is_file():
            try:
                e = json.loads(evaluated.read_text())
                eval_block = {k: e.get(k) for k in ("n", "accuracy", "auc", "ece", "step")}
                if e.get("binary"):
                    eval_block["binary"] = {k: e["binary"].get(k) for k in
                                            ("sensitivity", "specificity", "ppv", "npv", "auc")}
            except (OSError, json.JSONDecodeError):
                eval_block = None
        return jsonable({
            "name": run.recipe.name, "description": run.recipe.description,
            "genlab_version": genlab.__version__,
            "run": run.run_dir.name, "checkpoint": run.checkpoint.name, "step": run.step,
            "device": str(run.device),
            "classes": self.names,
            "input_shape": [c, h, w],
            "preprocessing": {
                "formats": list(FORMATS),
                "color": "grayscale (L)" if c == 1 else "RGB",
                "conversion": ("any mode is converted to "
                               + ("grayscale 'L'" if c == 1 else "RGB")
                               + "; 16-bit and float images are scaled, not clipped; alpha is "
                                 "dropped; an animated image gives its first frame"),
                "resize": f"to {w}x{h} (W x H), bilinear, aspect ratio not kept",
                "scale": "uint8 / 255 -> float32 in [0, 1]",
                "value_range": list(run.info.value_range),
                "exif_orientation": "not applied",
                "in_model": {"clahe": bool(cfg.clahe)},
            },
            "lesion": ({"negative_classes": self.negative, "threshold": self.threshold,
                        "rule": "P(lesion) = 1 - P(negative classes); lesion when >= threshold "
                                "(each prediction's lesion.summary says the call, the most likely "
                                "class on its side and the numbers)"}
                       if self.negative else None),
            "gradcam_available": bool(self.model.can_explain),
            "test_metrics": test, "test_metrics_source": source, "eval_test": eval_block,
        })

    # -- prediction --------------------------------------------------------------------------
    def predict(self, items: list[tuple[Decoded, bool]]) -> list[dict]:
        """One forward pass for all `items` ((decoded image, wants Grad-CAM)); runs in the
        batcher's worker thread."""
        x = torch.stack([d.x for d, _ in items]).to(self.run.device)  # (B, C, H, W)
        with torch.inference_mode():
            probs = self.model.predict_proba(x).cpu()  # (B, K) softmax of the logits
        want = [i for i, (_, cam) in enumerate(items) if cam]
        overlays: dict[int, str] = {}
        if want and self.model.can_explain:
            from genlab.metrics.gradcam import overlay

            xs = x[want].clone()
            cams = self.model.gradcam(xs).cpu()
            for j, i in enumerate(want):
                overlays[i] = png_base64(overlay(xs[j].cpu().numpy(), cams[j].numpy()))
        out = []
        for i, (d, _) in enumerate(items):
            k = int(probs[i].argmax())
            # the lesion call first: "class" alone (the single most likely) can be a healthy
            # class while the lesion classes together make the call (lesion_reading)
            rec = {"name": d.name,
                   "lesion": lesion_reading(probs[i].tolist(), self.names, self.model.negative,
                                            self.threshold),
                   "class": self.names[k], "probability": float(probs[i, k]),
                   "probabilities": {n: float(probs[i, j]) for j, n in enumerate(self.names)},
                   "input": {"original": d.original, "converted": d.converted},
                   "gradcam_png": overlays.get(i)}
            out.append(rec)
        return out

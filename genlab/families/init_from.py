"""Start a network from an exported encoder bundle (`model.init` of the classifier).

    bundle (genlab.families.export) -> rebuild its encoder for the data's input shape
        -> copy its tensors by name -> a report of what was loaded, skipped and missing

A shape mismatch (e.g. a bundle trained on another input size) is an error unless allowed:
then the encoder is rebuilt for the data's shape and the tensors whose shape differs are
skipped (they keep their fresh initialisation). The report is printed by the caller and kept
in the new run's own export/encoder.json as `init_report`.

Shrink and perturb (`shrink < 1` or `perturb > 0`; after Ash & Adams, "On warm-starting neural
network training", NeurIPS 2020): every loaded parameter becomes shrink x loaded + perturb x its
own fresh initialisation. A warm start that fits the new labels no faster than random weights and
generalises worse is the pathology they describe; behind batch norm the shrink changes no output
but makes each update larger relative to the weights, and the perturbation mixes fresh random
directions back in. Buffers (batch-norm statistics) are not mixed: training re-estimates them.

Reset (`reset`: layer names as genlab.nn.layer_names gives them): those layers go back to their
fresh initialisation after loading (parameters and batch-norm statistics), so only the layers
below them are transferred: with plentiful labels the top of an encoder trained for another
objective can cost more than it gives, while its lower filters still help.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from genlab.core.bundle import load_bundle
from genlab.core.errors import CheckpointError
from genlab.families.export import BUNDLE_FORMAT, BUNDLE_NAME, read_bundle_meta
from genlab.nn.backbones import build_backbone
from genlab.nn.layer_names import find_layers


def bundle_for_data(path: Path, in_shape: list[int], allow: bool) -> tuple[dict, Path, dict, list[str]]:
    """(meta, weights path, builder config for `in_shape`, notes) of the bundle at `path`."""
    meta, weights = read_bundle_meta(Path(path))
    config, notes = dict(meta.get("config", {})), []
    bundle_shape = [int(s) for s in meta.get("input_shape", in_shape)]
    if bundle_shape != list(in_shape):
        key = next((k for k in ("in_shape", "input_shape") if k in config), None)
        if not allow:
            raise CheckpointError(
                f"{path}: the encoder was trained on inputs {bundle_shape}, the data gives "
                f"{list(in_shape)}; set model.allow_shape_mismatch: true to rebuild it for the data's "
                f"shape (tensors whose shape then differs are skipped and start from scratch)")
        if key is None:
            raise CheckpointError(f"{path}: builder {meta['builder']!r} has no in_shape/input_shape "
                                  f"argument, so it cannot be rebuilt for inputs {list(in_shape)}")
        config[key] = list(in_shape)
        notes.append(f"rebuilt for input {list(in_shape)} (bundle: {bundle_shape})")
    return meta, weights, config, notes


def load_bundle_weights(module: nn.Module, weights: Path, allow_shape_mismatch: bool) -> dict:
    """Copy an encoder bundle's tensors into `module` by name and say what happened to each.

    `weights`: the bundle (its folder or either of its files). loaded: same name and shape;
    skipped: in the bundle but not used (no such tensor in the module, or a different shape
    when allowed); missing: in the module but not in the bundle (left at their fresh
    initialisation). A shape mismatch is a CheckpointError unless allowed.
    """
    _, state = load_bundle(Path(weights), BUNDLE_NAME, BUNDLE_FORMAT)
    own = module.state_dict()
    loaded, skipped, mismatched = [], [], []
    for k, v in state.items():
        if k not in own:
            skipped.append({"name": k, "shape": list(v.shape), "reason": "not in the module"})
        elif own[k].shape != v.shape:
            mismatched.append(f"{k}: bundle {list(v.shape)} vs module {list(own[k].shape)}")
            skipped.append({"name": k, "shape": list(v.shape),
                            "reason": f"shape differs (module {list(own[k].shape)})"})
        else:
            loaded.append({"name": k, "shape": list(v.shape)})
    if mismatched and not allow_shape_mismatch:
        raise CheckpointError(f"{weights}: shape mismatch: " + "; ".join(sorted(mismatched))
                              + " (set model.allow_shape_mismatch: true to skip these tensors)")
    missing = [{"name": k, "shape": list(own[k].shape)} for k in own if k not in state]
    module.load_state_dict({d["name"]: state[d["name"]] for d in loaded}, strict=False)
    return {"loaded": loaded, "skipped": skipped, "missing": missing}


def shrink_perturb(module: nn.Module, fresh: dict, names: set[str], shrink: float, perturb: float) -> int:
    """Parameters named in `names` become shrink x themselves + perturb x `fresh` (the module's
    own initialisation, captured before loading); the number of tensors changed."""
    n = 0
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in names:
                p.mul_(shrink).add_(fresh[name].to(p), alpha=perturb)
                n += 1
    return n


def reset_layers(module: nn.Module, layers: list[nn.Module], fresh: dict) -> set[str]:
    """Every tensor (parameters and buffers) of `layers`, submodules of `module`, back to `fresh`
    (module's state captured before loading); the names reset."""
    key = {id(t): k for k, t in module.state_dict(keep_vars=True).items()}
    names = set()
    with torch.no_grad():
        for layer in layers:
            for t in layer.state_dict(keep_vars=True).values():
                t.copy_(fresh[key[id(t)]])
                names.add(key[id(t)])
    return names


def backbone_from_bundle(path: Path, in_shape: list[int], pre: dict, value_range,
                         allow_shape_mismatch: bool, shrink: float = 1.0, perturb: float = 0.0,
                         reset: list[str] = ()) -> tuple[nn.Module, dict, dict]:
    """(backbone, its build_backbone arguments, init report): the bundle's encoder rebuilt as a
    genlab.nn.backbones "encoder" backbone behind the preprocessing `pre` (CLAHE settings),
    with the bundle's weights loaded. `value_range` is the data's, compared with the bundle's.
    An unknown name in `reset` is a ValueError that lists the valid ones."""
    meta, weights, enc_cfg, notes = bundle_for_data(path, in_shape, allow_shape_mismatch)
    pre = dict(pre)
    if pre["clahe"] and enc_cfg.get("clahe"):  # another classifier's backbone: CLAHE inside
        pre["clahe"] = False
        notes.append("the bundle's backbone applies CLAHE itself; not applied twice")
    args = dict(name="encoder", in_shape=in_shape,
                encoder={"builder": meta["builder"], "config": enc_cfg}, **pre)
    try:
        backbone = build_backbone(**args)
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild its encoder: {e}") from None
    fresh = {k: v.detach().clone() for k, v in backbone.encoder.state_dict().items()}
    layers = find_layers(backbone, list(reset))
    report = load_bundle_weights(backbone.encoder, weights, allow_shape_mismatch)
    if layers:
        names = reset_layers(backbone.encoder, layers, fresh)
        report["reset"] = [d for d in report["loaded"] if d["name"] in names]
        report["loaded"] = [d for d in report["loaded"] if d["name"] not in names]
    if shrink != 1.0 or perturb != 0.0:
        n = shrink_perturb(backbone.encoder, fresh, {d["name"] for d in report["loaded"]}, shrink, perturb)
        notes.append(f"shrink and perturb: {n} loaded parameter tensors = {shrink:g} x loaded "
                     f"+ {perturb:g} x fresh initialisation (batch-norm statistics as loaded)")
    vr = meta.get("value_range")
    if vr is not None and [float(v) for v in vr] != [float(v) for v in value_range]:
        notes.append(f"bundle value_range {vr} differs from the data's {list(value_range)}")
    return backbone, args, {"bundle": str(path), "family": meta.get("family"),
                            "builder": meta["builder"], "step": meta.get("step"),
                            "notes": notes, **report}


def format_init_report(r: dict) -> str:
    """The init report as the lines printed when a run starts from a bundle."""
    def names(items):
        return ", ".join(f"{d['name']} {tuple(d['shape'])}" + (f" [{d['reason']}]" if "reason" in d else "")
                         for d in items) or "-"

    head = (f"init from {r['bundle']} (family {r.get('family')}, builder {r['builder']}, "
            f"step {r.get('step')}): {len(r['loaded'])} tensors loaded, {len(r['skipped'])} "
            f"skipped, {len(r['missing'])} missing"
            + (f", {len(r['reset'])} reset" if r.get("reset") else ""))
    lines = [head]
    lines += [f"  loaded:  {names(r['loaded'])}", f"  skipped: {names(r['skipped'])}",
              f"  missing: {names(r['missing'])}"]
    lines += [f"  reset:   {names(r['reset'])} (fresh initialisation)"] if r.get("reset") else []
    lines += [f"  note:    {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


__all__ = ["backbone_from_bundle", "bundle_for_data", "format_init_report", "load_bundle_weights",
           "reset_layers", "shrink_perturb"]

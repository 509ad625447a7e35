"""genlab: a PyTorch lab for unsupervised and generative models."""
__version__ = "0.1.0"


def load_run(run_dir, checkpoint="best", device="cpu", data_overrides=(), need_data=False,
             overrides=()):
    """Rebuild a trained run, read-only: its recipe, data description, model (eval mode, the
    weights of best.pt or of the newest checkpoint) and metadata (see genlab.engine.runs)."""
    from genlab.engine.runs import load_run as _load

    return _load(run_dir, checkpoint=checkpoint, device=device, data_overrides=data_overrides,
                 need_data=need_data, overrides=overrides)


def load_encoder(path, map_location="cpu", strict=True):
    """Rebuild an exported encoder bundle (see genlab.families.export.load_encoder)."""
    from genlab.families.export import load_encoder as _load

    return _load(path, map_location=map_location, strict=strict)

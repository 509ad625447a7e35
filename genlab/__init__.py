"""genlab: a PyTorch lab for unsupervised and generative models."""
__version__ = "0.1.0"


def load_encoder(path, map_location="cpu", strict=True):
    """Rebuild an exported encoder bundle (see genlab.families.export.load_encoder)."""
    from genlab.families.export import load_encoder as _load

    return _load(path, map_location=map_location, strict=strict)

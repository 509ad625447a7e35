"""Run by tests/test_distributed.py under torchrun (2 gloo processes): every family that trains
by gradient takes a few DDP steps through the trainer, then the ranks compare parameters.

Writes <out>/rank<r>.json: {family: {"params_equal": bool, "changed": bool, "steps": int}}.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_FAMILIES, tiny_recipe

from genlab.core.recipe import from_mapping
from genlab.engine.trainer import Trainer

out = Path(sys.argv[1])
dist.init_process_group("gloo")  # the trainer reuses the group torchrun's variables describe
rank = dist.get_rank()
report = {}
try:
    for family in TINY_FAMILIES:
        rec = from_mapping(tiny_recipe(family, steps=8))
        t = Trainer(rec, out_root=out / "runs", quiet=True, progress=False)
        before = torch.cat([p.detach().flatten().clone() for p in t.model.parameters()])
        t.run()
        after = torch.cat([p.detach().flatten() for p in t.model.parameters()])
        mine = after.double()
        other = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(other, mine)
        report[family] = {"params_equal": all(torch.equal(other[0], o) for o in other),
                          "changed": not torch.equal(before, after), "steps": t.step,
                          "rank_batch": t.rank_batch}
    (out / f"rank{rank}.json").write_text(json.dumps(report))
finally:  # leave the group on every way out: one alive at interpreter exit can abort the process
    dist.destroy_process_group()

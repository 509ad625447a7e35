"""The README's shell blocks stay runnable: every `genlab` command and option they name exists.

scripts/readme_commands.py runs the cheap ones for real (minutes); this checks, in a second,
that what the README tells a user to type is something the command line accepts.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _walker():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / "scripts" / "readme_commands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_walk_finds_and_plans_the_readme_commands():
    walker = _walker()
    cmds = walker.commands(ROOT / "README.md")
    runnable = [c for c in cmds if walker.plan(c)[0] is not None]
    assert ".venv/bin/genlab train recipes/dae_brain.yaml" in cmds  # `setup.sh && ...` split
    assert "source .venv/bin/activate" in runnable
    assert len(runnable) >= 15


def test_every_genlab_command_and_option_in_the_readme_exists():
    from genlab.cli import build

    commands = build().commands
    walker = _walker()
    bad = []
    for cmd in walker.commands(ROOT / "README.md"):
        m = re.search(r"(?:^|/|-m )genlab (\w+)(.*)", cmd)
        if not m:
            continue
        name, rest = m.group(1), m.group(2)
        if name not in commands:
            bad.append(f"{cmd}: no command {name!r}")
            continue
        known = {o for p in commands[name].params for o in getattr(p, "opts", [])}
        for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            if opt not in known:
                bad.append(f"{cmd}: {name} has no option {opt}")
    assert not bad, "\n".join(bad)

"""Walk the README's shell blocks in order and run the commands that are cheap, as a new user
would type them: one bash shell for the whole walk (so `source .venv/bin/activate` holds for
what follows), in an empty folder that sees the repository's recipes/, scripts/ and .venv/.

    python scripts/readme_commands.py            # run them; exit 1 if any fails
    python scripts/readme_commands.py --list     # what would run, and what is skipped and why

What "cheap" means: `genlab train` commands run with `--set train.steps=5` appended (the
README's full runs take minutes each); TensorBoard runs for a few seconds and must say it is
serving. `runs/<recipe>/<stamp>` stands for the run of that recipe the walk made earlier,
`[...]` options are dropped and `a|b` means a. Skipped, with the reason printed: commands on the
user's own images or hosts, the setup and the test suite (this is run from them), servers and
`curl`, multi-node `torchrun`, and runs on a user's own data (`data.root`).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(readme: Path) -> list[str]:
    """Every command of every ```bash block, in order; continuation lines joined, comments cut."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), re.DOTALL):
        pending = ""
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).rstrip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            out.extend(part.strip() for part in (pending + line.strip()).split(" && "))
            pending = ""
    return out


def fill(cmd: str, cwd: Path) -> str | None:
    """The command with a run folder made earlier in the walk for `runs/<recipe>/<stamp>[-tag]`,
    optional `[...]` parts dropped and the first of `a|b` choices taken; None when a
    placeholder has nothing to stand for yet."""
    def run_dir(m: re.Match) -> str:
        stamp = r"\d{8}-\d{6}(-\d+)?"  # runs/<recipe>/<YYYYmmdd-HHMMSS>[-n][-tag]
        name = re.compile(stamp + (re.escape(m.group(2)) if m.group(2) else "") + "$")
        found = sorted(p for p in (cwd / "runs" / m.group(1)).glob("*")
                       if name.fullmatch(p.name) and (p / "metrics.json").is_file())
        if not found:
            raise LookupError(m.group(0))
        return str(found[-1].relative_to(cwd))

    try:
        cmd = re.sub(r"runs/(\w+)/<stamp>(-\w+)?", run_dir, cmd)
    except LookupError:
        return None
    cmd = re.sub(r"\s*\[[^\]]*\]", "", cmd)
    return re.sub(r"(\w+)\|\w+(\|\w+)*", r"\1", cmd)


def plan(cmd: str) -> tuple[str | None, str]:
    """(what to run, or None to skip; why)."""
    if re.search(r"\.\.\.|RUN_DIR|HOST|scan\.png|\$\(", cmd):
        return None, "needs the user's own images or hosts"
    if "setup.sh" in cmd or "pytest" in cmd:
        return None, "setup / the test suite: this walk runs from them"
    if cmd.startswith(("curl", "export GENLAB_API_TOKEN")) or " serve " in f" {cmd} ":
        return None, "needs a served, trained classifier"
    if cmd.startswith("torchrun") and ("--nnodes" in cmd or "--nproc_per_node 8" in cmd):
        return None, "several GPUs or machines"
    if "data.root=" in cmd:
        return None, "reads the user's own data set"
    if "render_frames.py" in cmd:
        return None, "draws frames of the full-length run"
    if re.search(r"(^|/)genlab train ", cmd):
        return f"{cmd} --set train.steps=5", "train, 5 steps"
    if re.search(r"(^|/)tensorboard ", cmd):
        return f"timeout 20 {cmd} --port 0 2>&1 | grep -m1 -q 'TensorBoard .* at http'", \
            "TensorBoard, until it says it serves"
    return cmd, "as written"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--list", action="store_true", help="only say what would run and what not")
    args = ap.parse_args()
    steps = [(c, *plan(c)) for c in commands(args.readme)]
    if args.list:
        for cmd, run, why in steps:
            print(f"{'RUN ' if run else 'skip'}  {why:<45} {cmd}")
        return 0
    with tempfile.TemporaryDirectory(prefix="genlab-readme-") as tmp:
        for name in ("recipes", "scripts", ".venv", "judges"):
            (Path(tmp) / name).symlink_to(ROOT / name)
        failed = 0
        for cmd, run, why in steps:
            if run is None:
                continue
            run = fill(run, Path(tmp))
            if run is None:
                print(f"skip  {cmd}  (no run for its placeholder)")
                continue
            script = f"set -e; cd {tmp}; source .venv/bin/activate; {run}"
            r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=900,
                               check=False)
            ok = r.returncode == 0
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'}  {cmd}")
            if not ok:
                print((r.stdout + r.stderr)[-1500:])
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

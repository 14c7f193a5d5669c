"""Rebuild darkroom-mini's shipped weights (run 18) by replaying the chain of training stages that made them.

    python -m training.recipe --out DIR                  # every stage; rerun the same line to resume
    python -m training.recipe --out DIR --dry-run        # the stages, their commands and expected times
    python -m training.recipe --out DIR --max-steps-per-stage 3 --work /tmp/w   # a smoke run (CI)

Run 18 is not one training run: it is run 9 (from scratch) continued nine times with ``--init-from``,
one of those continuations being the mean of two (run 14), and its decoder trained 28 minutes more at
the end. Every stage's flags, seed and step count in ``STAGES`` are the recorded ones (training/EXPERIMENTS.md;
``continued_from`` in models/darkroom-mini/darkroom_mini.json).

Expected wall time on 2 CPU cores: about 11.6 hours, the sum of the minutes recorded for each stage
(745 training minutes, of which run 14's two halves, 52 and 58 minutes, ran side by side as they do
here). Those stages ran on one thread each next to another job; here a lone stage gets ``--threads``
(2), which was not measured. On one GPU (``--extra "--device cuda"``): not measured.

What it does not promise: bit-identical weights. Run 9 trained for a wall-clock budget (89 minutes,
10,969 steps; here a fixed 10,969 steps), the decoder stages are 28-minute budgets whose step counts
depend on the machine, and thread counts change float rounding. Expect scores near run 18's, scored
with the commands in docs/darkroom-mini.md; the chain has not been replayed end to end yet.

Resuming: a stage whose output exists is skipped; a training stage that was interrupted resumes from
its checkpoint (``python -m training.train ... --resume``, checkpoints every 10 minutes); the
decoder-only stage has no checkpoint and starts over (28 minutes). Each stage's folder under ``--work``
records the command it was started with, and a folder made by another command is refused rather than
mixed in (a smoke run's and a full run's, say).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the edit mix every stage from run 15's second on used (adds and moves drawn more often, removals less)
MIX = "recolour=1.0,move=1.5,add=1.8,remove=0.6,background=1.3"
# the edit targets of run 17's second stage on: see "Unambiguous edit targets" in training/EXPERIMENTS.md
TARGETS = ("--edit-gradient", "v", "--blocked-spot", "nearest")


@dataclass(frozen=True)
class Stage:
    name: str  # its folder under --work
    made: str  # what it was (its run and original run folder)
    kind: str  # "train" (python -m training.train), "average" (python -m training.average), "decoder"
    flags: tuple[str, ...] = ()
    init: str | None = None  # the stage whose pipeline it continues (--init-from)
    sources: tuple[str, ...] = ()  # for "average"
    steps: int = 0  # transformer steps it adds to the chain
    minutes: float = 0.0  # recorded minutes on the 2-core CPU machine
    date: str = ""
    group: str | None = None  # stages of one group ran side by side, one thread each

    @property
    def seed(self) -> int | None:
        return int(self.flags[self.flags.index("--seed") + 1]) if "--seed" in self.flags else None


def _cont(seed: int, steps: int, *flags: str) -> tuple[str, ...]:
    """A continuation's flags: fresh optimizer and schedule, peak lr 3e-4, a step budget."""
    return ("--seed", str(seed), "--lr", "3e-4", "--max-steps", str(steps), *flags)


STAGES: tuple[Stage, ...] = (
    Stage("run09", "run 9, from scratch (training/runs/mini-c4): 89 min of transformer + 28 min of decoder",
          "train", ("--seed", "0", "--max-steps", "10969"), steps=10969, minutes=117.0, date="2026-12-02"),
    Stage("run13", "run 13 (mini-c8a)", "train", _cont(0, 4000), init="run09", steps=4000, minutes=80.0,
          date="2026-12-02"),
    Stage("run14a", "run 14's first half (mini-d14a)", "train", _cont(1, 4500, "--edit-frac", "0.3"),
          init="run13", steps=4500, minutes=52.0, date="2026-12-03", group="run14"),
    Stage("run14b", "run 14's second half (mini-d14b)", "train", _cont(1, 4500, "--edit-frac", "0.5"),
          init="run13", steps=0, minutes=58.0, date="2026-12-03", group="run14"),
    Stage("run14", "run 14: the mean of its two halves' transformers", "average", sources=("run14a", "run14b"),
          date="2026-12-03"),
    Stage("run15-stage1", "run 15's first stage (mini-e15b)", "train", _cont(2, 3500, "--edit-frac", "0.5"),
          init="run14", steps=3500, minutes=53.4, date="2026-12-03"),
    Stage("run15", "run 15 (mini-f16b)", "train", _cont(3, 4000, "--edit-frac", "0.5", "--edit-mix", MIX),
          init="run15-stage1", steps=4000, minutes=58.4, date="2026-12-03"),
    Stage("run16-stage1", "run 16's first stage (mini-g17b)", "train",
          _cont(4, 3500, "--edit-frac", "0.6", "--edit-mix", MIX), init="run15", steps=3500, minutes=50.4,
          date="2026-12-03"),
    Stage("run16", "run 16 (mini-h18b)", "train", _cont(5, 3500, "--edit-frac", "0.7", "--edit-mix", MIX),
          init="run16-stage1", steps=3500, minutes=60.5, date="2026-12-03"),
    Stage("run17-stage1", "run 17's first stage (mini-i19b)", "train",
          _cont(6, 3500, "--edit-frac", "0.8", "--edit-mix", MIX), init="run16", steps=3500, minutes=66.8,
          date="2026-12-03"),
    Stage("run17", "run 17 (mini-j20b)", "train",
          _cont(7, 3500, "--edit-frac", "0.8", "--edit-mix", MIX, "--add-spot", "roomiest", *TARGETS),
          init="run17-stage1", steps=3500, minutes=55.2, date="2026-12-03"),
    Stage("run18", "run 18's transformer (mini-k21c)", "train",
          _cont(8, 3500, "--edit-frac", "0.8", "--edit-mix", MIX, "--add-spot", "nearest", *TARGETS),
          init="run17", steps=3500, minutes=65.5, date="2026-12-03"),
    # run 18 was resumed once, and that resume ran the decoder stage on run 17's decoder (28 min; a
    # continuation skips it since 275d91b). What shipped is that decoder, so it is replayed here.
    Stage("run18-decoder", "run 18's decoder: run 17's trained 28 min more", "decoder",
          ("--seed", "8", "--dec-minutes", "28"), init="run18", minutes=28.0, date="2026-12-03"),
)

# a smoke run: batches of 4, a small data pool and about a second of decoder, besides --max-steps-per-stage
SMOKE_FLAGS = ("--batch", "4", "--init-pool", "24", "--pool", "1000", "--refresh-n", "12", "--refresh-every", "3",
               "--dec-minutes", "0.02")


def wall_minutes(stages=STAGES, parallel: bool = True) -> float:
    """Expected wall time from the recorded minutes (a group side by side takes its longest stage)."""
    groups: dict[str, float] = {}
    total = 0.0
    for s in stages:
        if parallel and s.group:
            groups[s.group] = max(groups.get(s.group, 0.0), s.minutes)
        else:
            total += s.minutes
    return total + sum(groups.values())


def _stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(name)


@dataclass
class Plan:
    """The commands of one invocation."""

    work: Path
    out: Path
    threads: int = 2
    max_steps: int | None = None
    extra: tuple[str, ...] = ()
    parallel: bool = True
    python: str = sys.executable

    def folder(self, stage: Stage) -> Path:
        return self.work / stage.name

    def pipeline(self, stage: Stage) -> Path:
        """Where a stage's pipeline is (a training stage's --out, an average's output)."""
        return self.folder(stage) / "model"

    def threads_for(self, stage: Stage) -> int:
        return max(1, self.threads // 2) if (self.parallel and stage.group) else self.threads

    def command(self, stage: Stage) -> list[str]:
        """The stage's command line, without --resume."""
        if stage.kind == "average":
            return [self.python, "-m", "training.average", *(str(self.pipeline(_stage(s))) for s in stage.sources),
                    "--out", str(self.pipeline(stage))]
        flags = list(stage.flags)
        if stage.kind == "decoder":
            flags = ["--decoder-only", *flags]
        if stage.init:
            flags += ["--init-from", str(self.pipeline(_stage(stage.init)))]
        flags += ["--threads", str(self.threads_for(stage)), "--run", str(self.folder(stage))]
        if stage.kind == "train":
            flags += ["--ckpt-min", "10", "--out", str(self.pipeline(stage))]
        if self.max_steps is not None:
            flags += ["--max-steps", str(self.max_steps), *SMOKE_FLAGS]
        flags += list(self.extra)  # last: argparse keeps the last value of a repeated flag
        return [self.python, "-m", "training.train", *flags]

    def done(self, stage: Stage) -> bool:
        if stage.kind == "average":
            return (self.pipeline(stage) / "model_index.json").is_file()
        if stage.kind == "decoder":
            return (self.folder(stage) / "DONE").is_file() and (self.folder(stage) / "decoder.pt").is_file()
        return (self.folder(stage) / "DONE").is_file() and (self.pipeline(stage) / "model_index.json").is_file()

    def state(self, stage: Stage) -> str:
        """done, resume (a training stage with a checkpoint), restart (a decoder stage cut short) or todo."""
        if self.done(stage):
            return "done"
        if stage.kind == "train" and (self.folder(stage) / "ckpt.pt").is_file():
            return "resume"
        if stage.kind == "decoder" and (self.folder(stage) / "decoder.pt").is_file():
            return "restart"
        return "todo"

    def check_folder(self, stage: Stage) -> None:
        """Refuse a stage folder started by another command (other flags, a smoke run, another --work)."""
        rec = self.folder(stage) / "stage.json"
        if not rec.is_file():
            return
        before = json.loads(rec.read_text())["command"]
        if _comparable(before) != _comparable(self.command(stage)):
            raise SystemExit(f"{self.folder(stage)} was made by another command:\n  {shlex.join(before)}\n"
                             f"not\n  {shlex.join(self.command(stage))}\nuse another --work (or remove it)")

    def record(self, stage: Stage) -> None:
        self.folder(stage).mkdir(parents=True, exist_ok=True)
        (self.folder(stage) / "stage.json").write_text(json.dumps(
            {"stage": stage.name, "made": stage.made, "command": self.command(stage)}, indent=2))


def _comparable(cmd: list[str]) -> list[str]:
    """A command without its interpreter and thread count (neither changes what the stage trains)."""
    out, skip = [], False
    for i, a in enumerate(cmd[1:]):
        if skip:
            skip = False
            continue
        if a == "--threads":
            skip = True
            continue
        out.append(a)
    return out


def _launch(plan: Plan, stage: Stage) -> subprocess.Popen:
    state = plan.state(stage)
    plan.check_folder(stage)
    plan.record(stage)
    cmd = plan.command(stage) + (["--resume"] if state == "resume" else [])
    log = plan.folder(stage) / "recipe.log"
    print(f"[{time.strftime('%H:%M:%S')}] {stage.name}: {'resuming' if state == 'resume' else 'starting'} "
          f"({stage.made}); log {log}", flush=True)
    fh = open(log, "a")
    fh.write(f"\n$ {shlex.join(cmd)}\n")
    fh.flush()
    return subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)


def _wait(plan: Plan, procs: list[tuple[Stage, subprocess.Popen]]) -> None:
    started = time.time()
    failed = []
    for stage, p in procs:
        if p.wait() != 0:
            failed.append(stage)
        elif stage.kind == "decoder":  # the training script writes DONE for training stages only
            (plan.folder(stage) / "DONE").write_text(json.dumps({"elapsed_min": (time.time() - started) / 60}))
    if failed:
        names = ", ".join(s.name for s in failed)
        raise SystemExit(f"stage {names} failed (exit status != 0); see {plan.work}/<stage>/recipe.log. "
                         "Rerun the same command to resume.")


def assemble(plan: Plan) -> Path:
    """The final pipeline: run 18's transformer stage with the decoder of the last stage, and a
    darkroom_mini.json that records the chain."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from training import build_pipeline as bp

    last, dec = _stage("run18"), _stage("run18-decoder")
    src = plan.pipeline(last)
    tr = FluxTransformer2DModel.from_pretrained(src, subfolder="transformer").float()
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae").float()
    vae.load_state_dict(torch.load(plan.folder(dec) / "decoder.pt", map_location="cpu"))
    stages = []
    for s in STAGES:
        meta_file = plan.pipeline(s) / "darkroom_mini.json"
        meta = json.loads(meta_file.read_text()) if s.kind == "train" and meta_file.is_file() else {}
        minutes = meta.get("train_minutes")
        if s.kind == "decoder":
            minutes = round(json.loads((plan.folder(s) / "DONE").read_text()).get("elapsed_min", 0.0), 1)
        stages.append({"stage": s.name, "made": s.made, "seed": s.seed,
                       "train_step": meta.get("train_step", 0) if s.steps else 0, "train_minutes": minutes})
    meta = {
        "train_step": sum(s["train_step"] for s in stages),
        "train_minutes": round(sum(s["train_minutes"] or 0.0 for s in stages), 1),
        "seed": dec.seed,
        "run": 18,
        "trained_as": "python -m training.recipe" + (f" --max-steps-per-stage {plan.max_steps}"
                                                      if plan.max_steps is not None else ""),
        "recipe_stages": stages,
    }
    return bp.save_pipeline(tr, vae, plan.out, meta)


def describe(plan: Plan) -> str:
    lines = [f"{len(STAGES)} stages under {plan.work}, then the pipeline in {plan.out}:"]
    for i, s in enumerate(STAGES, 1):
        side = f", side by side with the other half of {s.group}" if (s.group and plan.parallel) else ""
        rec = f"{s.minutes:.0f} min recorded" if s.minutes else "seconds"
        lines.append(f"{i:2d}. {s.name} [{plan.state(s)}]: {s.made}; {rec}{side}")
        lines.append(f"    python {shlex.join(plan.command(s)[1:])}")
    lines.append(f"then: {plan.out} = {_stage('run18').name}'s transformer with {_stage('run18-decoder').name}'s "
                 "decoder")
    total = wall_minutes(parallel=plan.parallel)
    lines.append(f"expected wall time on 2 CPU cores: about {total / 60:.1f} h ({total:.0f} min, the recorded "
                 f"minutes; {sum(s.minutes for s in STAGES):.0f} min of training in all); one GPU: not measured")
    if plan.max_steps is not None:
        lines.append(f"smoke run: {plan.max_steps} steps a stage of batches of 4, a small data pool, about a second "
                     "of decoder: minutes, not hours, and weights that draw nothing")
    return "\n".join(lines)


def run(plan: Plan, until: str | None = None) -> Path | None:
    """Run every stage not yet done, in order (a group's stages side by side), up to ``until``."""
    names = [s.name for s in STAGES]
    if until is not None and until not in names:
        raise SystemExit(f"--until: no stage {until!r}; stages: {', '.join(names)}")
    stop = names.index(until) if until is not None else len(names) - 1
    plan.work.mkdir(parents=True, exist_ok=True)
    i = 0
    while i <= stop:
        stage = STAGES[i]
        batch = [stage]
        if plan.parallel and stage.group:
            while i + len(batch) <= stop and STAGES[i + len(batch)].group == stage.group:
                batch.append(STAGES[i + len(batch)])
        i += len(batch)
        for s in batch:
            plan.check_folder(s)  # a finished stage of another command must not be taken for this one's
        todo = [s for s in batch if plan.state(s) != "done"]
        for s in batch:
            if s not in todo:
                print(f"{s.name}: done, skipped", flush=True)
        if todo:
            _wait(plan, [(s, _launch(plan, s)) for s in todo])
    if stop < len(STAGES) - 1:
        print(f"stopped after {until}", flush=True)
        return None
    out = assemble(plan)
    print(f"done: {out}", flush=True)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m training.recipe", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--out", required=True, help="where the rebuilt pipeline goes")
    ap.add_argument("--work", default=None,
                    help="the stages' folders (default: training/runs/recipe, or training/runs/recipe-smoke "
                         "with --max-steps-per-stage)")
    ap.add_argument("--dry-run", action="store_true", help="print the stages and their commands; run nothing")
    ap.add_argument("--max-steps-per-stage", type=int, default=None, metavar="N",
                    help="a smoke run: N steps a stage, batches of 4, a small data pool, a second of decoder")
    ap.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage (e.g. run09)")
    ap.add_argument("--threads", type=int, default=2, help="threads of a lone stage (a pair side by side: half each)")
    ap.add_argument("--sequential", action="store_true", help="run run 14's two halves one after the other")
    ap.add_argument("--extra", default="", help='more flags for every training stage, e.g. "--device cuda"')
    return ap.parse_args(argv)


def main(argv=None) -> Path | None:
    args = parse_args(argv)
    work = Path(args.work or ROOT / "training" / "runs" /
                ("recipe-smoke" if args.max_steps_per_stage is not None else "recipe")).resolve()
    plan = Plan(work=work, out=Path(args.out).resolve(), threads=args.threads, max_steps=args.max_steps_per_stage,
                extra=tuple(shlex.split(args.extra)), parallel=not args.sequential and args.threads >= 2)
    print(describe(plan), flush=True)
    if args.dry_run:
        return None
    return run(plan, args.until)


if __name__ == "__main__":
    main()

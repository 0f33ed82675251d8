"""Fit files as Ray tasks (`fit_many(..., backend="ray")`, `splat fit ... --backend ray`).

Each file is one task running `splat.batch.run_job`, with `FileJob.n_threads` CPUs
(and one GPU when the config's device is CUDA), so Ray places as many files on a
node as it has cores for. The tasks read the inputs and write the outputs and
checkpoints themselves, so on a cluster both must lie on storage every node sees
(the same path everywhere); the driver appends the run record as results arrive.
Tasks report no per-step progress, only their result.

`ray` is an optional extra (`pip install splat[ray]`) and is imported only here,
when a batch runs on Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from splat.batch import FileJob, RunRecord, failed_record, run_job
from splat.errors import ParameterError


def run_on_ray(jobs: list[FileJob], *, address: str | None) -> Iterator[tuple[int, RunRecord]]:
    """Run every job as a Ray task; yield (index, record) as each finishes.

    Args:
        jobs: The files to fit.
        address: A running cluster's address ("auto", "ray://host:10001", ...); None
            starts Ray on this machine with all its cores, unless this process has
            already called `ray.init`, whose cluster is then used.

    Raises:
        ParameterError: if Ray is not installed.
        KeyboardInterrupt: on Ctrl-C, after cancelling the tasks (their checkpoints stay).
    """
    try:
        import ray
    except ImportError as exc:
        raise ParameterError("the ray backend needs Ray: pip install 'splat[ray]'") from exc
    from splat.batch import worker_threads

    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(num_cpus=worker_threads(1), include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    try:
        task = ray.remote(_fit_task)
        pending = {
            task.options(num_cpus=job.n_threads or 1, num_gpus=1 if job.config.device.startswith("cuda") else 0).remote(
                job
            ): job
            for job in jobs
        }
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                try:
                    record = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    record = failed_record(job, f"the Ray task failed: {str(exc).splitlines()[0]}")
                yield job.index, record
        except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C here, or in the caller while it holds a record
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        if started_here:
            ray.shutdown()


def _fit_task(job: FileJob) -> RunRecord:
    """One Ray task: fit a file with the threads its CPUs allow."""
    if job.n_threads is not None:
        torch.set_num_threads(job.n_threads)
    return run_job(job)

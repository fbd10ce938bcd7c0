"""Running a list of jobs on Dask: one machinery under ``python -m qlib.experiments.protocol`` and
``python -m qlib.experiments.batch``.

A job is anything with a ``name``, the names of the jobs it ``needs``, the worker ``resources`` it asks for
(``{"GPU": 1}`` for a job that trains on a GPU) and a ``__call__`` that does its work on a worker and returns a one-line
summary: a protocol run (``qlib.experiments.protocol.Job``), a Hessian spectrum, a papermill execution of a chapter
(``qlib.experiments.batch``). ``execute`` hands them to a ``distributed.Client`` in the order they are listed, each once
the jobs it needs have finished and a worker is free, so a QAT row starts as soon as its FP32 Baseline is written.

What a batch system's users expect: a job whose result exists is skipped (``done``), so a restarted run resumes (a job
whose results exist but whose kept model is gone, as on a new machine, runs again just before the first job that starts
from that model: ``defer_model_reruns``); results are written atomically by the worker that ran the job; a failing job
is named with its error and the jobs that need it are reported as not started; each finished job prints a progress line
(done / running / failed / not started); Ctrl-C cancels what has not finished (nothing is half-written) and the summary
still prints, naming what ran on which worker and how long it took.

Where the workers come from (``make_client``): a ``LocalCluster`` sized so the CPU is not oversubscribed
(processes × torch threads ≤ cores), an existing scheduler (``--scheduler tcp://host:8786``), or a SLURM cluster
through ``dask-jobqueue`` (``slurm_cluster``; see the README's recipe).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable, Mapping, Protocol, Sequence

import dask
import torch
from distributed import Client, LocalCluster, get_worker


class Runnable(Protocol):
    """What ``execute`` runs (see the module docstring)."""

    name: str
    needs: tuple[str, ...]

    @property
    def resources(self) -> dict[str, float]: ...

    def done(self) -> bool: ...

    def recorded(self) -> bool:
        """Whether its results exist even where it is not ``done`` (a model it keeps is missing)."""
        ...

    def __call__(self) -> str: ...


@dataclass
class Outcome:
    """What became of one job: ``status`` is ``done`` (ran now), ``skipped`` (its result existed), ``failed``
    (with ``error``) or ``not started`` (a job it needs failed, or the run was interrupted)."""

    name: str
    status: str
    summary: str = ""
    error: str = ""
    worker: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    """The outcomes of one ``execute``, in submission order."""

    outcomes: list[Outcome] = field(default_factory=list)

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> bool:
        return not self.by_status("failed") and not self.by_status("not started")

    def summary(self) -> str:
        """What ran where and how long it took, then the counts."""
        lines = [f"{o.name}: {o.status}" + (f" on {o.worker} in {o.seconds:.0f} s ({o.summary})" if o.status == "done"
                                            else f": {o.error}" if o.error else "")
                 for o in self.outcomes]
        counts = ", ".join(f"{len(self.by_status(s))} {s}" for s in ("done", "skipped", "failed", "not started"))
        return "\n".join([*lines, counts])


def _run_on_worker(job: Runnable, threads: int) -> tuple[str, str, float]:
    """Run ``job`` on a Dask worker with ``threads`` torch threads; returns (summary, worker address, seconds)."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    summary = job()
    try:
        worker = get_worker().address
    except ValueError:  # run outside a worker (Client(processes=False) in a test): the local process
        worker = "local"
    return summary, worker, time.perf_counter() - start


def _slots(client: Client) -> int:
    """How many jobs the cluster runs at once now: its workers' threads (each runs one job at a time)."""
    return sum(client.nthreads().values())


def execute(jobs: Sequence[Runnable], client: Client, threads: int = 1, resume: bool = True,
            progress: Callable[[str], None] = print, fail_fast: bool = False, poll_s: float = 0.5) -> Report:
    """Run ``jobs`` on ``client``'s workers, each after the jobs it ``needs``; returns the ``Report``.

    Jobs start in the order they are listed: whenever a worker is free, the first listed job whose needs have all
    finished is submitted (so a QAT row starts right after its FP32 Baseline, not behind later jobs that need
    nothing). ``execute`` keeps the queue itself and hands Dask only as many jobs as the workers have threads:
    Dask's own priorities cannot do this, since a worker starts its next queued job before the scheduler has
    sent it the job that has just become ready.

    Args:
        jobs: each job's ``needs`` must name jobs listed before it (a job list is built in dependency order).
        client: a ``distributed.Client`` (``make_client``); workers may join while it runs (a SLURM cluster).
        threads: torch threads per job (a worker runs one job at a time).
        resume: skip jobs whose result exists (``done()``); they count as satisfied for the jobs that need them.
        progress: called with one line per finished job.
        fail_fast: at the first failure, cancel every job not finished yet (reported as not started).
        poll_s: how often to look for finished jobs and free workers, in seconds.
    """
    names = [job.name for job in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"job names must be unique; repeated: {duplicates}")
    known: set[str] = set()
    for job in jobs:
        unknown = [n for n in job.needs if n not in known]
        if unknown:
            raise ValueError(f"job {job.name} needs {unknown}, which are not listed before it")
        known.add(job.name)

    outcomes = {job.name: Outcome(job.name, "not started") for job in jobs}
    settled: set[str] = set()  # names whose outcome is final
    waiting: list[Runnable] = []
    for job in jobs:
        if resume and job.done():
            outcomes[job.name] = Outcome(job.name, "skipped")
            settled.add(job.name)
        else:
            waiting.append(job)
    waiting = defer_model_reruns(waiting)
    total, running = len(waiting), {}

    def settle(outcome: Outcome) -> None:  # called once the job has left ``waiting`` or ``running``
        outcomes[outcome.name] = outcome
        settled.add(outcome.name)
        counts = {s: sum(o.status == s for o in outcomes.values()) for s in ("done", "failed", "not started")}
        left = len(waiting) + len(running)
        detail = outcome.summary if outcome.status == "done" else outcome.error
        progress(f"[{total - left}/{total}; {counts['done']} done, {left} to go, {counts['failed']} failed, "
                 f"{counts['not started'] - left} not started] {outcome.status.upper()} {outcome.name}: {detail}")

    try:
        while waiting or running:
            for job in list(waiting):  # in list order, so a failure reaches the jobs that need its dependents too
                failed_need = next((n for n in job.needs
                                    if n in settled and outcomes[n].status in ("failed", "not started")), None)
                if failed_need is not None:
                    waiting.remove(job)
                    settle(Outcome(job.name, "not started", error=f"needs {failed_need}, which did not finish"))
            ready = [job for job in waiting if all(n in settled for n in job.needs)]
            for job in ready[:max(0, _slots(client) - len(running))]:
                waiting.remove(job)
                running[job.name] = client.submit(_run_on_worker, job, threads, key=f"{job.name}-{time.time_ns()}",
                                                  resources=job.resources or None, pure=False)
            finished = [name for name, future in running.items() if future.done()]
            if not finished:
                time.sleep(poll_s)
                continue
            for name in finished:
                future = running.pop(name)
                if future.status == "error":
                    error = future.exception()
                    settle(Outcome(name, "failed", error=f"{type(error).__name__}: {error}"))
                elif future.status == "cancelled":
                    settle(Outcome(name, "not started", error="cancelled"))
                else:
                    summary, worker, seconds = future.result()
                    settle(Outcome(name, "done", summary, worker=worker, seconds=seconds))
                if fail_fast and outcomes[name].status == "failed":
                    client.cancel(list(running.values()))
                    for job in waiting:
                        outcomes[job.name] = Outcome(job.name, "not started", error="cancelled")
                    waiting.clear()
    except KeyboardInterrupt:
        client.cancel(list(running.values()))
        unfinished = [*running, *(job.name for job in waiting)]
        for name in unfinished:
            outcomes[name] = Outcome(name, "not started", error="interrupted (Ctrl-C) before it finished")
        print(f"interrupted: {len(unfinished)} unfinished job(s) cancelled; their results were never written",
              flush=True)
    return Report([outcomes[job.name] for job in jobs])


def defer_model_reruns(waiting: Sequence[Runnable]) -> list[Runnable]:
    """``waiting`` with each job that runs again only for the model it keeps (its results are ``recorded``, its model
    is missing) moved to just before the first waiting job that ``needs`` it: it does not hold up the jobs listed
    between, and is trained again only once something is about to start from it. One that no waiting job needs
    keeps its place (its model is kept for use outside the job list, such as a benchmark).

    Args:
        waiting: the jobs still to run, in list order (a job's needs listed before it).

    Returns:
        The same jobs, in the order ``execute`` offers them to the workers.
    """
    order = list(waiting)
    for job in [j for j in waiting if j.recorded()]:
        first_dependent = next((i for i, j in enumerate(order) if job.name in j.needs), None)
        if first_dependent is not None:
            order.remove(job)  # listed before its dependents: they move up by one
            order.insert(first_dependent - 1, job)
    return order


def select_jobs(jobs: Sequence[Runnable], patterns: Sequence[str]) -> tuple[list[Runnable], list[str]]:
    """The jobs named by ``patterns`` and every job they need, directly or through others, in their listed order.

    Args:
        jobs: a job list in dependency order (a job's needs listed before it).
        patterns: shell-style patterns matched against whole job names, as ``fnmatch`` reads them
            (``"qbert/conll2003/*-seed0"``, ``"spectrum of sst2"``).

    Returns:
        (the selected jobs, the patterns that matched no job's name).
    """
    matches = {p: {j.name for j in jobs if fnmatchcase(j.name, p)} for p in patterns}
    wanted = set().union(*matches.values())
    for job in reversed(jobs):  # needs are listed before the jobs that need them: one backward pass closes the set
        if job.name in wanted:
            wanted.update(job.needs)
    return [j for j in jobs if j.name in wanted], [p for p, names in matches.items() if not names]


def plan_lines(jobs: Sequence[Runnable]) -> list[str]:
    """One line per job saying what a run would do with it: ``done`` (its result exists: skipped), ``rerun`` (its
    results exist but the model it keeps is missing: trained again before a job starts from it), or ``to run``
    (after the needed jobs not done yet, named)."""
    done = {job.name: job.done() for job in jobs}
    lines = []
    for job in jobs:
        pending = [n for n in job.needs if not done.get(n, False)]
        status = "done" if done[job.name] else "rerun" if job.recorded() else "to run"
        lines.append(f"{status:7s}{job.name}" + (f"  (after {', '.join(pending)})" if pending and status != "done"
                                                  else ""))
    return lines


def local_cluster_size(workers: int | None = None, threads: int | None = None,
                       cores: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads per job) for a ``LocalCluster`` on ``cores`` cores: one worker with every
    core by default; never more than the cores (processes × threads ≤ cores), which is refused naming the values."""
    cores = cores or os.cpu_count() or 1
    workers = 1 if workers is None else workers
    threads = max(1, cores // max(workers, 1)) if threads is None else threads
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be positive, got {workers} and {threads}")
    if workers * threads > cores:
        raise ValueError(f"{workers} worker(s) × {threads} thread(s) oversubscribe this machine's {cores} cores; "
                         "two PyTorch jobs sharing cores slow each other many times over")
    return workers, threads


def make_client(scheduler: str | None = None, workers: int | None = None, threads: int | None = None,
                gpus: int | None = None) -> tuple[Client, int]:
    """A Dask client and the torch threads each job gets: on ``scheduler`` (an existing cluster's address; its
    workers set their own resources, e.g. ``dask worker ADDRESS --resources GPU=1``), or on a new ``LocalCluster``
    of ``local_cluster_size`` processes, one job at a time each, with ``GPU`` resources where torch sees GPUs."""
    if scheduler:
        return Client(scheduler), threads or 1
    workers, threads = local_cluster_size(workers, threads)
    gpus = torch.cuda.device_count() if gpus is None else gpus
    resources = {"GPU": max(1, gpus // workers)} if gpus else None
    # No worker-ttl: a run paused with SIGSTOP (to give a benchmark a quiet CPU) stops the scheduler and its workers
    # together, and on resume the scheduler would otherwise see no heartbeat for the whole pause, drop the worker
    # and start its run again from the beginning. No worker profiler: it samples every thread's stack every 10 ms,
    # CPU that a 2-core machine takes from the training (its dashboard is off here anyway).
    with dask.config.set({"distributed.scheduler.worker-ttl": None, "distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               resources=resources)
    return Client(cluster), threads


def close_client(client: Client) -> None:
    """Close ``client`` and the local cluster ``make_client`` started for it (an existing cluster is left running)."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def slurm_cluster(jobs: int, cores: int = 2, memory: str = "24GB", walltime: str = "04:00:00",
                  queue: str | None = None, gpus: int = 0, **options: Any):
    """A ``dask_jobqueue.SLURMCluster`` whose SLURM jobs each start one qbook worker (one run at a time on ``cores``
    CPUs: run it with ``--threads`` = ``cores``; ``GPU`` resources when ``gpus``), scaled to ``jobs`` SLURM jobs.
    ``options`` go to ``SLURMCluster`` (``account``, ``job_extra_directives``…); ``cluster.job_script()`` shows what
    is submitted."""
    from dask_jobqueue import SLURMCluster  # the SLURM recipe's extra: pip install dask-jobqueue

    worker_extra_args = ["--resources", f"GPU={gpus}"] if gpus else []
    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    # One Dask thread (one run at a time) in a SLURM job of ``cores`` CPUs: the run's torch threads use them.
    cluster = SLURMCluster(cores=1, job_cpu=cores, processes=1, memory=memory, walltime=walltime, queue=queue,
                           worker_extra_args=worker_extra_args,
                           job_extra_directives=[*directives, *options.pop("job_extra_directives", [])], **options)
    cluster.scale(jobs=jobs)
    return cluster


def resources_for(device: str | None) -> Mapping[str, float]:
    """The worker resources a job on ``device`` asks for: a GPU for ``cuda``, none for the CPU or ``auto``."""
    return {"GPU": 1} if device is not None and device.startswith("cuda") else {}

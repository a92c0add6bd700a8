"""Two CPU processes (gloo) under DistributedDataParallel: identical replicas, exact resume, resume at another
world size, on real slices of the bundled case."""

from __future__ import annotations

import gc
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.collagan_train.solver import Solver


def _weights(solver: Solver) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in [*solver.G.parameters(), *solver.D.parameters()]])


def _record_indices(solver: Solver, taken: list) -> None:
    """Keep the slice indices this rank trains on."""
    draw = solver._next_batch

    def wrapped():
        batch = draw()
        taken.append(batch[0])
        return batch
    solver._next_batch = wrapped


def _worker(rank: int, world: int, tmp: str, cfg: dict, data, job: str) -> None:
    torch.set_num_threads(1)
    # A file rendezvous: no TCP port to pick, so no race with other processes for it.
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store_{job}", rank=rank, world_size=world)
    results = {}
    if job == "first":
        full = Solver(cfg["four"], data, None, out_dir=f"{tmp}/full", rank=rank, world=world)
        full.train()
        results["full"] = _weights(full)
        half = Solver(cfg["two"], data, None, out_dir=f"{tmp}/half", rank=rank, world=world)
        taken: list = []
        _record_indices(half, taken)
        half.train()  # its last step writes half/latest.pt (rank 0 only)
        results["taken"] = torch.tensor(taken)
    else:
        resumed = Solver.from_checkpoint(f"{tmp}/half/latest.pt", data, None, cfg["four"],
                                         out_dir=f"{tmp}/resumed", rank=rank, world=world)
        resumed.train()
        results["resumed"] = _weights(resumed)
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        torch.save(gathered, f"{tmp}/{job}.pt")
    del results
    gc.collect()  # tear the DDP wrappers down while the interpreter is alive (gloo work freed at exit can abort)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_stay_identical_and_resume_exactly(tiny_cfg, sample_slices, tmp_path: Path):
    def cfg(*overrides: str):
        return tiny_cfg("clsf_warmup_steps=1", *overrides)
    configs = {"four": cfg("steps=4"), "two": cfg("steps=2")}

    mp.spawn(_worker, args=(2, str(tmp_path), configs, sample_slices, "first"), nprocs=2, join=True)
    first = torch.load(tmp_path / "first.pt", weights_only=False)
    assert torch.equal(first[0]["full"], first[1]["full"])  # replicas identical after steps on different slices
    start = _weights(Solver(cfg(), sample_slices, None))
    assert not torch.equal(first[0]["full"], start)  # and they did train
    taken = [first[r]["taken"] for r in range(2)]
    assert not set(taken[0].flatten().tolist()) & set(taken[1].flatten().tolist())  # each rank its own slices

    # A fresh pair of processes continues from the checkpoint: the same weights as the uninterrupted run.
    mp.spawn(_worker, args=(2, str(tmp_path), configs, sample_slices, "resumed"), nprocs=2, join=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert torch.equal(resumed[0]["resumed"], resumed[1]["resumed"])
    assert torch.equal(resumed[0]["resumed"], first[0]["full"])

    # One process takes over the two-process checkpoint: same weights, and it goes on with the epoch's slices
    # neither rank has trained on yet.
    single = Solver.from_checkpoint(str(tmp_path / "half" / "latest.pt"), sample_slices, None, cfg("steps=3"),
                                    out_dir=str(tmp_path / "half"))
    state = torch.load(tmp_path / "half" / "latest.pt", weights_only=False)
    assert single.step == 2 and state["world"] == 2
    assert all(torch.equal(a, b) for a, b in zip(single.G.state_dict().values(), state["G"].values()))
    next_slices = set(single._next_batch()[0])
    assert single.epoch == 0 and not next_slices & set(torch.cat(taken).flatten().tolist())

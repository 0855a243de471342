"""Start N CPU ranks (gloo) as torchrun would, with torch.multiprocessing: the environment torchrun sets, one
thread each (the test machine has two cores)."""

from __future__ import annotations

import multiprocessing
import os
import socket

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_environment(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
    }


def _entry(rank: int, world: int, port: int, worker, args) -> None:
    os.environ.update(rank_environment(rank, world, port))
    torch.set_num_threads(1)
    worker(rank, world, *args)


def spawn(worker, world: int, *args) -> None:
    """Run `worker(rank, world, *args)` in `world` processes; raises if any of them fails.

    The processes are forked, so they start with this process's modules already imported (a fresh interpreter
    spends seconds importing torch and diffusers); no rank touches a thread pool of the parent's."""
    mp.start_processes(_entry, args=(world, free_port(), worker, args), nprocs=world, join=True, start_method="fork")


def start(worker, world: int, *args) -> list[multiprocessing.Process]:
    """The same ranks, forked and left alone: nothing here stops the others when one fails (torchrun and
    `spawn` would), so a test sees what the ranks do by themselves."""
    port, context = free_port(), multiprocessing.get_context("fork")
    processes = [context.Process(target=_entry, args=(rank, world, port, worker, args)) for rank in range(world)]
    for process in processes:
        process.start()
    return processes

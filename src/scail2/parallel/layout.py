"""One generation over several processes: the process groups, guidance split across ranks, the sequence-parallel
plan and FSDP2 weight sharding, applied to a loaded pipeline.

    layout = ParallelLayout.from_environment(device)       # torchrun's RANK / WORLD_SIZE / LOCAL_RANK; None alone
    layout.apply(pipeline, guided=True, shard_weights=False)
    result = pipeline(inputs, settings)                     # the same video on every rank; rank 0 writes it

The N ranks form a grid of `cfg` x `ulysses` = N (rank = cfg_index * ulysses + ulysses_index):

    cfg       2 when the job is guided and N is even: the ranks of cfg_index 0 run the unconditional pass, those
              of index 1 the conditional one, and the two velocities are gathered on every rank; else 1
    ulysses   N / cfg ranks share one pass's tokens (scail2.parallel.ulysses); it must divide the head count

Every rank draws the same noise from the same seed and steps the same sampler on the same gathered velocities,
so the latents stay identical on every rank without being sent. The collectives are torch.distributed's (NCCL on
GPUs, gloo on CPU). A rank that fails tells the others through the rendezvous store and they stop at once
(`FailureWatch`); the collectives also time out (SCAIL2_COLLECTIVE_TIMEOUT_S, 300 s), so no rank waits forever.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from scail2.errors import Scail2Error
from scail2.parallel.ulysses import UlyssesAttention

# Seconds a collective waits for its peers before it fails: far above a step's imbalance between ranks (they run
# the same work), far below a hang nobody notices. SCAIL2_COLLECTIVE_TIMEOUT_S overrides it.
DEFAULT_TIMEOUT_S = 300.0


def collective_timeout_s() -> float:
    return float(os.environ.get("SCAIL2_COLLECTIVE_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def world_size_from_environment() -> int:
    """WORLD_SIZE as torchrun sets it (1 when it is not set)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def grid_shape(world: int, num_heads: int, guided: bool, cfg_parallel: bool = True) -> tuple[int, int]:
    """(cfg, ulysses) for `world` ranks: guidance across two rank groups when guided and `world` is even, the
    rest sequence parallel; raises a one-line Scail2Error when the sequence-parallel size does not divide the
    heads."""
    cfg = 2 if guided and cfg_parallel and world % 2 == 0 else 1
    ulysses = world // cfg
    if num_heads % ulysses:
        split = f"2 for guidance x {ulysses} for the tokens" if cfg == 2 else f"{ulysses} for the tokens"
        raise Scail2Error(
            f"{world} processes ({split}): the token share, {ulysses}, must divide the model's {num_heads} "
            f"attention heads; start one of {', '.join(map(str, valid_process_counts(num_heads, guided)))} processes"
        )
    return cfg, ulysses


def valid_process_counts(num_heads: int, guided: bool) -> list[int]:
    """Process counts `grid_shape` accepts: the divisors of the head count, and under guidance twice those (an
    odd count runs guidance in one batch)."""
    divisors = [n for n in range(1, num_heads + 1) if num_heads % n == 0]
    if not guided:
        return divisors
    return sorted({d for d in divisors if d % 2} | {2 * d for d in divisors})


def check_options(
    world: int,
    *,
    cache: str = "none",
    compile: bool = False,
    offload: str = "none",
    shard_weights: bool = False,
    quantize: str | None = None,
    lora_mode: str = "fused",
) -> None:
    """Raise a one-line Scail2Error for flags that cannot run over `world` processes, before anything loads
    (`lora_mode`: that of the LoRAs given, if any)."""
    if shard_weights and world <= 1:
        raise Scail2Error(
            "--shard-weights splits the weights over several processes: start the job with torchrun "
            "--nproc_per_node N (N > 1)"
        )
    if world <= 1:
        return
    if cache not in ("none", None):
        raise Scail2Error(
            f"--cache {cache} cannot run over {world} processes: each rank would decide alone which "
            "blocks to skip; drop --cache"
        )
    if compile:
        raise Scail2Error(
            f"--compile cannot run over {world} processes yet (the collectives inside the blocks "
            "break the full graph); drop --compile"
        )
    if shard_weights and offload != "none":
        raise Scail2Error(
            f"--shard-weights keeps each rank's share of the weights on its GPU; drop --offload {offload}"
        )
    if shard_weights and quantize is not None:
        raise Scail2Error(
            f"--shard-weights loads plain bf16/fp32 weights, not --quantize {quantize}; drop one of them "
            "(quantised weights fit one GPU)"
        )
    if shard_weights and lora_mode != "fused":
        raise Scail2Error(
            f"--lora-mode {lora_mode} keeps the LoRA layers outside the sharded weights; use --lora-mode fused "
            "with --shard-weights"
        )


def _process_device(device: str | torch.device | None) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK on a GPU machine (or when a cuda device is asked for), else the CPU."""
    kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(kind)


def init_process_group(device: torch.device):
    """torch.distributed from the launcher's environment (env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE):
    NCCL on GPUs, gloo on CPU, with the collective timeout. Returns the rendezvous store, which the ranks also
    use to tell each other of a failure (`FailureWatch`)."""
    timeout = datetime.timedelta(seconds=collective_timeout_s())
    rank, world = int(os.environ.get("RANK", "0")), world_size_from_environment()
    store, rank, world = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout, **kwargs)
    return store


class FailureWatch:
    """Makes every rank stop, with the error of the first rank that failed, within a fraction of a second.

    A failing rank writes its error to the rendezvous store before it raises; every rank polls the store from a
    daemon thread and, on finding an error another rank wrote, prints it and exits at once, wherever its main
    thread is waiting (a collective with the failed rank would otherwise wait for the timeout). A rank whose
    own collective fails first raises the recorded error instead of its transport's.
    """

    poll_s = 0.2
    exit_status = 2

    def __init__(self, store, rank: int):
        self.store, self.rank = store, rank
        # torchrun's store outlives a restart of the workers: each restart has its own key
        self.key = f"scail2/failed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.failed = threading.Event()  # this rank failed (or is raising a peer's failure) itself
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="scail2-failure-watch", daemon=True)
        self.thread.start()

    def recorded(self) -> str | None:
        try:
            return self.store.get(self.key).decode() if self.store.check([self.key]) else None
        except RuntimeError:  # the store's host has exited: nothing more to learn from it
            return None

    def fail(self, error: BaseException) -> Scail2Error:
        """Record `error` unless another rank failed first; the error this rank should raise."""
        self.failed.set()
        first = self.recorded()
        if first is not None and not first.startswith(f"rank {self.rank}:"):
            return Scail2Error(first)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        with contextlib.suppress(RuntimeError):
            self.store.set(self.key, f"rank {self.rank}: {message}")
        return error if isinstance(error, Scail2Error) else Scail2Error(f"rank {self.rank}: {message}")

    def stop(self) -> None:
        self.stopped.set()

    def _watch(self) -> None:
        while not self.stopped.wait(self.poll_s):
            message = self.recorded()
            if message is not None and not self.failed.is_set():
                print(f"scail2: error: {message} (rank {self.rank} stops too)", file=sys.stderr, flush=True)
                os._exit(self.exit_status)


@dataclass
class ParallelLayout:
    """This process's place in a multi-process generation (see the module note)."""

    rank: int
    world: int
    device: torch.device
    cfg: int = 1
    ulysses: int = 1
    cfg_group: object = None  # the ranks that hold the two guidance passes of this rank's tokens
    ulysses_group: object = None  # the ranks that share this rank's pass
    watch: FailureWatch | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls, device: str | torch.device | None = None) -> ParallelLayout | None:
        """The layout of a process started by torchrun with WORLD_SIZE > 1 (the process group is initialised
        here); None for a single process."""
        if world_size_from_environment() <= 1 and not dist.is_initialized():
            return None
        local = _process_device(device)
        if dist.is_initialized():  # a process group of the caller's: no failure watch without its store
            return cls(rank=dist.get_rank(), world=dist.get_world_size(), device=local)
        store = init_process_group(local)
        rank = dist.get_rank()
        return cls(rank=rank, world=dist.get_world_size(), device=local, watch=FailureWatch(store, rank))

    @contextlib.contextmanager
    def failures_shared(self):
        """Any error inside is recorded for the other ranks (which stop at once) and comes out as a one-line
        Scail2Error: this rank's own, or the first failed rank's when a collective broke because of it."""
        try:
            yield
        except Exception as error:
            if self.watch is None:
                raise
            raise self.watch.fail(error) from error

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    @property
    def cfg_index(self) -> int:
        return self.rank // self.ulysses

    def make_groups(self, num_heads: int, guided: bool, cfg_parallel: bool = True) -> None:
        """Split the ranks into the cfg x ulysses grid; every rank calls this with the same arguments."""
        self.cfg, self.ulysses = grid_shape(self.world, num_heads, guided, cfg_parallel)
        timeout = datetime.timedelta(seconds=collective_timeout_s())
        for c in range(self.cfg):  # every rank creates every group, in the same order
            group = dist.new_group([c * self.ulysses + j for j in range(self.ulysses)], timeout=timeout)
            if c == self.cfg_index:
                self.ulysses_group = group
        for j in range(self.ulysses):
            group = dist.new_group([c * self.ulysses + j for c in range(self.cfg)], timeout=timeout)
            if j == self.rank % self.ulysses:
                self.cfg_group = group

    def describe(self) -> str:
        parts = [f"{self.world} processes"]
        if self.cfg > 1:
            parts.append("guidance split over 2")
        if self.ulysses > 1:
            parts.append(f"sequence parallel over {self.ulysses}")
        return ", ".join(parts)

    # Guidance -------------------------------------------------------------------------------------------------
    def splits_guidance(self, text: torch.Tensor) -> bool:
        """True when this layout runs the two rows of guided `text` [2, L, D] on two rank groups."""
        return self.cfg == 2 and text.shape[0] == 2

    def own_text(self, text: torch.Tensor) -> torch.Tensor:
        """This rank's row of [negative, prompt]: [1, L, D]."""
        return text[self.cfg_index : self.cfg_index + 1]

    def gather_guidance(self, own_velocity):
        """velocity(latent, t) of this rank's pass [1, ...] -> the guided pair [unconditional; conditional]
        [2, ...], the same on every rank."""

        def velocity(latent: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            mine = own_velocity(latent, timestep).contiguous()
            parts = [torch.empty_like(mine) for _ in range(self.cfg)]
            dist.all_gather(parts, mine, group=self.cfg_group)
            return torch.cat(parts)

        return velocity

    # Pipeline ------------------------------------------------------------------------------------------------
    def apply(self, pipeline, guided: bool, shard_weights: bool = False, cfg_parallel: bool = True) -> None:
        """Make `pipeline` run one generation across the ranks: the groups, the transformer's sequence-parallel
        plan, FSDP2 sharding of its blocks with `shard_weights`, and the guidance split (`pipeline.parallel`)."""
        transformer = pipeline.transformer
        self.make_groups(transformer.config.num_heads, guided, cfg_parallel)
        if self.ulysses > 1:
            transformer.enable_sequence_parallel(UlyssesAttention(self.ulysses_group, transformer.config.num_heads))
        if shard_weights:
            if not is_sharded(transformer):  # loaded whole (a pipeline of the caller's)
                shard_transformer(transformer, self.device)
            pipeline.vae.to(self.device)  # (loaded on the CPU with the transformer; the encoders visit the GPU)
        pipeline.parallel = self

    def finish(self) -> None:
        """Wait for every rank (rank 0 writes the files meanwhile), then leave the process group."""
        if dist.is_initialized():
            with self.failures_shared():
                dist.barrier()
            if self.watch is not None:
                self.watch.stop()
            dist.destroy_process_group()


def shard_transformer(transformer: torch.nn.Module, device: torch.device | None = None) -> None:
    """FSDP2 over all ranks: every block's weights split between them (gathered for the block's forward, then
    freed), and the rest at the root. All ranks run the same blocks in the same order, whatever pass or tokens
    they hold. Weights still on the CPU move to `device` one block at a time, as each is sharded."""
    if any(p.device.type == "meta" for p in transformer.parameters()):
        raise Scail2Error("--shard-weights needs the transformer's weights in memory: drop --offload")
    shard_modules(transformer, device or next(transformer.parameters()).device)


def shard_modules(transformer: torch.nn.Module, device: torch.device) -> None:
    """`fully_shard` over all ranks, each block by dtype (`shard_by_dtype`), then the root; the weights may be on
    the meta device (scail2.parallel.sharded_load fills the shards afterwards)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in transformer.blocks:
        shard_by_dtype(block, mesh)
    shard_by_dtype(transformer, mesh)


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether FSDP2 already manages `module` (loaded sharded by scail2.parallel.sharded_load)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _unsharded_parameters(module: torch.nn.Module, recurse: bool = True) -> list[torch.nn.Parameter]:
    """The parameters of `module` that no FSDP module below it manages yet."""
    from torch.distributed.fsdp import FSDPModule

    found = list(module.parameters(recurse=False))
    if recurse:
        for child in module.children():
            if not isinstance(child, FSDPModule):
                found += _unsharded_parameters(child)
    return found


def shard_by_dtype(module: torch.nn.Module, mesh) -> None:
    """`fully_shard(module)`, after giving its parts in another dtype their own FSDP groups: FSDP gathers a group
    as one flat buffer of one dtype, and bf16 weights keep their norms, modulation and timestep layers in fp32.

    The module's group keeps the dtype of its own direct parameters (else the dtype most of its weights have);
    a child in another dtype gets its own group, and a child in several dtypes is split the same way."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    params = _unsharded_parameters(module)
    if not params:
        return
    if len({p.dtype for p in params}) > 1:
        own = {p.dtype for p in module.parameters(recurse=False)}
        sizes: dict[torch.dtype, int] = {}
        for p in params:
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
        keep = own.pop() if len(own) == 1 else max(sizes, key=sizes.get)
        for child in module.children():
            dtypes = {p.dtype for p in _unsharded_parameters(child)}
            if not isinstance(child, FSDPModule) and dtypes and dtypes != {keep}:
                shard_by_dtype(child, mesh)
    fully_shard(module, mesh=mesh)

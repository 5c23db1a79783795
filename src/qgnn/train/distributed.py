"""Training under ``torchrun``: DistributedDataParallel with the quantizer state kept identical on every rank.

``torchrun --nproc_per_node N -m qgnn train ...`` (``--nnodes`` / ``--rdzv-endpoint`` for several machines)
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`from_environ` reads them and
:func:`start` joins the process group: gloo on CPU, nccl on CUDA (each rank on GPU ``LOCAL_RANK``), with a
timeout (``QGNN_DIST_TIMEOUT`` seconds, default 600) so that a missing peer or a dead rendezvous ends in one
clear error instead of a hang. Without the launcher (no ``WORLD_SIZE``, or a world of one) nothing here runs.

What each rank does (the runner, :mod:`qgnn.train.runner`, asks :class:`Dist`):

* **Same start.** Every rank seeds the run alike, so the model is built identically (DDP also broadcasts rank
  0's parameters and buffers when it wraps the model); then each rank > 0 moves its own random streams (dropout,
  neighbour sampling, Degree-Quant's masks) to streams of its own (:meth:`Dist.split_streams`), so the ranks do
  not draw the same masks for different batches. Rank 0 keeps the single-process streams.
* **Data split per epoch.** A permutation drawn from a generator shared by all ranks (seeded alike), padded by
  wrapping to a multiple of the world size; rank ``r`` takes positions ``r, r + W, ...``
  (:class:`ShardSampler`, as ``torch.utils.data.DistributedSampler``, but drawing from a generator the resume
  state saves). Every rank gets the same number of batches, which DDP's collectives need. ``--batch-size`` keeps
  its meaning: the batch of one optimizer step, over all ranks (each rank takes ``ceil(batch_size / W)``), so
  the same command gives the same recipe with 1 or N processes. Full-batch node tasks split the training nodes
  once and weight each rank's loss so that the averaged gradient is the single-process one.
* **Graph once per machine** (node tasks): :meth:`Dist.load_shared_graph` maps the graph's large tensors from
  one copy shared by the machine's ranks.
* **Gradients**: DDP averages them (parameters stay identical: LSQ's steps, A2Q's steps and widths, MixQ's
  bit logits, prompts); the recommendation task, whose step calls LightGCN's ``train_forward`` rather than
  ``forward``, averages them before each optimizer step (:meth:`Dist.average_gradients`; GNAQ's levels).
  **Statistics**: observers and first-batch initialisations reduce their
  batch statistics over the ranks inside the forward (:mod:`qgnn.quant.sync`); BatchNorm's running statistics
  are averaged after every optimizer step (:meth:`Dist.average_buffers`; CPU has no ``SyncBatchNorm``).
* **Evaluation once.** Rank 0 evaluates the whole validation / test split, exactly as a single process does, and
  broadcasts the scores, so selection and early stopping decide alike on every rank, and its buffers, so that
  whatever the evaluation wrote into the model (GNAQ refreshes its codes) is the same everywhere.
* **Writes once.** Only rank 0 writes results, checkpoints and the resume state; the state carries every rank's
  random streams (``rng_ranks``), gathered at the save, so each rank resumes its own. A stop request (Ctrl-C,
  SIGTERM from the launcher, on any rank) is agreed at the epoch boundary by an all-reduce: all ranks stop at the
  same epoch, rank 0 saves once, and all wait for the save before leaving.
* **Check.** At the end of every run the ranks compare every parameter and buffer (:meth:`Dist.mismatched`);
  a difference is an error, and the results record ``env.world_size``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from qgnn.errors import QgnnError

__all__ = ["Dist", "DistError", "ShardSampler", "from_environ", "start"]

DEFAULT_TIMEOUT_S = 600.0


class DistError(QgnnError):
    """The distributed run could not start or its ranks disagree."""


@dataclass(frozen=True)
class Launch:
    """What the launcher (torchrun) says about this process."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def from_environ(env=None) -> Launch | None:
    """The launch described by torchrun's variables; None without a launcher or for a world of one."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise DistError(f"torchrun's variables are not integers: WORLD_SIZE={env.get('WORLD_SIZE')!r}, "
                        f"RANK={env.get('RANK')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise DistError(f"RANK={rank} is not a rank of WORLD_SIZE={world}")
    return Launch(rank, world, local, local_world) if world > 1 else None


def _timeout() -> float:
    raw = os.environ.get("QGNN_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        raise DistError(f"QGNN_DIST_TIMEOUT={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise DistError(f"QGNN_DIST_TIMEOUT={raw!r} must be positive")
    return value


def start(launch: Launch, device: str) -> Dist:
    """Join the process group of ``launch`` (gloo for CPU, nccl for CUDA); the :class:`Dist` of this rank."""
    import torch.distributed as dist

    dev = torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        dev = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(dev)
    timeout = _timeout()
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise DistError(f"WORLD_SIZE={launch.world_size} is set but {var} is not: launch with torchrun "
                                f"(torchrun --nproc_per_node {launch.world_size} -m qgnn train ...)")
        try:
            dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size,
                                    timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as e:  # DistStoreError / DistNetworkError are RuntimeErrors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistError(f"rank {launch.rank} of {launch.world_size} could not join its peers at "
                            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout:g} s "
                            f"(QGNN_DIST_TIMEOUT); is WORLD_SIZE right and every rank started? ({first})") from None
    elif dist.get_world_size() != launch.world_size:
        raise DistError(f"the process group has {dist.get_world_size()} ranks, WORLD_SIZE says {launch.world_size}")
    return Dist(launch, backend, dev)


def _share(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s positions ``rank, rank + world, ...`` of ``order`` padded by wrapping to a multiple of
    ``world`` (``ceil(len / world)`` items on every rank; an empty order stays empty)."""
    n = order.numel()
    if n == 0:
        return order
    total = -(-n // world) * world
    return order[torch.arange(rank, total, world) % n]


class ShardSampler(torch.utils.data.Sampler):
    """This rank's share of ``range(n)`` for one epoch (module docstring): a permutation drawn from
    ``generator`` (the same on every rank; None or ``shuffle=False``: the identity order), padded by wrapping
    to a multiple of ``world``, positions ``rank, rank + world, ...``. ``ceil(n / world)`` items on every rank."""

    def __init__(self, n: int, rank: int, world: int, generator: torch.Generator | None, shuffle: bool = True):
        self.n, self.rank, self.world = int(n), int(rank), int(world)
        self.generator, self.shuffle = generator, shuffle

    def __len__(self) -> int:
        return -(-self.n // self.world) if self.n else 0

    def __iter__(self) -> Iterator[int]:
        if self.n == 0:
            return iter(())
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        return iter(_share(order, self.rank, self.world).tolist())


@dataclass(frozen=True)
class Shard:
    """What a task needs to take its share: this rank and the world size."""

    rank: int
    world: int

    def batch_size(self, batch_size: int) -> int:
        """Per-rank batch of a step whose batch over all ranks is ``batch_size``."""
        return max(1, -(-int(batch_size) // self.world))

    def sampler(self, n: int, generator: torch.Generator | None, shuffle: bool = True) -> ShardSampler:
        return ShardSampler(n, self.rank, self.world, generator, shuffle)

    def split(self, idx: torch.Tensor) -> torch.Tensor:
        """A fixed share of ``idx`` (full-batch tasks): positions ``rank, rank + world, ...``."""
        return idx[self.rank::self.world]

    def rows(self, *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's rows of tensors drawn alike on every rank (an epoch's BPR triples): padded by wrapping to a
        multiple of the world size, then rows ``rank, rank + world, ...``, so every rank has as many."""
        take = _share(torch.arange(ts[0].size(0)), self.rank, self.world)
        return tuple(t.index_select(0, take) for t in ts)


SHARE_MIN_BYTES = 1 << 20  # tensors smaller than this are kept per rank: sharing them would save nothing


def _file_backed(t: torch.Tensor) -> bool:
    """Whether ``t``'s memory lies in a mapping of a file (``torch.load(..., mmap=True)``: the sbm cache): the
    page cache already holds such a tensor once for every process that maps the file. Linux only (reads
    ``/proc/self/maps``); elsewhere False."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    ptr = t.data_ptr()
    for line in maps:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[4] != "0" and not parts[5].startswith("["):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False


def _share_dir(nbytes: int) -> Path:
    """Where the machine's first rank writes the graph's tensors for the others to map: ``$QGNN_SHM_DIR``, else
    ``/dev/shm`` when it has room (memory, not disk), else qgnn's cache folder (the page cache shares a file's
    pages between the processes that map it all the same)."""
    import shutil

    from qgnn.data.paths import cache_dir

    if os.environ.get("QGNN_SHM_DIR"):
        return Path(os.environ["QGNN_SHM_DIR"])
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 2 * nbytes:
        return shm
    return cache_dir() / "shared-graphs"


class Dist:
    """This rank's view of a distributed run (module docstring)."""

    def __init__(self, launch: Launch, backend: str, device: torch.device):
        self.launch, self.backend, self.device = launch, backend, device

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def main(self) -> bool:
        return self.launch.rank == 0

    @property
    def local_main(self) -> bool:
        return self.launch.local_rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)

    # -- collectives ---------------------------------------------------------------------------------
    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (on every rank)."""
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """For each flag, whether it holds on any rank (one all-reduce)."""
        import torch.distributed as dist

        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v > 0) for v in t.tolist())

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # -- data ----------------------------------------------------------------------------------------
    def load_shared_graph(self, load):
        """``load()`` (a node dataset) with the graph's large tensors held once per machine (module docstring).

        The ranks of a machine load in turn. A tensor the loader mapped from a file (the sbm cache, read with
        ``torch.load(mmap=True)``) is shared already, by the page cache. The first rank writes every other tensor
        of ``ds.data`` of at least :data:`SHARE_MIN_BYTES` to a file (:func:`_share_dir`) and replaces its own
        copy by a shared mapping of it (``torch.from_file(..., shared=True)``); each next rank loads, maps the
        same files and drops its copy, so a machine holds the graph once plus, while a rank loads, one transient
        copy. The files are unlinked once every rank has mapped them (the mappings stay valid), so nothing is
        left behind. Where the files cannot be written, every rank keeps its own copy (a warning says so).
        ``QGNN_SHARE_GRAPH=0``: every rank holds a private copy of every large tensor (what a loader without
        sharing gives; ``benchmarks/distributed.py --part memory`` compares the two)."""
        import hashlib
        import json
        import warnings

        tag = "-".join(os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))
        folder = None
        ds = None
        for turn in range(self.launch.local_world_size):
            if self.launch.local_rank == turn:
                ds = load()
                data = ds.data
                share = os.environ.get("QGNN_SHARE_GRAPH", "1").strip().lower() not in ("0", "false", "no")
                big = {k: v for k, v in data.items() if torch.is_tensor(v) and v.device.type == "cpu"
                       and v.numel() * v.element_size() >= SHARE_MIN_BYTES}
                if not share:  # a private copy per rank
                    for k, v in big.items():
                        data[k] = v.clone()
                    big = {}
                big = {k: v for k, v in big.items() if not _file_backed(v)}
                folder = _share_dir(sum(v.numel() * v.element_size() for v in big.values())) / \
                    f"qgnn-{os.getuid()}-{hashlib.sha1(tag.encode()).hexdigest()[:12]}"
                try:
                    if big and turn == 0:
                        folder.mkdir(parents=True, exist_ok=True)
                        for k, v in big.items():
                            v.contiguous().numpy().tofile(folder / f"{k}.bin")
                        (folder / "index.json").write_text(json.dumps(sorted(big)))
                    if big and sorted(big) != json.loads((folder / "index.json").read_text()):
                        raise OSError("the ranks loaded different graphs")
                    for k, v in big.items():
                        data[k] = torch.from_file(str(folder / f"{k}.bin"), shared=True, size=v.numel(),
                                                  dtype=v.dtype).view(v.shape)
                except (OSError, RuntimeError, TypeError) as e:
                    warnings.warn(f"rank {self.rank}: the graph could not be shared through {folder} ({e}); "
                                  "this rank keeps a copy of its own", stacklevel=2)
            self.barrier()
        if self.launch.local_rank == 0 and folder is not None:  # every rank has mapped the files: unlink them
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        return ds

    # -- training ------------------------------------------------------------------------------------
    @contextmanager
    def training(self) -> Iterator[None]:
        """Quantizer statistics are reduced over the ranks inside (:mod:`qgnn.quant.sync`)."""
        from qgnn.quant import sync

        with sync.syncing():
            yield

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` under DDP (parameters and buffers broadcast from rank 0 now; gradients averaged at every
        backward). Buffers are not broadcast at each forward: quantizer statistics are reduced where they are
        computed and BatchNorm's are averaged after each step (module docstring). ``find_unused_parameters`` is
        off: every trainable parameter of qgnn's models takes part in each forward (a per-node table entry that
        no batch node reached is still part of the gather), which saves DDP a graph traversal per step; a
        parameter outside the forward makes DDP fail at the next step rather than train wrongly."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        if not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids, forward_sync_buffers=False, find_unused_parameters=False)

    def _flat(self, tensors: list[torch.Tensor], collective) -> None:
        """Run ``collective`` on the concatenation of ``tensors`` (one call for all of them, on the backend's
        device), then copy the result back into each tensor in place."""
        flat = torch.cat([t.reshape(-1).to(tensors[0].dtype) for t in tensors]).to(self._comm_device)
        collective(flat)
        at = 0
        for t in tensors:
            t.copy_(flat[at:at + t.numel()].view_as(t))
            at += t.numel()

    def _mean(self, flat: torch.Tensor) -> None:
        import torch.distributed as dist

        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size

    def average_gradients(self, model: nn.Module) -> None:
        """Average every trainable parameter's gradient over the ranks in one all-reduce (a missing gradient
        counts as zero): what DDP does, for a task whose training step does not go through ``forward`` (the
        recommendation task calls LightGCN's ``train_forward``), hooked before each optimizer step."""
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if params:
            self._flat([p.grad for p in params], self._mean)

    def split_streams(self, seed: int, generators: dict[str, torch.Generator]) -> None:
        """Give rank > 0 random streams of its own (rank 0 keeps the single-process ones): torch's, Python's,
        NumPy's and the task's per-rank ``generators`` (a shared shuffle generator is not passed here)."""
        if self.main:
            return
        from qgnn.train.seeding import set_seed

        own = (int(seed) * 1_000_003 + 7919 * self.rank) % (2**62)
        set_seed(own)
        for i, g in enumerate(generators.values()):
            g.manual_seed(own + 1 + i)

    @torch.no_grad()
    def average_buffers(self, model: nn.Module) -> None:
        """Average BatchNorm running statistics over the ranks (one all-reduce for all of them)."""
        stats = [t for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 for t in (m.running_mean, m.running_var) if t is not None]
        if stats:
            self._flat(stats, self._mean)

    @torch.no_grad()
    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers on every rank, one broadcast per dtype: after an evaluation that only rank 0 ran, so
        that a buffer the evaluation writes (GNAQ's codes, refreshed from its levels) stays the same everywhere."""
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in model.buffers():
            if b.numel():
                by_dtype.setdefault(b.dtype, []).append(b)
        for group in by_dtype.values():
            self._flat(group, lambda flat: dist.broadcast(flat, src=0))

    @torch.no_grad()
    def mismatched(self, model: nn.Module) -> list[str]:
        """Names of the parameters and buffers whose values differ between ranks (empty when all agree)."""
        import torch.distributed as dist

        names, flat = [], []
        for name, t in model.state_dict().items():
            if not torch.is_tensor(t) or t.numel() == 0:
                continue
            names.append((name, t.numel()))
            flat.append(t.detach().reshape(-1).double().nan_to_num(nan=1e300))
        if not flat:
            return []
        v = torch.cat(flat).to(self._comm_device)
        hi, lo = v.clone(), v.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        differs = (hi != lo).cpu()
        out, at = [], 0
        for name, n in names:
            if bool(differs[at:at + n].any()):
                out.append(name)
            at += n
        return out

"""How msrun started this process: its role, rank and the count of ranks."""
import dataclasses
import math
import os

from ..errors import CnnctcError

__all__ = ["Launch", "msrun_launch", "msrun_world", "share", "MAX_RANKS"]

MAX_RANKS = 4096   # reading ranks one relay serves


@dataclasses.dataclass(frozen=True)
class Launch:
    """How msrun started this process: ``role`` "worker" (with its ``rank``) or "scheduler"."""
    role: str
    rank: int
    world: int
    host: str
    port: int
    join_timeout: float = 600.0   # seconds; math.inf: no limit

    def timeout_words(self):
        """How long a rank waits for the others, for a message."""
        return "ever" if math.isinf(self.join_timeout) else f"{self.join_timeout:g} s"

    @property
    def is_scheduler(self):
        return self.role == "scheduler"


def _number(environ, name, default=None):
    text = environ.get(name)
    if text is None:
        if default is None:
            raise CnnctcError(f"msrun started this process without {name}; start it with msrun's own options")
        return default
    try:
        return int(text)
    except ValueError:
        raise CnnctcError(f"{name} is {text[:40]!r}, not a whole number (set by msrun; do not set it by hand)") \
            from None


def msrun_world(environ=None):
    """msrun's worker count (MS_WORKER_NUM) when msrun started this process, else None."""
    environ = os.environ if environ is None else environ
    if environ.get("MS_ROLE") not in ("MS_WORKER", "MS_SCHED"):
        return None
    world = _number(environ, "MS_WORKER_NUM", 1)
    if world < 1:
        raise CnnctcError(f"MS_WORKER_NUM is {world}; msrun starts at least one worker")
    return world


def msrun_launch(environ=None):
    """The :class:`Launch` when msrun started this process with more than one worker (its
    scheduler: with any count), else None: a single process does all the work."""
    environ = os.environ if environ is None else environ
    role = environ.get("MS_ROLE")
    if role not in ("MS_WORKER", "MS_SCHED"):
        return None
    world = msrun_world(environ)
    if world > MAX_RANKS:
        raise CnnctcError(f"MS_WORKER_NUM is {world}: predict and eval read with 1 to {MAX_RANKS} msrun workers; "
                          "give msrun a --worker_num in that range")
    host = environ.get("MS_SCHED_HOST", "127.0.0.1")
    port = _number(environ, "MS_SCHED_PORT", 8118)
    if not 1 <= port <= 65535:
        raise CnnctcError(f"MS_SCHED_PORT is {port}, not a TCP port (1 to 65535); give msrun another --master_port")
    timeout = float(_number(environ, "MS_TOPO_TIMEOUT", 600))
    if timeout <= 0:   # msrun's --cluster_time_out -1 (or 0): wait as long as it takes
        timeout = math.inf
    if role == "MS_SCHED":
        return Launch("scheduler", 0, world, host, port, timeout)
    if world == 1:
        return None
    if environ.get("RANK_ID") is None:
        raise CnnctcError("msrun did not give this worker its rank (no RANK_ID): on several hosts give msrun "
                          "--node_rank on each host, so that every worker knows its rank before it reads")
    rank = _number(environ, "RANK_ID")
    if not 0 <= rank < world:
        raise CnnctcError(f"RANK_ID is {rank}, outside msrun's {world} workers (0 to {world - 1})")
    return Launch("worker", rank, world, host, port, timeout)


def share(count, rank, world):
    """The [start, stop) of ``count`` units that rank ``rank`` of ``world`` takes: contiguous, and
    as even as whole units allow."""
    return count * rank // world, count * (rank + 1) // world

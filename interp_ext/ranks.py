"""The ranks of one ``torchrun`` explain job, and how they agree.

The job has no tensor collectives: each rank explains its own shard, and the ranks only
share small results (ok, message, payload) at the end of each phase. Those go through
torchrun's key-value store, not a process group. A gloo process group would leave its
worker threads running at exit, and a worker that frees the last collective's tensors
while Python finalizes aborts the process ("terminate called without an active
exception"): torch keeps the group alive past ``destroy_process_group`` whenever a
module imported after ``init_process_group`` (torchvision does) captured it.
"""
from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

# Errors that are the user's (bad options, files, a full disk): one line, no traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError, AttributeError, OSError)

Result = tuple[bool, str, Any]


def from_environment() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class Ranks:
    """Every phase ends with every rank sharing (ok, message, payload), so a rank that
    fails never leaves a peer waiting for a result the failed rank will not post.
    One process: no store, nothing shared. Use as a context manager: on exit every rank
    waits until all have read the last phase (rank 0 may be the store's server)."""

    POLL_SECONDS = 0.05

    def __init__(self, rank: int, world: int, store: Any = None, connect_timeout: float = 300.0,
                 command: str = "explain"):
        """`store`: a torch.distributed Store shared by the ranks (default: torchrun's,
        found from the environment); `command`: the subcommand its error lines name."""
        self.rank, self.world, self.command = rank, world, command
        self.store = store
        self._phases = 0
        if world > 1 and store is None:
            import torch.distributed as dist

            store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world,
                                               timeout=timedelta(seconds=connect_timeout)))
            # a restarted torchrun job reuses the agent's store: keys of this attempt only
            attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
            self.store = dist.PrefixStore(f"interp_ext/{attempt}/", store)

    def phase(self, fn: Callable[[], Any], expected: tuple = USER_ERRORS) -> Result:
        """Run `fn` here; (True, '', result) or (False, message, None). Unexpected errors
        propagate in a single process (a traceback); under torchrun they are printed here
        and shared like the others, so every rank ends."""
        try:
            return True, "", fn()
        except expected as e:
            return False, str(e) or type(e).__name__, None
        except Exception as e:
            if self.world == 1:
                raise
            traceback.print_exc()
            return False, f"{type(e).__name__}: {e}", None

    def agree(self, result: Result) -> list[Result]:
        """Every rank's result of this phase, in rank order (waits for the slowest rank;
        torchrun ends the others if a rank dies)."""
        if self.store is None:
            return [result]
        self._phases += 1
        key = f"phase{self._phases}/"
        self.store.set(f"{key}{self.rank}", pickle.dumps(result))
        return [pickle.loads(self._wait(f"{key}{r}")) for r in range(self.world)]

    def _wait(self, key: str) -> bytes:
        while not self.store.check([key]):
            time.sleep(self.POLL_SECONDS)
        return self.store.get(key)

    def failed(self, results: list[Result], code: int, hint: str = "") -> int:
        """0 if every rank succeeded; else print the failures, one line each (every rank
        its own, rank 0 all of them) and return `code` on every rank."""
        bad = [(r, msg) for r, (ok, msg, _) in enumerate(results) if not ok]
        if not bad:
            return 0
        for r, msg in bad:
            if self.rank == 0 or r == self.rank:
                where = f" (rank {r})" if self.world > 1 else ""
                print(f"interp-ext {self.command}: error{where}: {msg}{hint}", file=sys.stderr)
        return code

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, error_type, *exc) -> bool:
        # after the last phase nobody leaves while a peer may still read; a rank that
        # leaves with an error does not wait (torchrun ends its peers)
        if self.store is not None and error_type is None:
            self.agree((True, "", None))
        self.store = None
        return False

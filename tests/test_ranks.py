"""The ranks of a torchrun job agree through a key-value store, with no process group
(whose worker threads aborted the job at exit); every rank sees every rank's result."""
import threading

import pytest
import torch.distributed as dist

from interp_ext.ranks import Ranks


def _run_ranks(world, body):
    """body(ranks) on `world` threads that share one store; each rank's return value."""
    store, results, errors = dist.HashStore(), [None] * world, []

    def one(rank):
        try:
            with Ranks(rank, world, store=store) as ranks:
                results[rank] = body(ranks)
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=one, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    return results


def test_every_rank_sees_every_result_in_rank_order():
    def body(ranks):
        first = ranks.agree(ranks.phase(lambda: ranks.rank * 10))
        second = ranks.agree(ranks.phase(lambda: f"r{ranks.rank}"))
        return [p for _, _, p in first], [p for _, _, p in second]

    for got in _run_ranks(3, body):
        assert got == ([0, 10, 20], ["r0", "r1", "r2"])


def test_a_failing_rank_fails_the_phase_on_every_rank(capsys):
    def body(ranks):
        def work():
            if ranks.rank == 1:
                raise FileNotFoundError("weights missing here")
            return "fine"
        return ranks.failed(ranks.agree(ranks.phase(work)), 2)

    assert _run_ranks(2, body) == [2, 2]
    err = capsys.readouterr().err
    # rank 0 reports every failure, rank 1 its own: one line each
    assert err.count("interp-ext explain: error (rank 1): weights missing here") == 2


def test_unexpected_errors_are_shared_under_torchrun_and_raised_alone(capsys):
    def body(ranks):
        return ranks.agree(ranks.phase(lambda: 1 / (ranks.rank - 1)))[1]

    assert _run_ranks(2, body) == [(False, "ZeroDivisionError: division by zero", None)] * 2
    with pytest.raises(ZeroDivisionError):
        alone = Ranks(0, 1)
        alone.phase(lambda: 1 / 0)


def test_no_process_group_is_made(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a process group was made")

    monkeypatch.setattr(dist, "init_process_group", refuse)
    store = dist.HashStore()
    monkeypatch.setattr(dist, "rendezvous", lambda *a, **k: iter([(store, 0, 1)]))
    ranks = Ranks(0, 1)  # one process: no store either
    assert ranks.store is None and ranks.agree((True, "", 5)) == [(True, "", 5)]
    assert Ranks(0, 2).store is not None and not dist.is_initialized()

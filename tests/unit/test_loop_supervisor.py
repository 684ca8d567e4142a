"""The supervisor in-process, on trio's MockClock: backoff, jitter, restart
budget, and what is not a restart. Every time asserted is virtual time."""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from knhkd.config import SupervisorConfig
from knhkd.loop.supervisor import ActorFailed, Supervisor
from knhkd.telemetry.metrics import Metrics

# The largest value random.random() can return.
ALMOST_ONE = 1.0 - 2.0**-53


class FixedRandom(random.Random):
    """random() always returns ``value``; uniform(a, b) is built on it."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def run(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def restarts_metric(metrics: Metrics, actor: str) -> float | None:
    return metrics.registry.get_sample_value("knhk_actor_restarts_total", {"actor": actor})


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def failing_actor(starts: list[float], failures: int) -> Callable[[], Awaitable[None]]:
    """Raises on its first ``failures`` starts, then returns."""

    async def body() -> None:
        starts.append(trio.current_time())
        if len(starts) <= failures:
            raise ValueError(f"boom {len(starts)}")

    return body


def test_backoff_doubles_per_restart_and_is_capped() -> None:
    cfg = SupervisorConfig(
        backoff_initial_s=1.0, backoff_max_s=10.0, max_restarts=100, window_s=1e6
    )
    metrics = Metrics()
    # 0.5 puts the jitter at its centre: the delays are the bare backoff.
    sup = Supervisor(cfg, metrics, FixedRandom(0.5))
    starts: list[float] = []

    async def main() -> None:
        await sup.supervise("a", failing_actor(starts, failures=7))

    run(main)
    assert starts[0] == 0.0
    assert gaps(starts) == pytest.approx([1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0])
    status = sup.status["a"]
    assert (status.state, status.restarts) == ("stopped", 7)
    assert status.last_error == "ValueError: boom 7"
    assert restarts_metric(metrics, "a") == 7


@pytest.mark.parametrize("value", [0.0, 0.25, 0.5, 0.9, ALMOST_ONE])
def test_jitter_scales_each_delay_by_the_injected_random(value: float) -> None:
    cfg = SupervisorConfig(backoff_initial_s=1.0, backoff_max_s=4.0, max_restarts=100, window_s=1e6)
    sup = Supervisor(cfg, Metrics(), FixedRandom(value))
    starts: list[float] = []

    async def main() -> None:
        await sup.supervise("a", failing_actor(starts, failures=4))

    run(main)
    factor = 0.75 + 0.5 * value
    assert 0.75 <= factor <= 1.25
    # Jitter applies after the cap: a capped delay may reach 1.25 * backoff_max_s.
    assert gaps(starts) == pytest.approx([1.0 * factor, 2.0 * factor, 4.0 * factor, 4.0 * factor])


def test_jitter_from_a_real_generator_stays_within_a_quarter() -> None:
    cfg = SupervisorConfig(
        backoff_initial_s=1.0, backoff_max_s=1.0, max_restarts=1000, window_s=1e6
    )
    sup = Supervisor(cfg, Metrics(), random.Random(20240509))
    starts: list[float] = []

    async def main() -> None:
        await sup.supervise("a", failing_actor(starts, failures=200))

    run(main)
    delays = gaps(starts)
    assert all(0.75 <= d <= 1.25 for d in delays)
    # Spread over the band, not stuck at one value.
    assert min(delays) < 0.8 and max(delays) > 1.2


def test_the_restart_after_the_budget_gives_up_with_actor_failed() -> None:
    cfg = SupervisorConfig(backoff_initial_s=0.1, backoff_max_s=0.1, max_restarts=3, window_s=10.0)
    metrics = Metrics()
    sup = Supervisor(cfg, metrics, FixedRandom(0.5))
    starts: list[float] = []

    async def main() -> None:
        with pytest.raises(ActorFailed) as info:
            await sup.supervise("a", failing_actor(starts, failures=10**6))
        assert info.value.name == "a"
        assert isinstance(info.value.__cause__, ValueError)
        assert str(info.value.__cause__) == "boom 4"

    run(main)
    # Three restarts are allowed; the fourth failure inside the window ends it.
    assert len(starts) == cfg.max_restarts + 1
    assert starts == pytest.approx([0.0, 0.1, 0.2, 0.3])
    status = sup.status["a"]
    assert (status.state, status.restarts) == ("failed", 4)
    assert sup.degraded()
    assert restarts_metric(metrics, "a") == 4


def test_failures_spread_beyond_the_window_never_give_up() -> None:
    cfg = SupervisorConfig(backoff_initial_s=1.0, backoff_max_s=8.0, max_restarts=2, window_s=10.0)
    sup = Supervisor(cfg, Metrics(), FixedRandom(0.5))
    starts: list[float] = []

    async def body() -> None:
        starts.append(trio.current_time())
        if len(starts) > 20:
            return
        # Runs longer than the window before failing: each failure is alone in it.
        await trio.sleep(10.5)
        raise ValueError("late")

    async def main() -> None:
        await sup.supervise("a", body)

    run(main)
    assert len(starts) == 21
    assert sup.status["a"].state == "stopped"
    assert sup.status["a"].restarts == 20
    # Backoff counts recent restarts only, so it never grows here.
    assert gaps(starts) == pytest.approx([11.5] * 20)


@pytest.mark.parametrize(("runs_for", "gives_up"), [(9.0, True), (9.5, False)])
def test_the_window_includes_a_failure_exactly_window_s_ago(
    runs_for: float, gives_up: bool
) -> None:
    cfg = SupervisorConfig(backoff_initial_s=1.0, backoff_max_s=1.0, max_restarts=1, window_s=10.0)
    sup = Supervisor(cfg, Metrics(), FixedRandom(0.5))
    starts: list[float] = []

    async def body() -> None:
        starts.append(trio.current_time())
        if len(starts) == 1:
            raise ValueError("first")  # at t=0
        if len(starts) == 2:
            # Restarted at t=1: fails at t=10 (exactly window_s after the first) or t=10.5.
            await trio.sleep(runs_for)
            raise ValueError("second")

    async def main() -> None:
        if gives_up:
            with pytest.raises(ActorFailed):
                await sup.supervise("a", body)
        else:
            await sup.supervise("a", body)

    run(main)
    assert len(starts) == (2 if gives_up else 3)


def test_a_clean_return_is_not_a_restart() -> None:
    metrics = Metrics()
    sup = Supervisor(SupervisorConfig(), metrics, FixedRandom(0.5))
    starts: list[float] = []

    async def main() -> None:
        await sup.supervise("a", failing_actor(starts, failures=0))

    run(main)
    assert starts == [0.0]
    status = sup.status["a"]
    assert (status.state, status.restarts, status.last_error) == ("stopped", 0, None)
    assert not sup.degraded()
    assert not restarts_metric(metrics, "a")


def test_cancelling_a_running_actor_is_not_a_failure() -> None:
    metrics = Metrics()
    sup = Supervisor(SupervisorConfig(), metrics, FixedRandom(0.5))
    starts: list[float] = []

    async def body() -> None:
        starts.append(trio.current_time())
        await trio.sleep_forever()

    async def main() -> None:
        with trio.move_on_after(5.0) as scope:
            await sup.supervise("a", body)
        assert scope.cancelled_caught
        # Nothing left behind that would restart it later.
        await trio.sleep(3600.0)

    run(main)
    assert starts == [0.0]
    status = sup.status["a"]
    # Cancellation leaves the status as it was: no restart, no error recorded.
    assert (status.state, status.restarts, status.last_error) == ("running", 0, None)
    assert not restarts_metric(metrics, "a")


def test_cancelling_during_the_backoff_stops_the_actor() -> None:
    cfg = SupervisorConfig(backoff_initial_s=10.0, max_restarts=5, window_s=60.0)
    sup = Supervisor(cfg, Metrics(), FixedRandom(0.5))
    starts: list[float] = []

    async def main() -> None:
        with trio.move_on_after(5.0):
            await sup.supervise("a", failing_actor(starts, failures=10**6))
        await trio.sleep(3600.0)

    run(main)
    assert starts == [0.0]
    assert sup.status["a"].state == "restarting"


def test_status_and_metrics_follow_a_restart() -> None:
    cfg = SupervisorConfig(backoff_initial_s=1.0, max_restarts=5, window_s=60.0)
    metrics = Metrics()
    sup = Supervisor(cfg, metrics, FixedRandom(0.5))
    starts: list[float] = []

    async def body() -> None:
        starts.append(trio.current_time())
        if len(starts) == 1:
            raise RuntimeError("disk on fire")
        await trio.sleep_forever()

    seen: list[tuple[float, str, int, str | None, bool, float | None]] = []

    def look() -> None:
        s = sup.status["a"]
        seen.append(
            (
                trio.current_time(),
                s.state,
                s.restarts,
                s.last_error,
                sup.degraded(),
                restarts_metric(metrics, "a"),
            )
        )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.supervise, "a", body)
            await trio.sleep(0.5)
            look()  # inside the backoff
            await trio.sleep(1.0)
            look()  # restarted at t=1
            nursery.cancel_scope.cancel()

    run(main)
    assert starts == [0.0, 1.0]
    assert seen == [
        (0.5, "restarting", 1, "RuntimeError: disk on fire", True, 1.0),
        (1.5, "running", 1, "RuntimeError: disk on fire", False, 1.0),
    ]

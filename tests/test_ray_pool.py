"""The one Ray pool: its actors work, and are released when the block ends, also when it raises."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import ray

from hubtree.pipelines.ray_runtime import actor_pool


@ray.remote(num_cpus=1)
class Echo:
    def __init__(self, n: int):
        self.n = n

    def twice(self, x: int) -> tuple[int, int]:
        return 2 * x, self.n


def _dead(actor, within_s: float = 60.0) -> bool:
    """Whether calls to ``actor`` fail as a dead actor's do within ``within_s`` (ray.kill takes effect asynchronously)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.twice.remote(0), timeout=10)
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.5)
    return False


def test_the_pool_maps_over_its_actors_and_kills_them_at_the_end(ray_local):
    with actor_pool(lambda n: Echo.remote(n), tasks=5) as pool:
        results = sorted(pool.map_unordered(lambda a, x: a.twice.remote(x), range(5)))
        actors = pool.actors
    assert [r[0] for r in results] == [0, 2, 4, 6, 8]
    assert len(actors) == 2 and {r[1] for r in results} == {2}  # min(2 CPUs, 5 tasks), each told the pool size
    assert all(_dead(a) for a in actors)


def test_a_stage_that_raises_still_releases_its_actors(ray_local):
    with pytest.raises(RuntimeError, match="stage failed"):
        with actor_pool(lambda n: Echo.remote(n), tasks=1) as pool:
            actors = pool.actors
            assert ray.get(actors[0].twice.remote(3)) == (6, 1)
            raise RuntimeError("stage failed")
    assert len(actors) == 1 and _dead(actors[0])


@pytest.mark.slow
def test_starting_ray_prints_no_token_notice_and_keeps_token_auth():
    # Ray 2.60 warns on every local start that token authentication is on (its default, kept here).
    code = ("import ray; from hubtree.pipelines.ray_runtime import ensure_ray; ensure_ray(num_cpus=1); "
            "import os; print('auth', os.environ.get('RAY_AUTH_MODE')); ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "auth token" in done.stdout  # Ray still turned token authentication on
    assert "Started a local Ray instance" in done.stderr  # Ray's log does reach the terminal...
    assert "Token authentication is enabled" not in done.stderr  # ...but not the notice


@pytest.mark.slow
def test_a_quiet_verb_keeps_rays_start_up_line_off_the_terminal(tmp_path):
    # `hubtree -q ...` (and the default) set Ray's log level before Ray is imported; the
    # verb here fails at once (no lake), then the same process starts Ray as a stage would.
    code = ("import sys; from hubtree.cli import main\n"
            f"try: main(['-q', 'sql', '--lake', {str(tmp_path / 'none')!r}, 'select 1'])\n"
            "except SystemExit: pass\n"
            "import ray; from hubtree.pipelines.ray_runtime import ensure_ray; ensure_ray(num_cpus=1); ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k != "RAY_LOGGER_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no lake" in done.stderr and "Started a local Ray instance" not in done.stderr

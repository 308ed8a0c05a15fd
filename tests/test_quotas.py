"""Quotas and fair share: `orch.quotas.next_jobs` / `move_cursor` on a real SQLite file, and the sender's rounds.

Ports the original's three quota tests (upstream-spec §7.1) and adds what it got wrong: every dispatched,
unfinished job takes a slot (§16.8), and the round-robin turn carries over from one round to the next (§16.9).
"""

import time
import uuid
from collections import deque
from collections.abc import Iterator

import pytest

from orch.config import ClientConfig, ServiceConfig
from orch.database import open_server_db
from orch.models import Cursor, Job, create, server_db, transition
from orch.quotas import move_cursor, next_jobs
from orch.states import ACTIVE, FINISHED, JOB_TRANSITIONS, Status
from tasks.sender import send_queued
from tests.conftest import job_status, script, services, upload

pytestmark = pytest.mark.both_databases

S = Status
NOW = 1_700_000_000.0


@pytest.fixture
def db(tmp_path) -> Iterator[None]:
    """The server's database in a real file, closed after the test."""
    open_server_db(tmp_path / "s.sqlite")
    yield
    server_db.close()


def service(name: str = "example", runs_per_user: int = 5, max_runs: int = 10) -> ServiceConfig:
    client = ClientConfig.at(f"http://127.0.0.1:9000/{name}")
    return ServiceConfig(name=name, clients=(client,), runs_per_user=runs_per_user, max_runs=max_runs)


def queue(user_id: int, count: int = 1, service_name: str = "example") -> list[int]:
    """Queue `count` jobs of `user_id`; their ids, oldest first."""
    with server_db.atomic():
        return [
            create(Job, S.QUEUED, NOW, user_id=user_id, service=service_name, folder=uuid.uuid4().hex).id
            for _ in range(count)
        ]


def path_to(target: Status, start: Status = S.QUEUED) -> list[Status]:
    """The shortest list of job statuses from `start` to `target` through allowed transitions."""
    routes = {start: [start]}
    todo = deque([start])
    while todo:
        status = todo.popleft()
        for src, dst in JOB_TRANSITIONS:
            if src == status and dst not in routes:
                routes[dst] = [*routes[status], dst]
                todo.append(dst)
    return routes[target]


def move(job_id: int, target: Status) -> None:
    """Move a job from its current status to `target` through transition(), as the tasks would."""
    route = path_to(target, S(Job.get_by_id(job_id).status))
    for src, dst in zip(route, route[1:], strict=False):
        assert transition(Job, job_id, src, dst, NOW)


def active(user_id: int, status: Status = S.RUNNING, count: int = 1, service_name: str = "example") -> list[int]:
    """Jobs of `user_id` that already left the queue and are in `status`."""
    ids = queue(user_id, count, service_name)
    for job_id in ids:
        move(job_id, status)
    return ids


def users(picks: list[tuple[int, int]]) -> list[int]:
    return [user for _, user in picks]


def start(name: str, picks: list[tuple[int, int]]) -> None:
    """What a sender round does with its picks (here straight to Running), then remember who was served last."""
    for job_id, _ in picks:
        move(job_id, S.RUNNING)
    move_cursor(name, picks[-1][1])


# ---- Ported from the original (src/models/queue_dto.rs tests)


def test_round_robin_gives_one_slot_per_user(db):
    """3 users with 5 queued jobs each, RUNS_PER_USER 5, MAX_RUNS 3: exactly 3 jobs, one per user."""
    for user in (1, 2, 3):
        queue(user, 5)
    picks = next_jobs(service(runs_per_user=5, max_runs=3))
    assert len(picks) == 3
    assert sorted(users(picks)) == [1, 2, 3]
    assert len({job for job, _ in picks}) == 3


def test_max_runs_caps_the_service(db):
    """MAX_RUNS 2 with 5 jobs already active: nothing; once they are gone, 2 jobs of 2 different users."""
    running = [job for user in (1, 2, 3, 4, 5) for job in active(user)]
    for user in (1, 2, 3):
        queue(user, 3)
    limits = service(runs_per_user=5, max_runs=2)
    assert next_jobs(limits) == []
    for job_id in running:  # the original deleted them; here they finish
        move(job_id, S.COMPLETED)
    picks = next_jobs(limits)
    assert len(picks) == 2
    assert len(set(users(picks))) == 2


def test_runs_per_user_caps_each_user(db):
    """RUNS_PER_USER 2 with user 1 already at 2 active, MAX_RUNS 10: only user 2, exactly 2 jobs."""
    active(1, count=2)
    queue(1, 5)
    queue(2, 5)
    picks = next_jobs(service(runs_per_user=2, max_runs=10))
    assert users(picks) == [2, 2]


# ---- Every dispatched, unfinished job holds a slot


@pytest.mark.parametrize("status", sorted(ACTIVE))
def test_every_active_status_takes_a_slot_of_the_service(db, status):
    """A Locked or Processing job counts like a Running one (the original let them escape, §16.8)."""
    active(1, status)
    queue(2, 3)
    assert users(next_jobs(service(max_runs=2))) == [2]
    assert next_jobs(service(max_runs=1)) == []


@pytest.mark.parametrize("status", sorted(ACTIVE))
def test_every_active_status_takes_a_slot_of_the_user(db, status):
    active(1, status)
    queue(1, 3)
    queue(2, 1)
    assert users(next_jobs(service(runs_per_user=1))) == [2]
    assert users(next_jobs(service(runs_per_user=2))) == [1, 2]


@pytest.mark.parametrize("status", sorted(FINISHED | {S.CLEANED}))
def test_finished_and_cleaned_jobs_free_their_slot(db, status):
    active(1, status, count=3)
    queue(1, 2)
    assert users(next_jobs(service(runs_per_user=1, max_runs=1))) == [1]


def test_queued_jobs_take_no_slot(db):
    queue(1, 50)
    assert len(next_jobs(service(runs_per_user=3, max_runs=10))) == 3


# ---- Order


def test_oldest_job_first_within_a_user(db):
    first = queue(1)
    queue(2)
    second = queue(1)
    queue(3)
    third = queue(1)
    picks = next_jobs(service(runs_per_user=3, max_runs=10))
    assert [job for job, user in picks if user == 1] == first + second + third


def test_free_slots_go_one_per_user_per_turn_in_user_order(db):
    one, two = queue(1, 3), queue(2, 3)
    picks = next_jobs(service(max_runs=5))
    assert picks == [(one[0], 1), (two[0], 2), (one[1], 1), (two[1], 2), (one[2], 1)]


def test_the_turn_starts_after_the_cursor_and_wraps_around(db):
    for user in (1, 2, 3, 4):
        queue(user, 2)
    move_cursor("example", 2)
    assert users(next_jobs(service(max_runs=3))) == [3, 4, 1]
    assert users(next_jobs(service(max_runs=6))) == [3, 4, 1, 2, 3, 4]


def test_a_cursor_on_a_user_without_queued_jobs_starts_at_the_next_one(db):
    for user in (10, 30):
        queue(user, 2)
    move_cursor("example", 20)
    assert users(next_jobs(service(max_runs=1))) == [30]
    move_cursor("example", 99)
    assert users(next_jobs(service(max_runs=1))) == [10]


def test_next_jobs_only_reads_so_asking_twice_gives_the_same_answer(db):
    for user in (3, 1, 2):
        queue(user, 4)
    move_cursor("example", 1)
    first = next_jobs(service(runs_per_user=2, max_runs=5))
    assert next_jobs(service(runs_per_user=2, max_runs=5)) == first
    assert Cursor.get_by_id("example").user_id == 1


def test_the_turn_goes_on_where_it_stopped_round_after_round(db):
    """Rounds: pick, start, move the cursor, finish the oldest running job: the users are served in turn."""
    for user in (1, 2, 3):
        queue(user, 4)
    limits = service(max_runs=2)
    served = []
    running = deque()
    for _ in range(6):
        picks = next_jobs(limits)
        assert picks, "a slot is free every round"
        start("example", picks)
        served += users(picks)
        running.extend(job for job, _ in picks)
        move(running.popleft(), S.COMPLETED)
    assert served == [1, 2, 3, 1, 2, 3, 1]


def test_each_round_hands_the_free_slots_on_from_where_the_last_round_ended(db):
    for user in (1, 2, 3):
        queue(user, 4)
    limits = service(max_runs=2)
    rounds = []
    for _ in range(4):
        picks = next_jobs(limits)
        start("example", picks)
        rounds.append(users(picks))
        for job_id, _ in picks:
            move(job_id, S.COMPLETED)
    assert rounds == [[1, 2], [3, 1], [2, 3], [1, 2]]


def test_one_job_behind_another_users_thousand_starts_at_the_next_free_slot(db):
    thousand = queue(1, 1000)
    (lone,) = queue(2)
    limits = service(max_runs=1)
    first = next_jobs(limits)
    assert first == [(thousand[0], 1)]
    start("example", first)
    assert next_jobs(limits) == []  # full
    move(thousand[0], S.COMPLETED)
    second = next_jobs(limits)
    assert second == [(lone, 2)]
    start("example", second)
    move(lone, S.COMPLETED)
    assert next_jobs(limits) == [(thousand[1], 1)]


# ---- Limits


def test_users_at_their_limit_are_skipped_without_blocking_others(db):
    active(1, count=2)
    queue(1, 10)
    active(3, count=1)
    queue(3, 10)
    queue(2, 1)
    queue(4, 10)
    picks = next_jobs(service(runs_per_user=2, max_runs=10))
    assert users(picks) == [2, 3, 4, 4]


def test_the_last_free_slots_of_a_service_are_all_used(db):
    active(1, count=7)
    for user in (2, 3):
        queue(user, 5)
    assert users(next_jobs(service(runs_per_user=5, max_runs=10))) == [2, 3, 2]


def test_nothing_is_picked_when_the_service_is_full(db):
    active(1, count=2)
    active(2, S.LOCKED)
    for user in (3, 4):
        queue(user, 2)
    assert next_jobs(service(max_runs=3)) == []
    assert next_jobs(service(max_runs=2)) == []  # over the limit (it was lowered): still nothing


def test_nothing_is_picked_when_nothing_is_queued(db):
    active(1, count=2)
    assert next_jobs(service()) == []


def test_services_are_independent(db):
    active(1, count=2, service_name="busy")
    queue(1, 3, service_name="busy")
    queue(1, 3, service_name="idle")
    queue(2, 3, service_name="idle")
    assert next_jobs(service("busy", runs_per_user=5, max_runs=2)) == []
    assert users(next_jobs(service("idle", runs_per_user=2, max_runs=3))) == [1, 2, 1]
    move_cursor("busy", 1)
    assert users(next_jobs(service("idle", max_runs=1))) == [1]  # another service's cursor does not count
    assert next_jobs(service("other")) == []


def test_move_cursor_remembers_one_user_per_service(db):
    move_cursor("a", 3)
    move_cursor("a", 7)
    move_cursor("b", 1)
    assert dict(Cursor.select(Cursor.service, Cursor.user_id).tuples()) == {"a": 7, "b": 1}


# ---- The sender's rounds, over real HTTP


async def test_the_sender_carries_the_turn_over_from_round_to_round_and_across_a_restart(nodes, client):
    server = nodes("server", **services(client, max_runs=1))
    ones = [(await upload(server, script("exit 0\n"), user_id=1))[1]["id"] for _ in range(3)]
    two = (await upload(server, script("exit 0\n"), user_id=2))[1]["id"]
    now = time.time()

    async def round_(expected: int) -> None:
        nonlocal now
        now += 1
        assert await send_queued(server.ctx, now) == 1
        await server.settle()
        assert job_status(expected) == "Submitted"
        assert await send_queued(server.ctx, now) == 0  # the one slot is taken
        assert transition(Job, expected, S.SUBMITTED, S.COMPLETED, now)

    await round_(ones[0])
    assert Cursor.get_by_id("example").user_id == 1
    await round_(two)
    assert Cursor.get_by_id("example").user_id == 2
    server_db.close()
    open_server_db(server.config.database)  # the cursor is in the database: a restart keeps the turn
    await round_(ones[1])
    await round_(ones[2])
    assert await send_queued(server.ctx, now + 1) == 0

"""What people look at: `GET /jobs` and `GET /jobs/{id}`, the dashboard's `/overview`, `/metrics` on both modes,
and the Swagger pages that document them."""

import json
import uuid
import zipfile

import pytest

from orch import history, jobs, timings
from orch.models import Job, create, server_db
from orch.states import Status
from tasks.getter import poll_dispatched
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tests.conftest import job_status, script, services, upload, wait_for

NOW = 1_800_000_000.0

pytestmark = pytest.mark.both_databases


def add_jobs(count: int, **values) -> list[int]:
    """Jobs straight into the database (as a long history would have them)."""
    rows = [
        {
            "user_id": 1,
            "service": "example",
            "status": Status.CLEANED,
            "folder": f"f{n}-{values.get('user_id', 1)}-{values.get('status', '')}",
            "created_at": NOW + n,
            "updated_at": NOW + n,
            **values,
        }
        for n in range(count)
    ]
    first = Job.select(Job.id).order_by(Job.id.desc()).scalar() or 0
    Job.insert_many(rows).execute()
    return list(range(first + 1, first + count + 1))


async def run_job(server, client, body: str, user_id: int = 1) -> int:
    """Upload a job and run it to its end with the ticks."""
    _, answer = await upload(server, script(body), user_id=user_id)
    job = answer["id"]
    await send_queued(server.ctx, server.ctx.clock())
    await server.settle()
    await start_prepared(client.ctx, client.ctx.clock())

    async def ended():
        await poll_dispatched(server.ctx, server.ctx.clock())
        await server.settle()
        return job_status(job) in ("Completed", "Failed")

    await wait_for(ended)
    return job


# --- GET /jobs


async def test_jobs_are_listed_newest_first_a_page_at_a_time(server):
    ids = add_jobs(7)
    code, page = await server.json("/jobs?limit=3")
    assert code == 200
    assert [job["id"] for job in page["jobs"]] == ids[::-1][:3]
    assert page["next"] == ids[4]
    _, second = await server.json(f"/jobs?limit=3&before={page['next']}")
    _, last = await server.json(f"/jobs?limit=3&before={second['next']}")
    assert [job["id"] for job in second["jobs"] + last["jobs"]] == ids[::-1][3:]
    assert last["next"] is None
    assert set(page["jobs"][0]) == {
        "id",
        "user_id",
        "service",
        "status",
        "message",
        "client",
        "created_at",
        "updated_at",
        "finished_at",
    }


async def test_jobs_are_filtered_by_user_service_status_and_time(server):
    mine = add_jobs(3, user_id=7)
    others = add_jobs(3, user_id=8)
    failed = add_jobs(2, user_id=8, status=Status.FAILED, service="other")
    unknown = add_jobs(1, user_id=9, status=Status.UNKNOWN)

    async def ids(query: str) -> list[int]:
        code, page = await server.json(f"/jobs?{query}")
        assert code == 200, page
        return sorted(job["id"] for job in page["jobs"])

    assert await ids("user_id=7") == mine
    assert await ids("service=other") == failed
    assert await ids("status=Failed,Unknown") == sorted(failed + unknown)
    assert await ids("status=Failed&status=Unknown") == sorted(failed + unknown)
    assert await ids("user_id=8&status=Failed") == failed
    assert await ids(f"since={NOW + 1}&until={NOW + 2}&user_id=7") == [mine[1]]
    second = sorted([mine[1], others[1], failed[1]])  # each batch's second job was created at NOW + 1
    assert await ids("since=2027-01-15T08:00:01Z&until=2027-01-15T08:00:02%2B00:00") == second


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit must be between 1 and 1000, got 0"),
        ("limit=abc", "limit must be a whole number, got 'abc'"),
        ("user_id=1.5", "user_id must be a whole number, got '1.5'"),
        ("before=99999999999999999999", "before is out of range: '99999999999999999999'"),
        ("status=Done", "status 'Done' is not one of"),
        ("since=yesterday", "since must be Unix seconds or an ISO 8601 time, got 'yesterday'"),
        ("until=nan", "until must be Unix seconds or an ISO 8601 time, got 'nan'"),
        ("colour=red", "unknown parameter 'colour'"),
    ],
)
async def test_a_wrong_query_is_refused_with_a_message_naming_it(server, query, message):
    code, body = await server.json(f"/jobs?{query}")
    assert code == 400
    assert body["id"] == 0 and body["message"].startswith(message)


@pytest.mark.sqlite  # PostgreSQL's planner reads a table this small whole, whatever its indexes
def test_a_page_is_read_from_an_index_whatever_the_filters(server):
    """No filter makes SQLite read the whole table: a page is an index range read newest first, or (a user's)
    the user's jobs only."""
    add_jobs(50)
    filters = [
        history.Filters(),
        history.Filters(user_id=3),
        history.Filters(statuses=("Failed",)),
        history.Filters(user_id=3, statuses=("Failed",), before=10),
        history.Filters(service="example", since=NOW),
    ]
    for wanted in filters:
        sql, params = history.page(wanted).sql()
        plan = " ".join(row[3] for row in server_db.execute_sql(f"EXPLAIN QUERY PLAN {sql}", params))
        if wanted.user_id is not None or wanted.statuses:
            assert "SCAN" not in plan, (wanted, plan)  # an index range, not every row
        if wanted.user_id is None:
            assert "TEMP B-TREE" not in plan, (wanted, plan)  # no sort: read newest first, up to the limit


# --- GET /jobs/{id}


async def test_a_job_is_told_whatever_its_status_with_its_history_attempts_client_and_result_size(server, client):
    job = await run_job(server, client, "echo done > out.txt\n")
    code, body = await server.json(f"/jobs/{job}")
    assert code == 200
    assert (body["id"], body["status"], body["client"], body["attempts"]) == (job, "Completed", client.url, 1)
    with zipfile.ZipFile(server.config.data_path / f"{Job.get_by_id(job).folder}.zip") as result:
        assert "out.txt" in result.namelist()
    assert body["result_size"] == (server.config.data_path / f"{Job.get_by_id(job).folder}.zip").stat().st_size
    steps = [(event["from"], event["to"]) for event in body["history"]]
    assert steps[:3] == [(None, "Queued"), ("Queued", "Processing"), ("Processing", "Submitted")]
    assert steps[-1][1] == "Completed"
    assert body["history"][0]["reason"] == "uploaded"
    assert all(isinstance(event["at"], float) for event in body["history"])

    _, queued = await upload(server, script("exit 0\n"))
    _, waiting = await server.json(f"/jobs/{queued['id']}")
    assert (waiting["status"], waiting["attempts"], waiting["result_size"], waiting["client"]) == (
        "Queued",
        1,  # its first, not made yet
        None,
        None,
    )
    assert (await server.json("/jobs/abc"))[0] == 400


# --- /overview


async def test_the_overview_counts_queues_users_clients_and_tells_failures(nodes):
    client = nodes("client")
    server = nodes("server", **services(client, runs_per_user=1, max_runs=3))
    failed = await run_job(server, client, "echo broken >&2; exit 4\n", user_id=5)
    for user in (1, 1, 2):
        await upload(server, script("sleep 30\n"), user_id=user)
    await send_queued(server.ctx, server.ctx.clock())
    await server.settle()
    code, overview = await server.json("/overview")
    assert code == 200
    (example,) = overview["services"]
    assert example == {
        "name": "example",
        "queued": 1,
        "running": 0,
        "active": 2,
        "max_runs": 3,
        "runs_per_user": 1,
    }
    users = {(user["service"], user["user_id"]): (user["queued"], user["active"]) for user in overview["users"]}
    assert users == {("example", 1): (1, 1), ("example", 2): (0, 1)}
    assert overview["users"][0]["user_id"] == 1  # most queued first
    (on_client,) = overview["clients"]
    assert on_client["address"] == client.url and on_client["services"] == ["example"]
    assert on_client["up"] is True and on_client["jobs"] == 2
    assert 0 <= on_client["load"] <= 100
    assert [(job["id"], job["status"], job["message"]) for job in overview["failures"]] == [
        (failed, "Failed", "run.sh exited with code 4")
    ]


async def test_the_overview_tells_a_client_that_does_not_answer(nodes):
    client = nodes("client")
    server = nodes("server", **services(client))
    client.stop()
    await upload(server, script("exit 0\n"))
    await send_queued(server.ctx, server.ctx.clock())
    await server.settle()
    _, overview = await server.json("/overview")
    (down,) = overview["clients"]
    assert down["up"] is False and down["load"] is None
    assert "could not be reached" in down["reason"]


# --- /metrics


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, from the Prometheus text format."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


async def test_server_metrics_count_jobs_queues_quotas_clients_and_time_jobs(nodes):
    client = nodes("client")
    server = nodes("server", **services(client, runs_per_user=1, max_runs=4))
    await run_job(server, client, "exit 0\n")
    await run_job(server, client, "exit 2\n", user_id=2)
    for _ in range(3):
        await upload(server, script("sleep 30\n"), user_id=3)
    await send_queued(server.ctx, server.ctx.clock())
    await server.settle()
    response = await server.fetch("/metrics")
    assert response.code == 200 and response.headers["Content-Type"].startswith("text/plain")
    found = samples(response.body.decode())
    assert found['orchestrator_info{mode="server",version="1.0.0"}'] == 1
    assert found['orchestrator_jobs{service="example",status="Completed"}'] == 1
    assert found['orchestrator_jobs{service="example",status="Failed"}'] == 1
    assert found['orchestrator_jobs{service="example",status="Queued"}'] == 2
    assert found['orchestrator_queue_depth{service="example"}'] == 2
    assert found['orchestrator_user_queue_depth{service="example",user_id="3"}'] == 2
    assert found['orchestrator_active_jobs{service="example"}'] == 1
    assert found['orchestrator_max_runs{service="example"}'] == 4
    assert found['orchestrator_user_active_jobs{service="example",user_id="3"}'] == 1
    assert found['orchestrator_runs_per_user{service="example"}'] == 1
    assert found[f'orchestrator_client_up{{client="{client.url}"}}'] == 1
    assert found[f'orchestrator_client_jobs{{client="{client.url}"}}'] == 1
    assert found['orchestrator_queue_seconds_count{service="example"}'] == 3  # three jobs were sent
    assert found['orchestrator_run_seconds_count{service="example"}'] == 2  # two ended
    assert found['orchestrator_run_seconds_bucket{le="+Inf",service="example"}'] == 2


def test_a_run_is_timed_from_its_send_whatever_a_failed_terminate_or_an_earlier_attempt_left(server):
    s = Status
    ran, requeued = (create(Job, s.QUEUED, NOW, user_id=1, service="example", folder=uuid.uuid4().hex) for _ in "ab")
    for job in (ran, requeued):
        assert jobs.move(server.ctx, job.id, s.QUEUED, s.PROCESSING, now=NOW + 1)
        assert jobs.move(server.ctx, job.id, s.PROCESSING, s.SUBMITTED, now=NOW + 2)
    assert jobs.move(server.ctx, ran.id, s.SUBMITTED, s.LOCKED, now=NOW + 50)
    assert jobs.move(server.ctx, ran.id, s.LOCKED, s.SUBMITTED, now=NOW + 50)  # the terminate failed
    assert jobs.move(server.ctx, ran.id, s.SUBMITTED, s.COMPLETED, now=NOW + 102)
    assert jobs.move(server.ctx, requeued.id, s.SUBMITTED, s.QUEUED, now=NOW + 10)  # lost with its client
    assert jobs.move(server.ctx, requeued.id, s.QUEUED, s.KILLED, now=NOW + 20)  # cancelled before it ran again
    histogram = timings.registry(server.ctx).registry
    assert histogram.get_sample_value("orchestrator_run_seconds_count", {"service": "example"}) == 1
    assert histogram.get_sample_value("orchestrator_run_seconds_sum", {"service": "example"}) == 100


async def test_client_metrics_count_payloads_by_status(server, client):
    await run_job(server, client, "exit 0\n")
    found = samples((await client.fetch("/metrics")).body.decode())
    assert found['orchestrator_info{mode="client",version="1.0.0"}'] == 1
    assert found['orchestrator_payloads{status="Completed"}'] == 1


# --- the Swagger pages


async def test_the_server_page_documents_its_own_api_with_examples_and_a_token(server):
    _, spec = await server.json("/api-docs/openapi.json")
    upload_form = spec["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload_form["properties"]["service"]["description"] == "A configured service, e.g. example."
    assert set(upload_form["properties"]) == {"file", "user_id", "service"}
    assert "Payload" not in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert "portals" in spec["info"]["description"]
    errors = [
        response
        for operations in spec["paths"].values()
        for operation in operations.values()
        for code, response in operation["responses"].items()
        if code >= "400"
    ]
    errors += spec["components"]["responses"].values()
    examples = [response["content"]["application/json"]["example"] for response in errors if "$ref" not in response]
    assert len(examples) > 10 and all(example.get("message") or example.get("database") for example in examples)
    shared = [
        response["content"]["application/json"]["example"] for response in spec["components"]["responses"].values()
    ]
    assert {example["status"] for example in shared} == {"Unknown"}
    bad_upload = spec["paths"]["/upload"]["post"]["responses"]["400"]["content"]["application/json"]["example"]
    assert bad_upload["status"] == "Unknown" and bad_upload["message"].startswith("Invalid service")


async def test_the_client_page_documents_the_token_on_every_call_about_payloads(client):
    _, spec = await client.json("/api-docs/openapi.json")
    assert "called by the server" in spec["info"]["description"]
    assert set(spec["components"]["schemas"]) == {"StatusBody", "Payload"}
    for path in ("/submit", "/events", "/retrieve/{payload_id}", "/kill/{payload_id}", "/load"):
        for operation in spec["paths"][path].values():
            assert operation["security"] == [{"token": []}], path
    assert "401" in spec["paths"]["/events"]["get"]["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]


async def test_the_dashboard_is_served_from_static_without_a_cdn(server, client):
    page = await server.fetch("/dashboard/")
    assert page.code == 200 and "https://" not in page.body.decode()
    for asset in ("dashboard.js", "dashboard.css"):
        response = await server.fetch(f"/dashboard/{asset}")
        assert response.code == 200 and b"https://" not in response.body
    assert (await server.fetch("/dashboard", follow_redirects=False)).headers["Location"] == "/dashboard/"
    missing = await server.fetch("/dashboard/nothing.js")
    assert missing.code == 404 and json.loads(missing.body)["message"]
    assert (await client.fetch("/dashboard/")).code == 404  # a client has no jobs to show

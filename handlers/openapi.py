"""The OpenAPI document of each mode, built from the handlers' docstrings, with the schemas and error answers
they refer to (`$ref: "#/components/..."`)."""

from tornado_swagger.const import API_OPENAPI_3
from tornado_swagger.setup import export_swagger

from orch import VERSION
from orch.states import JOB_STATUSES, PAYLOAD_STATUSES

DESCRIPTIONS = {
    "server": "The API that portals call: upload a job (its files and a run.sh), follow it, download its result, "
    "terminate it; look jobs up; watch queues and clients. Errors answer `{id, status, message}`. See the README.",
    "client": "The API of a client, on a compute node, called by the server only: it receives jobs as payloads, runs "
    "their run.sh and answers their results. When ORCH_TOKEN is set, every call about payloads must carry it "
    "(Authorize). Errors answer `{id, status, message}`.",
}
STATUS_BODY = {
    "type": "object",
    "required": ["id", "status", "message"],
    "properties": {
        "id": {"type": "integer", "description": "The job's id (0 when the error concerns no job)."},
        "status": {"type": "string", "enum": sorted(JOB_STATUSES)},
        "message": {"type": "string", "description": "What happened; the reason for Failed, Invalid, Unknown."},
    },
}
PAYLOAD = {
    "type": "object",
    "required": ["id", "input", "status", "loc", "pid", "killed"],
    "properties": {
        "id": {"type": "integer"},
        "input": {"type": "object", "description": "Always empty: the files are not echoed back."},
        "status": {"type": "string", "enum": sorted(PAYLOAD_STATUSES)},
        "loc": {"type": "string", "description": "The payload's folder on the client."},
        "pid": {"type": "integer", "description": "The process group running run.sh (0 before it starts)."},
        "killed": {"type": "boolean"},
        "message": {"type": "string"},
        "exit_code": {"type": "integer", "nullable": True},
        "job_key": {"type": "string", "nullable": True, "description": "The server's name for the job."},
    },
}
TIME = {"type": "number", "description": "Unix seconds."}
JOB_SUMMARY = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "user_id": {"type": "integer"},
        "service": {"type": "string"},
        "status": {"type": "string", "enum": sorted(JOB_STATUSES)},
        "message": {"type": "string", "description": "The reason for Failed, Invalid, Unknown."},
        "client": {"type": "string", "nullable": True, "description": "The client it was sent to."},
        "created_at": TIME,
        "updated_at": TIME,
        "finished_at": {**TIME, "nullable": True},
    },
}
JOB_DETAIL = {
    "allOf": [
        {"$ref": "#/components/schemas/JobSummary"},
        {
            "type": "object",
            "properties": {
                "attempts": {"type": "integer", "description": "How many times it was sent to a client."},
                "result_size": {"type": "integer", "nullable": True, "description": "Bytes of its result zip."},
                "history": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "from": {"type": "string", "nullable": True},
                            "to": {"type": "string"},
                            "at": TIME,
                            "reason": {"type": "string"},
                        },
                    },
                },
            },
        },
    ]
}
COUNTS = {"queued": {"type": "integer"}, "running": {"type": "integer"}, "active": {"type": "integer"}}
OVERVIEW = {
    "type": "object",
    "properties": {
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    **COUNTS,
                    "max_runs": {"type": "integer", "nullable": True},
                    "runs_per_user": {"type": "integer", "nullable": True},
                },
            },
        },
        "users": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"service": {"type": "string"}, "user_id": {"type": "integer"}, **COUNTS},
            },
        },
        "clients": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "address": {"type": "string"},
                    "services": {"type": "array", "items": {"type": "string"}},
                    "up": {"type": "boolean"},
                    "down_for": {"type": "number"},
                    "reason": {"type": "string"},
                    "jobs": {"type": "integer"},
                    "running": {"type": "integer"},
                    "load": {"type": "number", "nullable": True, "description": "CPU use in percent."},
                },
            },
        },
        "failures": {"type": "array", "items": {"$ref": "#/components/schemas/JobSummary"}},
        "at": TIME,
    },
}
SCHEMAS = {
    "server": {"StatusBody": STATUS_BODY, "JobSummary": JOB_SUMMARY, "JobDetail": JOB_DETAIL, "Overview": OVERVIEW},
    "client": {"StatusBody": STATUS_BODY, "Payload": PAYLOAD},
}
# Error answers that several endpoints share, referred to as `$ref: "#/components/responses/<name>"`: what
# they mean, and an example body.
ERRORS = {
    "BadId": ("The id is not a number.", 0, "Invalid id 'abc': expected a whole number"),
    "BadQuery": ("A parameter is unknown or wrong.", 0, "limit must be between 1 and 1000, got 0"),
    "Unauthorized": (
        "A token is needed (ORCH_TOKEN on a client, API_TOKEN on a server) and the call carries none of them.",
        0,
        "missing or wrong token: calls to a client need ORCH_TOKEN",
    ),
    "NoSuchJob": ("No such job.", 42, "Job 42 not found in the database"),
    "NoSuchPayload": ("No such payload.", 42, "Payload 42 not found"),
    "Gone": (
        "The X-Orchestrator-Job or X-Orchestrator-Instance header names another job or client instance than "
        "this payload's; nothing was done.",
        0,
        "payload 42 is another job's payload, not 6f1c...'s",
    ),
    "TooLarge": ("The body is over MAX_UPLOAD_SIZE.", 0, "the upload is larger than the limit of 419430400 bytes"),
}
TOKEN = {
    "type": "http",
    "scheme": "bearer",
    "description": "The shared secret, sent as `Authorization: Bearer <token>`.",
}


def openapi(mode: str, api: list, services: list[str]) -> dict:
    """The OpenAPI 3 document of `mode`, describing the routes `api`; the upload's `service` field lists the
    configured `services` (so that calls made from the page can create jobs)."""
    spec = export_swagger(
        api,
        api_definition_version=API_OPENAPI_3,
        title=f"job-orchestrator {mode}",
        api_version=VERSION,
        description=DESCRIPTIONS[mode],
    )
    spec["components"]["schemas"] = SCHEMAS[mode]
    spec["components"]["responses"] = {
        name: {
            "description": text,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/StatusBody"},
                    "example": {"id": job_id, "status": "Unknown", "message": message},
                }
            },
        }
        for name, (text, job_id, message) in ERRORS.items()
    }
    spec["components"]["securitySchemes"] = {"token": TOKEN}
    if mode == "server":  # the portals' API: the token is sent when given (Authorize), required by none here
        spec["security"] = [{}, {"token": []}]
    if services and "/upload" in spec["paths"]:
        schema = spec["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        schema["properties"]["service"]["enum"] = services
    return spec

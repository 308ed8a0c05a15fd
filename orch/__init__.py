"""The domain of job-orchestrator: configuration, state machines, storage, and what happens to jobs (server)
and payloads (client). No HTTP handlers here, no scheduling."""

VERSION = "1.0.0"

"""The command line of portal developers and operators: `submit`, `status`, `wait`, `download`, `cancel` and
`jobs`, each a call of `orch.portal` to the server at `--url` (or ORCH_URL), with `--token` (or ORCH_API_TOKEN)
where it has API_TOKEN. A failure is one line on stderr and exit status 1, never a traceback."""

import argparse
import json
import sys
import time
from typing import TextIO

from orch.portal import Orchestrator, OrchestratorError

DEFAULT_URL = "http://localhost:5000"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the commands that talk to a server."""
    submit = _command(subparsers, "submit", "upload a job: its files, one of them run.sh")
    submit.add_argument("--service", required=True, help="a service configured on the server")
    submit.add_argument("--user", required=True, type=int, help="the user id the job counts against")
    submit.add_argument("files", nargs="+", metavar="FILE", help="the job's files (one named run.sh)")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("-o", "--output", help="with --wait: save the result zip here once Completed")
    status = _command(subparsers, "status", "a job's status and history")
    status.add_argument("job", type=int, metavar="ID")
    status.add_argument("--json", action="store_true", help="print the server's JSON")
    wait = _command(subparsers, "wait", "follow a job until it ends (exit status 0 if Completed)")
    wait.add_argument("job", type=int, metavar="ID")
    wait.add_argument("-o", "--output", help="save the result zip here once Completed")
    download = _command(subparsers, "download", "save a Completed job's result zip")
    download.add_argument("job", type=int, metavar="ID")
    download.add_argument("-o", "--output", help="where to save it (default: job-ID.zip)")
    download.add_argument("--partial", action="store_true", help="a zip of the job's folder as it is now")
    cancel = _command(subparsers, "cancel", "terminate a job (queued: cancelled; running: killed)")
    cancel.add_argument("job", type=int, metavar="ID")
    jobs = _command(subparsers, "jobs", "list jobs, newest first")
    jobs.add_argument("--user", type=int, help="only this user's")
    jobs.add_argument("--service", help="only this service's")
    jobs.add_argument("--status", action="append", help="only jobs in this status (repeat for several)")
    jobs.add_argument("--since", help="created at or after (Unix seconds or ISO 8601)")
    jobs.add_argument("--until", help="created before (Unix seconds or ISO 8601)")
    jobs.add_argument("--limit", type=int, help="how many (default 50)")
    jobs.add_argument("--before", type=int, metavar="ID", help="only jobs older than this one (the next page)")
    jobs.add_argument("--json", action="store_true", help="print the server's JSON")


def _command(subparsers: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=text, description=text + ".")
    parser.add_argument("--url", help=f"the server (ORCH_URL; default {DEFAULT_URL})")
    parser.add_argument("--token", help="one of the server's API_TOKEN, when it has them (ORCH_API_TOKEN)")
    return parser


def run(
    args: argparse.Namespace, url: str, token: str | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Run the command named by `args.mode` against the server at `url` (with its API `token`, if it needs one);
    return the exit status."""
    server = Orchestrator(url, token=token)
    try:
        return COMMAND_FUNCTIONS[args.mode](server, args, out, err)
    except OrchestratorError as e:
        print(f"job-orchestrator {args.mode}: {e.message}", file=err)
        return 1
    except OSError as e:  # a file to upload that cannot be read, an output that cannot be written
        print(f"job-orchestrator {args.mode}: {e.strerror}: {e.filename}", file=err)
        return 1


def _submit(server: Orchestrator, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with Bar(err, "upload") as bar:
        job = server.submit(args.service, args.user, args.files, bar.update)
    _show(out, job)
    if not args.wait:
        return 0
    return _follow(server, job["id"], args.output, out, err)


def _status(server: Orchestrator, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    job = server.status(args.job)
    if args.json:
        print(json.dumps(job, indent=2), file=out)
        return 0
    _show(out, job)
    print(
        f"  service {job['service']}, user {job['user_id']}, attempts {job['attempts']}, "
        f"client {job['client'] or '-'}, result {_size(job['result_size'])}",
        file=out,
    )
    for event in job["history"]:
        reason = f"  {event['reason']}" if event["reason"] else ""
        print(f"  {_time(event['at'])}  {event['from'] or 'new'} -> {event['to']}{reason}", file=out)
    return 0


def _wait(server: Orchestrator, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _follow(server, args.job, args.output, out, err)


def _download(server: Orchestrator, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with Bar(err, "download") as bar:
        path = server.download(args.job, args.output or f"job-{args.job}.zip", args.partial, bar.update)
    print(f"saved {path} ({_size(path.stat().st_size)})", file=out)
    return 0


def _cancel(server: Orchestrator, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    _show(out, server.cancel(args.job))
    return 0


def _jobs(server: Orchestrator, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    filters = {"user_id": args.user, "service": args.service, "since": args.since, "until": args.until}
    filters |= {"limit": args.limit, "before": args.before, "status": ",".join(args.status or []) or None}
    page = server.jobs(**filters)
    if args.json:
        print(json.dumps(page, indent=2), file=out)
        return 0
    print(f"{'ID':>8}  {'STATUS':10}  {'SERVICE':12}  {'USER':>6}  {'CREATED':19}  MESSAGE", file=out)
    for job in page["jobs"]:
        print(
            f"{job['id']:>8}  {job['status']:10}  {job['service'][:12]:12}  {job['user_id']:>6}  "
            f"{_time(job['created_at'])}  {job['message'][:60]}",
            file=out,
        )
    if page["next"] is not None:
        print(f"more: --before {page['next']}", file=out)
    return 0


def _follow(server: Orchestrator, job_id: int, output: str | None, out: TextIO, err: TextIO) -> int:
    """Print each status the job goes through until it ends; save its result to `output` if Completed.
    Exit status 0 if it Completed, 1 otherwise."""
    job = server.wait(job_id, on_change=lambda job: _show(out, job))
    if job["status"] != "Completed":
        return 1
    if output:
        with Bar(err, "download") as bar:
            path = server.download(job_id, output, progress=bar.update)
        print(f"saved {path} ({_size(path.stat().st_size)})", file=out)
    return 0


def _show(out: TextIO, job: dict) -> None:
    message = f": {job['message']}" if job.get("message") else ""
    print(f"job {job['id']}: {job['status']}{message}", file=out, flush=True)


class Bar:
    """A progress bar on `stream` when it is a terminal (nothing otherwise), ended by a newline."""

    WIDTH = 30

    def __init__(self, stream: TextIO, label: str):
        self.stream, self.label = stream, label
        self.shown = -1
        self.on = stream.isatty()

    def update(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if not self.on or percent == self.shown:
            return
        self.shown = percent
        filled = self.WIDTH * percent // 100
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {percent:3d}% {_size(done)} of {_size(total)}")
        self.stream.flush()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        if self.on and self.shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


def _size(size: float | None) -> str:
    if size is None:
        return "-"
    unit = "B"
    for larger in ("kB", "MB", "GB"):
        if size < 1000:
            break
        size, unit = size / 1000, larger
    return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"


def _time(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


COMMAND_FUNCTIONS = {
    "submit": _submit,
    "status": _status,
    "wait": _wait,
    "download": _download,
    "cancel": _cancel,
    "jobs": _jobs,
}

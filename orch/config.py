"""Configuration: one frozen Config built from the environment (and `.env`), validated with clear errors.

Only `orchestrator.py` calls `load()`; everything else receives the Config it builds.
"""

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

MODES = ("server", "client")
SERVICE_PREFIX = "SERVICE_"
SERVICE_SETTINGS = (
    "CLIENTS",
    "UPLOAD_URL",
    "DOWNLOAD_URL",
    "TERMINATE_URL",
    "RUNS_PER_USER",
    "MAX_RUNS",
    "TIMEOUT",
    "RETRY_LOST",
    "NETWORK",
)
SERVICE_VARIABLE = re.compile(rf"SERVICE_(?P<name>[A-Za-z0-9_]+?)_(?P<setting>{'|'.join(SERVICE_SETTINGS)})")


@dataclass(frozen=True)
class ClientConfig:
    """Where one client listens: the original's three URLs, and the endpoints derived from them."""

    upload_url: str
    download_url: str
    terminate_url: str

    @classmethod
    def at(cls, address: str) -> "ClientConfig":
        """The client whose endpoints are under `address` (`http://node1:9000`), named as this project's are."""
        return cls(f"{address}/submit", f"{address}/retrieve", f"{address}/kill")

    @property
    def address(self) -> str:
        """What names the client on a job: its download URL without the last segment (`http://node1:9000`)."""
        return sibling_url(self.download_url, "").rstrip("/")

    @property
    def partial_url(self) -> str:
        """The download URL with its last path segment replaced by `retrieve_partial` (as the original does)."""
        return sibling_url(self.download_url, "retrieve_partial")

    @property
    def events_url(self) -> str:
        """The client's event stream, beside its `/retrieve`."""
        return sibling_url(self.download_url, "events")

    @property
    def load_url(self) -> str:
        """The client's CPU use, beside its `/retrieve`."""
        return sibling_url(self.download_url, "load")

    @property
    def status_url(self) -> str:
        """The client's `/status` (its slots), beside its `/retrieve`."""
        return sibling_url(self.download_url, "status")


@dataclass(frozen=True)
class ServiceConfig:
    """A service: the clients listed for it (clients may also join by themselves), and how its jobs run."""

    name: str
    clients: tuple[ClientConfig, ...] = ()
    runs_per_user: int = 5
    max_runs: int = 10
    timeout: int | None = None  # walltime of a job in seconds; None: no limit
    retry_lost: int = 0  # times a job lost with its client is queued again (its runs are then at least once)
    network: bool = True  # False: its jobs run with the network cut (on clients with a sandbox)


@dataclass(frozen=True)
class Config:
    """Every setting of both modes. Field `x_y` is read from the variable `X_Y` (see `.env.sample`)."""

    mode: str
    host: str
    port: int
    db_path: Path
    data_path: Path
    max_age: int = 864000
    max_upload_size: int = 400 * 1024 * 1024
    log_level: str = "INFO"
    sender_interval: float = 0.5
    getter_interval: float = 0.5
    runner_interval: float = 0.5
    cleaner_interval: float = 60
    kill_grace: float = 5
    http_connect_timeout: float = 5
    http_timeout: float = 600
    client_lost_after: float = 3600
    orch_token: str = ""
    db_url: str = ""  # a PostgreSQL database instead of DB_PATH's SQLite file
    job_env: str = "PATH,HOME,LANG,LC_ALL,TZ,TMPDIR,USER,LOGNAME"
    script_blocklist: bool = True
    client_lease: float = 30
    slots: int = 1  # the default is the number of CPUs (see `load`)
    server_url: str = ""
    advertise_url: str = ""
    sandbox: str = "auto"
    job_user: str = "nobody"
    job_users: str = ""
    job_network: str = "host"
    job_read_paths: str = ""
    job_write_paths: str = ""
    api_token: str = ""
    executor: str = "local"  # what runs the payloads: `local` (on this machine) or `slurm` (see orch.executors)
    slurm_partition: str = ""
    slurm_account: str = ""
    slurm_time_limit: int = 0  # seconds; 0: none of ours (the partition's)
    slurm_extra_args: str = ""
    slurm_poll_interval: float = 2.0
    # Not read from variables: the mode, the --insecure flag, and what is derived from other settings.
    insecure: bool = False
    # Server: the configured services (SERVICE_<NAME>_*). Client: those it joins at SERVER_URL (SERVICES).
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    job_environment: dict[str, str] = field(default_factory=dict)
    # EXECUTOR=slurm: the SLURM_<SETTING>_<SERVICE> variables, by service (lower case) then setting (checked by
    # orch.executors.slurm), and the variables Slurm's own commands need (SLURM_CONF, where the cluster is).
    slurm_services: dict[str, dict[str, str]] = field(default_factory=dict)
    slurm_environment: dict[str, str] = field(default_factory=dict)

    def client_at(self, address: str) -> ClientConfig:
        """The client at `address`: as a service lists it (with the URLs given for it), else with this
        project's endpoints under that address (a client that joined, or that is no longer listed)."""
        for service in self.services.values():
            for client in service.clients:
                if client.address == address:
                    return client
        return ClientConfig.at(address)

    @property
    def database(self) -> Path | str:
        """Where the database is: DB_URL (PostgreSQL) if set, else DB_PATH (a SQLite file)."""
        return self.db_url or self.db_path

    @property
    def shares_data(self) -> bool:
        """Whether other processes use the same database and data folder: server processes on PostgreSQL."""
        return self.mode == "server" and bool(self.db_url)

    @property
    def api_tokens(self) -> list[str]:
        """The tokens that portals may call the server's API with (API_TOKEN, comma-separated); none: open."""
        return split(self.api_token)

    @property
    def job_user_names(self) -> list[str]:
        """Who payloads run as when the client runs as root: the pool JOB_USERS, else JOB_USER."""
        return expand_users(self.job_users) if self.job_users else [self.job_user]

    @property
    def tmp_path(self) -> Path:
        """Scratch space beside the job folders (uploads being received, downloads, partial zips); emptied
        at start."""
        return self.data_path / ".tmp"


NOT_VARIABLES = ("mode", "insecure", "services", "job_environment", "slurm_services", "slurm_environment")


# Defaults that differ by mode, so a server and a client started side by side never share files or a port.
MODE_DEFAULTS = {
    "server": {"host": "0.0.0.0", "port": 5000, "db_path": "server.sqlite", "data_path": "data/server"},
    "client": {"host": "127.0.0.1", "port": 9000, "db_path": "client.sqlite", "data_path": "data/client"},
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SANDBOXES = ("auto", "bwrap", "none")
NETWORKS = ("host", "none")
USER_RANGE = re.compile(r"(?P<prefix>[a-z_][a-z0-9_-]*?)(?P<first>[0-9]+)\.\.(?P<last>[0-9]+)")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]*[$]?")
MAX_JOB_USERS = 1000
SLURM_SERVICE_VARIABLE = re.compile(r"SLURM_(?P<setting>PARTITION|ACCOUNT|TIME_LIMIT|EXTRA_ARGS)_(?P<name>\w+)", re.A)
SLURM_PASSED = ("SLURM_CONF",)  # Slurm's own variables that its commands get from the client's environment
SLURM_SLOTS = 100  # SLOTS of a client with EXECUTOR=slurm: payloads it keeps in Slurm at once (its CPUs mean nothing)
BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def variable_name(field_name: str) -> str:
    """The environment variable that sets a Config field."""
    return field_name.upper()


def settings_variables() -> list[str]:
    """Every plain (non-service) variable a Config reads, in field order, then SERVICES (a client's)."""
    return [variable_name(f.name) for f in fields(Config) if f.name not in NOT_VARIABLES] + ["SERVICES"]


def load(mode: str, env: dict[str, str], overrides: dict[str, str] | None = None, insecure: bool = False) -> Config:
    """Build and validate the Config of `mode` from `env` (variables), `overrides` (command-line flags) and
    `insecure` (the --insecure flag).

    Raises ValueError with a one-line message naming the offending variable.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    values = {**env, **(overrides or {})}
    defaults = {f.name: f.default for f in fields(Config) if f.name not in NOT_VARIABLES}
    defaults.update(MODE_DEFAULTS[mode])
    slurm = (values.get("EXECUTOR") or "").strip().lower() == "slurm"
    defaults["slots"] = SLURM_SLOTS if slurm else os.cpu_count() or 1
    parsed = {}
    for name, default in defaults.items():
        raw = values.get(variable_name(name))
        parsed[name] = default if raw is None or raw.strip() == "" else _parse(name, raw.strip(), type(default))
    for path_name in ("db_path", "data_path"):
        parsed[path_name] = Path(parsed[path_name]).expanduser().absolute()
    services = parse_services(env) if mode == "server" else joined_services(values.get("SERVICES", ""))
    # What a job gets of the client's environment: only the variables JOB_ENV names (never its token).
    passed = split(parsed["job_env"])
    job_environment = {name: env[name] for name in passed if name in env}
    slurm_services: dict[str, dict[str, str]] = {}
    for variable, value in env.items():
        if match := SLURM_SERVICE_VARIABLE.fullmatch(variable):
            slurm_services.setdefault(match["name"].lower(), {})[match["setting"]] = value.strip()
    config = Config(
        mode=mode,
        services=services,
        insecure=insecure,
        job_environment=job_environment,
        slurm_services=slurm_services,
        slurm_environment={name: env[name] for name in SLURM_PASSED if name in env},
        **parsed,
    )
    validate(config)
    return config


def _parse(name: str, raw: str, kind: type) -> object:
    variable = variable_name(name)
    if kind is int:
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise ValueError(f"{variable} must be a whole number, got {raw!r}")
        return int(raw)
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{variable} must be a number, got {raw!r}") from None
    if kind is bool:
        if raw.lower() not in BOOLEANS:
            raise ValueError(f"{variable} must be true or false, got {raw!r}")
        return BOOLEANS[raw.lower()]
    if kind is str and name == "log_level":
        return raw.upper()
    if kind is str and name in ("sandbox", "job_network", "executor"):
        return raw.lower()
    return raw


def validate(config: Config) -> None:
    """Raise ValueError naming the first variable whose value cannot work."""
    if not 0 <= config.port <= 65535:
        raise ValueError(f"PORT must be between 0 and 65535, got {config.port}")
    if config.log_level not in LOG_LEVELS:
        raise ValueError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}")
    positive = (
        "max_age",
        "max_upload_size",
        "sender_interval",
        "getter_interval",
        "runner_interval",
        "cleaner_interval",
        "http_connect_timeout",
        "http_timeout",
        "client_lost_after",
        "client_lease",
        "slurm_poll_interval",
    )
    for name in positive:
        if not 0 < getattr(config, name) < math.inf:
            raise ValueError(f"{variable_name(name)} must be greater than 0, got {getattr(config, name)}")
    if not 0 <= config.kill_grace < math.inf:
        raise ValueError(f"KILL_GRACE must be 0 or more, got {config.kill_grace}")
    if config.http_timeout <= config.kill_grace:
        raise ValueError("HTTP_TIMEOUT must be longer than KILL_GRACE, or terminations time out before a kill ends")
    if config.db_url:
        check_db_url(config.db_url)
    if config.orch_token and not re.fullmatch(r"[\x21-\x7e]+", config.orch_token):
        raise ValueError("ORCH_TOKEN must be printable ASCII without spaces (it travels in an HTTP header)")
    for token in config.api_tokens:
        if not re.fullmatch(r"[\x21-\x7e]+", token):
            raise ValueError("API_TOKEN must be printable ASCII tokens without spaces, separated by commas")
    if config.sandbox not in SANDBOXES:
        raise ValueError(f"SANDBOX must be one of {', '.join(SANDBOXES)}, got {config.sandbox!r}")
    if config.job_network not in NETWORKS:
        raise ValueError(f"JOB_NETWORK must be one of {', '.join(NETWORKS)}, got {config.job_network!r}")
    if not USER_NAME.fullmatch(config.job_user):
        raise ValueError(f"JOB_USER must be a user name, got {config.job_user!r}")
    if config.job_users:
        expand_users(config.job_users)  # ValueError naming JOB_USERS
    for name in ("job_read_paths", "job_write_paths"):
        for path in split(getattr(config, name)):
            if not path.startswith("/"):
                raise ValueError(f"{variable_name(name)} must list absolute paths, got {path!r}")
    if config.mode == "client" and not config.orch_token and not config.insecure and not is_loopback(config.host):
        raise ValueError(
            f"HOST is {config.host}, so anyone who reaches this client could run code on it: set "
            "ORCH_TOKEN (the same on the server), or pass --insecure if the network is private"
        )
    if config.slurm_time_limit < 0:
        raise ValueError(f"SLURM_TIME_LIMIT must be a number of seconds (0: none), got {config.slurm_time_limit}")
    if config.slots < 1:
        raise ValueError(f"SLOTS must be at least 1, got {config.slots}")
    for name in ("server_url", "advertise_url"):
        if getattr(config, name):
            check_url(variable_name(name), getattr(config, name))
    if config.mode == "client" and config.server_url:
        _check_joining(config)


def _check_joining(config: Config) -> None:
    """A client that joins a server by itself needs the token, services, and an address the server can reach."""
    if not config.orch_token:
        raise ValueError("SERVER_URL is set, so this client announces itself: set ORCH_TOKEN (the server's)")
    if not config.services:
        raise ValueError("SERVER_URL is set, so this client announces itself: set SERVICES (e.g. SERVICES=example)")
    if not config.advertise_url and config.host in ("0.0.0.0", "::", ""):
        raise ValueError(
            f"HOST is {config.host!r}, which the server cannot call: set ADVERTISE_URL to this client's URL "
            "as the server reaches it (e.g. http://node1:9000)"
        )


def check_url(variable: str, value: str) -> None:
    """ValueError naming `variable` unless `value` is an http:// or https:// URL with a host."""
    if not is_url(value):
        raise ValueError(f"{variable} must be an http:// or https:// URL, got {value!r}")


def is_url(value: str) -> bool:
    """Whether `value` is an http:// or https:// URL with a host (and a port that is a number, if any)."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 (raises ValueError when it is not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def check_db_url(url: str) -> None:
    """ValueError unless `url` names a PostgreSQL database (its password is never repeated)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        shown = parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
        raise ValueError(
            f"DB_URL must be postgresql://user:password@host:5432/database (or ?host=/socket/folder), got {shown!r}"
        )


def split(raw: str) -> list[str]:
    """The items of a comma-separated setting, stripped, without empty ones."""
    return [item.strip() for item in raw.split(",") if item.strip()]


def expand_users(raw: str) -> list[str]:
    """The user names of a JOB_USERS value: names and ranges, comma-separated (`orch-slot1..8` is orch-slot1 to
    orch-slot8). Raises ValueError naming JOB_USERS."""
    names: list[str] = []
    for item in split(raw):
        match = USER_RANGE.fullmatch(item)
        if match:
            first, last = int(match["first"]), int(match["last"])
            if first > last or last - first >= MAX_JOB_USERS:
                raise ValueError(f"JOB_USERS has a range that goes backwards or is too long: {item!r}")
            names += [f"{match['prefix']}{number}" for number in range(first, last + 1)]
        elif USER_NAME.fullmatch(item):
            names.append(item)
        else:
            raise ValueError(f"JOB_USERS must list user names or ranges like orch-slot1..8, got {item!r}")
    if len(set(names)) != len(names) or len(names) > MAX_JOB_USERS:
        raise ValueError(f"JOB_USERS must name each user once, and at most {MAX_JOB_USERS}, got {raw!r}")
    return names


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_services(env: dict[str, str]) -> dict[str, ServiceConfig]:
    """Collect SERVICE_<NAME>_<SETTING> variables into ServiceConfigs keyed by the lower-cased name.

    Unlike the original, names may contain underscores (the setting is matched from the end), a variable
    with an unknown setting is an error rather than a silent phantom service, and URLs are checked.
    """
    raw: dict[str, dict[str, tuple[str, str]]] = {}
    for variable, value in sorted(env.items()):
        if not variable.startswith(SERVICE_PREFIX):
            continue
        match = SERVICE_VARIABLE.fullmatch(variable)
        if not match:
            raise ValueError(
                f"{variable} is not a service setting (expected SERVICE_<NAME>_<SETTING> with "
                f"<SETTING> one of {', '.join(SERVICE_SETTINGS)})"
            )
        raw.setdefault(match["name"].lower(), {})[match["setting"]] = (variable, value.strip())
    return {name: _service(name, settings) for name, settings in raw.items()}


def _service(name: str, settings: dict[str, tuple[str, str]]) -> ServiceConfig:
    prefix = f"SERVICE_{name.upper()}_"
    limits: dict[str, object] = {}
    variable, value = settings.get("NETWORK", (prefix + "NETWORK", "true"))
    if value.lower() not in BOOLEANS:
        raise ValueError(f"{variable} must be true or false, got {value!r}")
    limits["network"] = BOOLEANS[value.lower()]
    for setting, default, least in (("RUNS_PER_USER", "5", 1), ("MAX_RUNS", "10", 1), ("RETRY_LOST", "0", 0)):
        variable, value = settings.get(setting, (prefix + setting, default))
        if not re.fullmatch(r"[0-9]+", value) or int(value) < least:
            raise ValueError(f"{variable} must be a whole number of at least {least}, got {value!r}")
        limits[setting.lower()] = int(value)
    variable, value = settings.get("TIMEOUT", (prefix + "TIMEOUT", ""))
    if value in ("", "0"):
        limits["timeout"] = None  # no walltime
    elif not re.fullmatch(r"[0-9]+", value):
        raise ValueError(f"{variable} must be a whole number of at least 1, got {value!r}")
    else:
        limits["timeout"] = int(value)
    return ServiceConfig(name=name, clients=_clients(name, settings), **limits)


def _clients(name: str, settings: dict[str, tuple[str, str]]) -> tuple[ClientConfig, ...]:
    """The clients listed for a service: the original's URL triple (one client), then CLIENTS (base URLs).

    CLIENTS set but empty lists none: the service takes only clients that join by themselves."""
    prefix = f"SERVICE_{name.upper()}_"
    listed: dict[str, ClientConfig] = {}
    if any(settings.get(setting, ("", ""))[1] for setting in ("UPLOAD_URL", "DOWNLOAD_URL", "TERMINATE_URL")):
        urls = {}
        for setting in ("UPLOAD_URL", "DOWNLOAD_URL", "TERMINATE_URL"):
            variable, value = settings.get(setting, (prefix + setting, ""))
            if not value and setting != "TERMINATE_URL":
                raise ValueError(f"{variable} is required for service {name!r} (or list its clients in CLIENTS)")
            if value:
                check_url(variable, value)
            urls[setting.lower()] = value.rstrip("/")
        # The original needs TERMINATE_URL spelled out; here it defaults to the client's /kill beside /retrieve.
        urls["terminate_url"] = urls["terminate_url"] or sibling_url(urls["download_url"], "kill")
        client = ClientConfig(**urls)
        listed[client.address] = client
    elif "CLIENTS" not in settings:
        raise ValueError(
            f"{prefix}CLIENTS is required for service {name!r}: its clients' URLs, e.g. http://node1:9000 "
            f"(or the original's {prefix}UPLOAD_URL and {prefix}DOWNLOAD_URL)"
        )
    variable, value = settings.get("CLIENTS", (prefix + "CLIENTS", ""))
    for base in (part.strip().rstrip("/") for part in value.split(",")):
        if not base:
            continue
        if not is_url(base) or urlsplit(base).query or urlsplit(base).fragment:
            raise ValueError(f"{variable} must list http:// or https:// base URLs, separated by commas, got {base!r}")
        listed.setdefault(base, ClientConfig.at(base))
    return tuple(listed.values())


def joined_services(raw: str) -> dict[str, ServiceConfig]:
    """A client's SERVICES (`example,haddock`): the services it announces itself for, by lower-cased name."""
    names = split(raw)
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"SERVICES must list service names (letters, digits, _) separated by commas, got {raw!r}")
    return {name.lower(): ServiceConfig(name.lower()) for name in names}


def sibling_url(url: str, segment: str) -> str:
    """Replace the last path segment of `url` by `segment` (`http://c:9000/retrieve` -> `http://c:9000/kill`)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    head = path.rsplit("/", 1)[0] if "/" in path else ""
    return parts._replace(path=f"{head}/{segment}").geturl()

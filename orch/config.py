"""Configuration: one frozen Config built from the environment (and `.env`), validated with clear errors.

Only `orchestrator.py` calls `load()`; everything else receives the Config it builds.
"""

import ipaddress
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

MODES = ("server", "client")
SERVICE_PREFIX = "SERVICE_"
SERVICE_SETTINGS = ("UPLOAD_URL", "DOWNLOAD_URL", "TERMINATE_URL", "RUNS_PER_USER", "MAX_RUNS", "TIMEOUT", "NETWORK")
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


@dataclass(frozen=True)
class ServiceConfig:
    """Where a service's client listens and how many of its jobs may run at once."""

    name: str
    upload_url: str
    download_url: str
    terminate_url: str
    runs_per_user: int = 5
    max_runs: int = 10
    timeout: int | None = None  # walltime of a job in seconds; None: no limit
    network: bool = True  # False: its jobs run with the network cut (on clients with a sandbox)

    @property
    def client(self) -> ClientConfig:
        return ClientConfig(self.upload_url, self.download_url, self.terminate_url)


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
    job_env: str = "PATH,HOME,LANG,LC_ALL,TZ,TMPDIR,USER,LOGNAME"
    script_blocklist: bool = True
    sandbox: str = "auto"
    job_user: str = "nobody"
    job_users: str = ""
    job_network: str = "host"
    job_read_paths: str = ""
    job_write_paths: str = ""
    api_token: str = ""
    # Not read from variables: the mode, the --insecure flag, and what is derived from other settings.
    insecure: bool = False
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    job_environment: dict[str, str] = field(default_factory=dict)

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


NOT_VARIABLES = ("mode", "insecure", "services", "job_environment")


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
BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def variable_name(field_name: str) -> str:
    """The environment variable that sets a Config field."""
    return field_name.upper()


def settings_variables() -> list[str]:
    """Every plain (non-service) variable a Config reads, in field order."""
    return [variable_name(f.name) for f in fields(Config) if f.name not in NOT_VARIABLES]


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
    parsed = {}
    for name, default in defaults.items():
        raw = values.get(variable_name(name))
        parsed[name] = default if raw is None or raw.strip() == "" else _parse(name, raw.strip(), type(default))
    for path_name in ("db_path", "data_path"):
        parsed[path_name] = Path(parsed[path_name]).expanduser().absolute()
    services = parse_services(env) if mode == "server" else {}
    # What a job gets of the client's environment: only the variables JOB_ENV names (never its token).
    passed = split(parsed["job_env"])
    job_environment = {name: env[name] for name in passed if name in env}
    config = Config(mode=mode, services=services, insecure=insecure, job_environment=job_environment, **parsed)
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
    if kind is str and name in ("sandbox", "job_network"):
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
    )
    for name in positive:
        if not 0 < getattr(config, name) < math.inf:
            raise ValueError(f"{variable_name(name)} must be greater than 0, got {getattr(config, name)}")
    if not 0 <= config.kill_grace < math.inf:
        raise ValueError(f"KILL_GRACE must be 0 or more, got {config.kill_grace}")
    if config.http_timeout <= config.kill_grace:
        raise ValueError("HTTP_TIMEOUT must be longer than KILL_GRACE, or terminations time out before a kill ends")
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
    for required in ("UPLOAD_URL", "DOWNLOAD_URL"):
        if not settings.get(required, ("", ""))[1]:
            raise ValueError(f"{prefix}{required} is required for service {name!r}")
    urls = {}
    for setting in ("UPLOAD_URL", "DOWNLOAD_URL", "TERMINATE_URL"):
        variable, value = settings.get(setting, (prefix + setting, ""))
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{variable} must be an http:// or https:// URL, got {value!r}")
        urls[setting.lower()] = value.rstrip("/")
    # The original needs TERMINATE_URL spelled out; here it defaults to the client's /kill beside /retrieve.
    urls["terminate_url"] = urls["terminate_url"] or sibling_url(urls["download_url"], "kill")
    limits: dict[str, object] = {}
    variable, value = settings.get("NETWORK", (prefix + "NETWORK", "true"))
    if value.lower() not in BOOLEANS:
        raise ValueError(f"{variable} must be true or false, got {value!r}")
    limits["network"] = BOOLEANS[value.lower()]
    for setting, default in (("RUNS_PER_USER", "5"), ("MAX_RUNS", "10"), ("TIMEOUT", "")):
        variable, value = settings.get(setting, (prefix + setting, default))
        if setting == "TIMEOUT" and value in ("", "0"):
            limits["timeout"] = None  # no walltime
            continue
        if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
            raise ValueError(f"{variable} must be a whole number of at least 1, got {value!r}")
        limits[setting.lower()] = int(value)
    return ServiceConfig(name=name, **urls, **limits)


def sibling_url(url: str, segment: str) -> str:
    """Replace the last path segment of `url` by `segment` (`http://c:9000/retrieve` -> `http://c:9000/kill`)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    head = path.rsplit("/", 1)[0] if "/" in path else ""
    return parts._replace(path=f"{head}/{segment}").geturl()

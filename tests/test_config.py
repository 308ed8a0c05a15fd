"""`orch.config.load`: settings from variables and flags, SERVICE_<NAME>_* parsing, and one clear error per bad value.

Ports the original's loader tests (upstream-spec §12.1) and adds what it left untested (§12.11, §16.24-25).
"""

import dataclasses
import re
from pathlib import Path

import pytest

from orch.config import ClientConfig, ServiceConfig, load

FOO = {
    "SERVICE_FOO_UPLOAD_URL": "http://node1:9000/submit",
    "SERVICE_FOO_DOWNLOAD_URL": "http://node1:9000/retrieve",
}


def names(variable: str) -> str:
    """A pattern matching a message that names `variable` as a whole word."""
    return rf"(?<![A-Z_]){re.escape(variable)}(?![A-Z_])"


def service_env(name: str, **settings: str) -> dict[str, str]:
    """SERVICE_<NAME>_* variables with working URLs, plus `settings` (lower case, e.g. max_runs="2")."""
    prefix = f"SERVICE_{name}_"
    env = {prefix + "UPLOAD_URL": "http://node1:9000/submit", prefix + "DOWNLOAD_URL": "http://node1:9000/retrieve"}
    env.update({prefix + key.upper(): value for key, value in settings.items()})
    return env


# ---- Ported from the original (src/config/loader.rs tests)


def test_service_config_keeps_its_fields_as_given():
    client = ClientConfig(upload_url="http://a/submit", download_url="http://a/retrieve", terminate_url="http://a/kill")
    service = ServiceConfig(name="foo", clients=(client,), runs_per_user=3, max_runs=7)
    (listed,) = service.clients
    assert (service.name, listed.upload_url, listed.download_url, listed.terminate_url) == (
        "foo",
        "http://a/submit",
        "http://a/retrieve",
        "http://a/kill",
    )
    assert (service.runs_per_user, service.max_runs) == (3, 7)


def test_custom_db_path_is_honoured(tmp_path):
    assert load("server", {"DB_PATH": str(tmp_path / "jobs.sqlite")}).db_path == tmp_path / "jobs.sqlite"


def test_custom_data_path_is_honoured(tmp_path):
    assert load("server", {"DATA_PATH": str(tmp_path / "jobs")}).data_path == tmp_path / "jobs"


def test_custom_port_is_honoured():
    assert load("server", {"PORT": "8080"}).port == 8080


def test_custom_max_age_is_honoured():
    assert load("server", {"MAX_AGE": "3600"}).max_age == 3600


def test_max_age_defaults_to_ten_days():
    assert load("server", {}).max_age == 864000


def test_service_variables_make_a_service_with_their_urls_and_limits():
    env = {
        "SERVICE_FOO_UPLOAD_URL": "http://node1:9000/submit",
        "SERVICE_FOO_DOWNLOAD_URL": "http://node1:9000/retrieve",
        "SERVICE_FOO_TERMINATE_URL": "http://node1:9000/terminate",
        "SERVICE_FOO_RUNS_PER_USER": "3",
        "SERVICE_FOO_MAX_RUNS": "2",
    }
    config = load("server", env)
    assert config.services == {
        "foo": ServiceConfig(
            name="foo",
            clients=(
                ClientConfig(
                    upload_url="http://node1:9000/submit",
                    download_url="http://node1:9000/retrieve",
                    terminate_url="http://node1:9000/terminate",
                ),
            ),
            runs_per_user=3,
            max_runs=2,
        )
    }


def test_several_services_are_all_parsed_with_their_own_urls():
    env = {
        **service_env("BAR"),
        "SERVICE_BAZ_UPLOAD_URL": "http://node2:9000/submit",
        "SERVICE_BAZ_DOWNLOAD_URL": "http://node2:9000/retrieve",
    }
    services = load("server", env).services
    assert sorted(services) == ["bar", "baz"]
    assert services["bar"].clients[0].upload_url == "http://node1:9000/submit"
    assert services["baz"].clients[0].upload_url == "http://node2:9000/submit"
    assert services.get("missing") is None


def test_service_name_is_lower_cased():
    assert list(load("server", service_env("UPPERCASE")).services) == ["uppercase"]
    assert list(load("server", service_env("Example")).services) == ["example"]


def test_service_limits_default_to_five_per_user_and_ten_in_all():
    service = load("server", FOO).services["foo"]
    assert (service.runs_per_user, service.max_runs) == (5, 10)


# ---- Modes, precedence, paths


def test_server_and_client_have_different_defaults_so_they_can_run_side_by_side():
    server, client = load("server", {}), load("client", {})
    assert (server.mode, server.port) == ("server", 5000)
    assert (client.mode, client.port) == ("client", 9000)
    assert server.db_path != client.db_path
    assert server.data_path != client.data_path
    assert server.db_path.name == "server.sqlite" and client.db_path.name == "client.sqlite"


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        load("worker", {})


def test_flags_override_variables():
    config = load("server", {"PORT": "6000", "HOST": "10.0.0.1"}, {"PORT": "7000"})
    assert config.port == 7000
    assert config.host == "10.0.0.1"  # no flag given: the variable holds


def test_an_empty_variable_means_the_default():
    assert load("server", {"PORT": "", "MAX_AGE": "  "}).port == 5000


def test_values_are_stripped_of_surrounding_spaces():
    assert load("server", {"PORT": " 8080 ", "LOG_LEVEL": " warning "}).port == 8080


def test_log_level_is_case_insensitive():
    assert load("server", {"LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_port_zero_is_allowed_to_pick_a_free_port():
    assert load("client", {"PORT": "0"}).port == 0


def test_relative_paths_are_made_absolute():
    """A relative DATA_PATH broke run.sh on the original's clients (upstream-spec §16.25)."""
    config = load("client", {"DB_PATH": "state/c.sqlite", "DATA_PATH": "jobs"})
    assert config.db_path.is_absolute() and config.data_path.is_absolute()
    assert config.db_path == Path.cwd() / "state" / "c.sqlite"
    assert config.data_path == Path.cwd() / "jobs"


def test_default_paths_are_absolute():
    for mode in ("server", "client"):
        config = load(mode, {})
        assert config.db_path.is_absolute() and config.data_path.is_absolute()


def test_a_home_relative_path_is_expanded():
    assert load("server", {"DATA_PATH": "~/jobs"}).data_path == Path.home() / "jobs"


def test_config_is_immutable():
    config = load("server", FOO)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


# ---- Bad values: a ValueError naming the variable, on one line


BAD_VALUES = [
    ("server", {"PORT": "http"}, "PORT"),
    ("server", {"PORT": "80.5"}, "PORT"),
    ("server", {"PORT": "65536"}, "PORT"),
    ("client", {"PORT": "-1"}, "PORT"),
    ("server", {"MAX_AGE": "abc"}, "MAX_AGE"),
    ("server", {"MAX_AGE": "0"}, "MAX_AGE"),
    ("server", {"MAX_AGE": "-5"}, "MAX_AGE"),
    ("server", {"MAX_UPLOAD_SIZE": "0"}, "MAX_UPLOAD_SIZE"),
    ("server", {"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ("server", {"SENDER_INTERVAL": "0"}, "SENDER_INTERVAL"),
    ("server", {"SENDER_INTERVAL": "fast"}, "SENDER_INTERVAL"),
    ("server", {"GETTER_INTERVAL": "-0.5"}, "GETTER_INTERVAL"),
    ("client", {"RUNNER_INTERVAL": "0"}, "RUNNER_INTERVAL"),
    ("client", {"CLEANER_INTERVAL": "-60"}, "CLEANER_INTERVAL"),
    ("server", {"SENDER_INTERVAL": "nan"}, "SENDER_INTERVAL"),
    ("server", {"SENDER_INTERVAL": "inf"}, "SENDER_INTERVAL"),
    ("client", {"KILL_GRACE": "inf"}, "KILL_GRACE"),
    ("server", {"MAX_AGE": "１０"}, "MAX_AGE"),
    ("server", {"HTTP_CONNECT_TIMEOUT": "0"}, "HTTP_CONNECT_TIMEOUT"),
    ("server", {"HTTP_TIMEOUT": "-1"}, "HTTP_TIMEOUT"),
    ("client", {"KILL_GRACE": "-1"}, "KILL_GRACE"),
    ("client", {"KILL_GRACE": "soon"}, "KILL_GRACE"),
    ("server", {"HTTP_TIMEOUT": "5", "KILL_GRACE": "5"}, "HTTP_TIMEOUT"),
    ("server", {"HTTP_TIMEOUT": "3", "KILL_GRACE": "10"}, "HTTP_TIMEOUT"),
    ("server", service_env("FOO", runs_per_user="0"), "SERVICE_FOO_RUNS_PER_USER"),
    ("server", service_env("FOO", runs_per_user="x"), "SERVICE_FOO_RUNS_PER_USER"),
    ("server", service_env("FOO", runs_per_user="-2"), "SERVICE_FOO_RUNS_PER_USER"),
    ("server", service_env("FOO", max_runs="0"), "SERVICE_FOO_MAX_RUNS"),
    ("server", service_env("FOO", max_runs="2.5"), "SERVICE_FOO_MAX_RUNS"),
    ("server", service_env("FOO", max_runs="\u00b2"), "SERVICE_FOO_MAX_RUNS"),  # a superscript two
    ("server", {"SERVICE_FOO_DOWNLOAD_URL": "http://node1:9000/retrieve"}, "SERVICE_FOO_UPLOAD_URL"),
    ("server", {"SERVICE_FOO_UPLOAD_URL": "http://node1:9000/submit"}, "SERVICE_FOO_DOWNLOAD_URL"),
    ("server", {**FOO, "SERVICE_FOO_DOWNLOAD_URL": " "}, "SERVICE_FOO_DOWNLOAD_URL"),
    ("server", {**FOO, "SERVICE_FOO_UPLOAD_URL": "ftp://node1/submit"}, "SERVICE_FOO_UPLOAD_URL"),
    ("server", {**FOO, "SERVICE_FOO_UPLOAD_URL": "node1:9000/submit"}, "SERVICE_FOO_UPLOAD_URL"),
    ("server", {**FOO, "SERVICE_FOO_DOWNLOAD_URL": "http:///retrieve"}, "SERVICE_FOO_DOWNLOAD_URL"),
    ("server", {**FOO, "SERVICE_FOO_TERMINATE_URL": "kill"}, "SERVICE_FOO_TERMINATE_URL"),
    ("server", {**FOO, "SERVICE_X_UPLOAD_ULR": "http://node1:9000/submit"}, "SERVICE_X_UPLOAD_ULR"),
    ("server", {**FOO, "SERVICE_FOO": "http://node1:9000/submit"}, "SERVICE_FOO"),
    ("server", {**FOO, "SERVICE_FOO_BAR": "1"}, "SERVICE_FOO_BAR"),
    ("server", {"SERVICE_FOO_MAX_RUNS": "3"}, "SERVICE_FOO_CLIENTS"),
    ("server", {"SERVICE_FOO_CLIENTS": "node1:9000"}, "SERVICE_FOO_CLIENTS"),
    ("server", {"SERVICE_FOO_CLIENTS": "http://node1:9000,ftp://node2"}, "SERVICE_FOO_CLIENTS"),
    ("server", {"SERVICE_FOO_CLIENTS": "http://node1:9000;http://node2:9000"}, "SERVICE_FOO_CLIENTS"),
    ("server", {"SERVICE_FOO_CLIENTS": "http://"}, "SERVICE_FOO_CLIENTS"),
    ("server", {"SERVICE_FOO_CLIENTS": "http://node1:9000/?x=1"}, "SERVICE_FOO_CLIENTS"),
    ("server", service_env("FOO", retry_lost="-1"), "SERVICE_FOO_RETRY_LOST"),
    ("server", service_env("FOO", retry_lost="twice"), "SERVICE_FOO_RETRY_LOST"),
    ("server", {"CLIENT_LEASE": "0"}, "CLIENT_LEASE"),
    ("client", {"SLOTS": "0"}, "SLOTS"),
    ("client", {"SLOTS": "many"}, "SLOTS"),
    ("client", {"SERVER_URL": "server:5000"}, "SERVER_URL"),
    ("client", {"SERVER_URL": "http://server:5000", "SERVICES": "example"}, "ORCH_TOKEN"),
    ("client", {"SERVER_URL": "http://server:5000", "ORCH_TOKEN": "t"}, "SERVICES"),
    ("client", {"SERVER_URL": "http://server:5000", "ORCH_TOKEN": "t", "SERVICES": "ex ample"}, "SERVICES"),
    ("client", {"SERVICES": "example;haddock"}, "SERVICES"),
    ("client", {"ADVERTISE_URL": "node1"}, "ADVERTISE_URL"),
    (
        "client",
        {"SERVER_URL": "http://server:5000", "ORCH_TOKEN": "t", "SERVICES": "example", "HOST": "0.0.0.0"},
        "ADVERTISE_URL",
    ),
]


@pytest.mark.parametrize(
    ("mode", "env", "variable"),
    BAD_VALUES,
    ids=[f"{mode}:{variable}={env.get(variable, '(missing)')!r}" for mode, env, variable in BAD_VALUES],
)
def test_a_bad_value_stops_loading_with_a_one_line_message_naming_the_variable(mode, env, variable):
    with pytest.raises(ValueError, match=names(variable)) as raised:
        load(mode, env)
    assert "\n" not in str(raised.value)


def test_a_bad_flag_is_reported_like_a_bad_variable():
    with pytest.raises(ValueError, match=names("PORT")):
        load("server", {"PORT": "5000"}, {"PORT": "five"})


def test_http_timeout_just_above_kill_grace_is_accepted():
    config = load("client", {"HTTP_TIMEOUT": "6", "KILL_GRACE": "5"})
    assert (config.http_timeout, config.kill_grace) == (6, 5)


# ---- SERVICE_<NAME>_* beyond the original


def test_a_service_name_may_contain_underscores():
    """The original made `SERVICE_MY_SVC_UPLOAD_URL` a phantom service `my` (upstream-spec §2.2)."""
    services = load("server", service_env("MY_SVC", max_runs="4", runs_per_user="2")).services
    assert list(services) == ["my_svc"]
    assert (services["my_svc"].max_runs, services["my_svc"].runs_per_user) == (4, 2)
    assert services["my_svc"].clients[0].upload_url == "http://node1:9000/submit"


def test_a_service_name_may_end_like_a_setting_word():
    services = load("server", service_env("URL_MAX")).services
    assert list(services) == ["url_max"]


def test_terminate_url_defaults_to_kill_beside_the_download_url():
    (client,) = load("server", FOO).services["foo"].clients
    assert client.terminate_url == "http://node1:9000/kill"


def test_terminate_url_default_keeps_the_download_urls_prefix():
    env = {"SERVICE_FOO_UPLOAD_URL": "https://gw/api/submit", "SERVICE_FOO_DOWNLOAD_URL": "https://gw/api/retrieve/"}
    assert load("server", env).services["foo"].clients[0].terminate_url == "https://gw/api/kill"


def test_a_terminate_url_given_is_kept():
    env = {**FOO, "SERVICE_FOO_TERMINATE_URL": "http://node1:9000/terminate"}
    assert load("server", env).services["foo"].clients[0].terminate_url == "http://node1:9000/terminate"


def test_trailing_slashes_are_dropped_from_service_urls_since_ids_are_appended():
    env = {"SERVICE_FOO_UPLOAD_URL": "http://n:9000/submit/", "SERVICE_FOO_DOWNLOAD_URL": "http://n:9000/retrieve/"}
    (client,) = load("server", env).services["foo"].clients
    assert (client.upload_url, client.download_url) == ("http://n:9000/submit", "http://n:9000/retrieve")


@pytest.mark.parametrize(
    ("download_url", "partial_url"),
    [
        ("http://node1:9000/retrieve", "http://node1:9000/retrieve_partial"),
        ("http://node1:9000/retrieve/", "http://node1:9000/retrieve_partial"),
        ("http://node1:9000/api/v1/retrieve", "http://node1:9000/api/v1/retrieve_partial"),
        ("http://node1:9000", "http://node1:9000/retrieve_partial"),
        ("http://node1:9000/", "http://node1:9000/retrieve_partial"),
    ],
)
def test_partial_url_replaces_the_last_segment_of_the_download_url(download_url, partial_url):
    client = ClientConfig(
        upload_url="http://node1:9000/submit", download_url=download_url, terminate_url="http://node1:9000/kill"
    )
    assert client.partial_url == partial_url


def test_no_service_variables_means_no_services():
    assert load("server", {"PORT": "5000"}).services == {}


def test_variables_that_do_not_start_with_service_are_not_services():
    assert load("server", {**FOO, "MY_SERVICE_X": "1", "service_bar_upload_url": "x"}).services.keys() == {"foo"}


def test_client_mode_ignores_service_variables():
    env = {**FOO, "SERVICE_X_UPLOAD_ULR": "nonsense", "SERVICE_Y_MAX_RUNS": "0"}
    assert load("client", env).services == {}


@pytest.mark.parametrize(
    ("download_url", "address"),
    [
        ("http://node1:9000/retrieve", "http://node1:9000"),
        ("https://gw/api/retrieve", "https://gw/api"),
    ],
)
def test_a_client_is_named_by_its_address_and_found_again_at_it(download_url, address):
    client = ClientConfig("http://x/submit", download_url, "http://x/kill")
    assert client.address == address
    again = ClientConfig.at(address)
    assert (again.download_url, again.terminate_url, again.events_url) == (
        f"{address}/retrieve",
        f"{address}/kill",
        f"{address}/events",
    )


# ---- Several clients per service


def test_a_service_lists_its_clients_by_their_base_urls():
    env = {"SERVICE_FOO_CLIENTS": " http://node1:9000 ,https://gw/api/node2/, http://node1:9000"}
    (node1, node2) = load("server", env).services["foo"].clients
    assert (node1.upload_url, node1.download_url, node1.terminate_url) == (
        "http://node1:9000/submit",
        "http://node1:9000/retrieve",
        "http://node1:9000/kill",
    )
    assert (node2.address, node2.events_url, node2.status_url) == (
        "https://gw/api/node2",
        "https://gw/api/node2/events",
        "https://gw/api/node2/status",
    )


def test_the_originals_urls_are_one_client_beside_those_listed():
    env = {**FOO, "SERVICE_FOO_TERMINATE_URL": "http://node1:9000/stop", "SERVICE_FOO_CLIENTS": "http://node2:9000"}
    config = load("server", env)
    first, second = config.services["foo"].clients
    assert (first.address, first.terminate_url, second.address) == (
        "http://node1:9000",
        "http://node1:9000/stop",
        "http://node2:9000",
    )
    assert config.client_at("http://node1:9000") is first  # found with the URLs given for it
    assert config.client_at("http://gone:9000") == ClientConfig.at("http://gone:9000")


def test_an_empty_client_list_makes_a_service_only_clients_that_join_can_serve():
    assert load("server", {"SERVICE_FOO_CLIENTS": ""}).services["foo"].clients == ()


def test_retry_lost_defaults_to_none_and_takes_a_count():
    assert load("server", FOO).services["foo"].retry_lost == 0
    assert load("server", service_env("FOO", retry_lost="2")).services["foo"].retry_lost == 2


def test_a_client_that_joins_by_itself_reads_its_server_services_and_address():
    env = {"SERVER_URL": "http://server:5000", "ORCH_TOKEN": "t", "SERVICES": "Example, haddock", "SLOTS": "4"}
    config = load("client", {**env, "HOST": "10.0.0.4", "PORT": "9001"})
    assert (config.server_url, sorted(config.services), config.slots) == (
        "http://server:5000",
        ["example", "haddock"],
        4,
    )
    assert config.advertise_url == ""  # announced as http://10.0.0.4:9001 (see orch.members)
    listening_everywhere = load("client", {**env, "HOST": "0.0.0.0", "ADVERTISE_URL": "http://node4:9000"})
    assert listening_everywhere.advertise_url == "http://node4:9000"

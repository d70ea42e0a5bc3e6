"""Settings (``hubbub.config``): a TOML file, then ``HUBBUB_*`` variables, then flags; every
bad value refused with a ``ConfigError`` that names it, before anything is served."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbub.config import Config
from hubbub.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hubbub.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 9001\nping_interval = 10\nclient_channel_limit = 5\n'
                           '[namespaces.chat]\nhistory_size = 10\nhistory_ttl = 60\n')
    config = Config.load(path, env={"HUBBUB_PORT": "9002", "HUBBUB_CLIENT_CHANNEL_LIMIT": "7"},
                         client_channel_limit=9, ping_interval=None)
    assert config.port == 9002  # the environment wins over the file
    assert config.client_channel_limit == 9  # a flag wins over both
    assert config.ping_interval == 10.0 and isinstance(config.ping_interval, float)  # None flags are ignored
    chat = config.namespace("chat:room")
    assert chat is not None and chat.history_size == 10
    assert config.namespace("unknown:room") is None


@pytest.mark.parametrize("text, named", [
    ("prot = 1\n", "'prot'"),
    ('port = "80"\n', "port must be a non-negative integer"),
    ("port = 70000\n", "port must be 0-65535"),
    ("[namespaces.chat]\nhistory_size = -1\n", "namespaces.chat.history_size"),
    ('[namespaces."a:b"]\n', "invalid namespace name"),
    ("ping_interval = 5\npong_timeout = 6\n", "pong_timeout"),
    ('broker = "mysql://x"\n', "broker must be"),
    ('relay_path = "/ws"\n', "relay_path must hold {channel}"),
    ("port = \n", "invalid"),  # not TOML
])
def test_bad_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        Config.load(write(tmp_path, text), env={})
    assert named in str(info.value), str(info.value)


@pytest.mark.parametrize("env, named", [
    ({"HUBBUB_PROT": "1"}, "HUBBUB_PROT names no setting"),
    ({"HUBBUB_PORT": "eighty"}, "HUBBUB_PORT"),
    ({"HUBBUB_ALLOW_ANONYMOUS": "perhaps"}, "HUBBUB_ALLOW_ANONYMOUS"),
])
def test_bad_environment_variables_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.load(env=env)
    assert named in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(tmp_path / "absent.toml", env={})


def test_public_address_without_tokens_is_refused_unless_anonymous_is_chosen() -> None:
    with pytest.raises(ConfigError, match="anonymous clients would be accepted"):
        Config.load(env={}, host="0.0.0.0").check_exposure()
    Config.load(env={}, host="0.0.0.0", allow_anonymous=True).check_exposure()
    Config.load(env={}, host="0.0.0.0", token_hmac_secret="s" * 32).check_exposure()
    Config.load(env={}, host="127.0.0.1").check_exposure()


@pytest.mark.parametrize("local, anonymous, admin", [
    ("", True, True),  # hubbub's own server: the settings' own address (127.0.0.1)
    ("127.0.0.1", True, True),
    ("::1", True, True),
    ("192.0.2.7", False, False),  # a public address of an ASGI server listening on several
    ("/run/hubbub.sock", False, False),  # a Unix socket: reachable by whoever can open it
])
def test_exposure_rules_per_address(local: str, anonymous: bool, admin: bool) -> None:
    config = Config.load(env={})
    assert config.anonymous_at(local) is anonymous
    assert config.admin_enabled_at(local) is admin
    chosen = Config.load(env={}, allow_anonymous=True, admin_secret="s" * 16)
    assert chosen.anonymous_at(local) and chosen.admin_enabled_at(local)  # chosen on purpose: everywhere

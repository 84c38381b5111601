"""Settings and tokens: the service refuses unsafe settings, tokens have roles."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from admin.api.auth import TokenAuth
from admin.settings import AdminSettings, load_settings
from graft.core.errors import AuthenticationError, ConfigError, PermissionDeniedError
from tests.support.auth import ADMIN_TOKEN as TOKEN
from tests.support.auth import SAMPLES_TOKEN as SAMPLES


def test_settings_refuse_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("GRAFT_ADMIN_TOKEN", "GRAFT_ADMIN_TOKEN_FILE", "GRAFT_SAMPLES_TOKEN", "GRAFT_INSECURE_DEV"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="no admin token"):
        AdminSettings().check()
    AdminSettings(insecure_dev=True).check()
    for host in ("localhost", "::1", "127.0.0.2"):
        AdminSettings(insecure_dev=True, admin_host=host).check()
    for host in ("0.0.0.0", "10.1.2.3", "::", "admin.example.com"):  # reachable from elsewhere: never without auth
        with pytest.raises(ConfigError, match="only on a loopback address"):
            AdminSettings(insecure_dev=True, admin_host=host).check()
    with pytest.raises(ConfigError, match="shorter"):
        AdminSettings(admin_token=SecretStr("short")).check()
    with pytest.raises(ConfigError, match="differ"):
        AdminSettings(admin_token=SecretStr(TOKEN), samples_token=SecretStr(TOKEN)).check()
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    assert AdminSettings(admin_token_file=secret).resolved_admin_token() == TOKEN
    monkeypatch.setenv("GRAFT_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("GRAFT_GATE_TOLERANCE", "0.02")
    s = load_settings(admin_port=9999, gate_floor=None)
    assert s.resolved_admin_token() == TOKEN and s.gate_tolerance == 0.02 and s.admin_port == 9999
    with pytest.raises(ConfigError, match="invalid admin settings"):
        load_settings(holdout_fraction=1.5)


def test_token_auth_roles() -> None:
    auth = TokenAuth(TOKEN, SAMPLES)
    assert auth.check(TOKEN, samples_ok=False) == "admin"
    assert auth.check(SAMPLES, samples_ok=True) == "samples"
    with pytest.raises(PermissionDeniedError):
        auth.check(SAMPLES, samples_ok=False)
    for bad in (None, "", TOKEN[:-1], TOKEN + "x", "Basic abc"):
        with pytest.raises(AuthenticationError):
            auth.check(bad, samples_ok=True)
    assert TokenAuth(TOKEN, None).check(TOKEN, samples_ok=True) == "admin"
    with pytest.raises(AuthenticationError):
        TokenAuth(TOKEN, None).check("\0" * 32, samples_ok=True)  # the dummy compare value is no token
    assert TokenAuth(None, None, insecure=True).check(None, samples_ok=False) == "insecure"


def test_default_training_settings_must_be_training_settings() -> None:
    assert AdminSettings(train_args={"epochs": 3}).train_args == {"epochs": 3}
    with pytest.raises(ValueError, match="output"):
        AdminSettings(train_args={"output": "/etc"})

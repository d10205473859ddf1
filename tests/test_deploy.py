"""The systemd unit: its sandbox's rating, and the install steps of docs/deploying.md agreeing with
what it needs. scripts/systemd-check.sh runs those steps for real, on a booted Debian 12, in CI."""
import os
import re
import shutil
import subprocess
import tomllib
from collections import defaultdict

import pytest

from conftest import ROOT
from etl.settings import API_URL

UNIT = ROOT / "deploy" / "prefectflow.service"
CHECK = ROOT / "scripts" / "systemd-check.sh"


def unit_settings() -> dict:
    """Each key of the unit's [Service] section with its values, in order; continued lines joined."""
    settings, section = defaultdict(list), None
    text = re.sub(r"\\\n\s*", "", UNIT.read_text())
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key].append(value)
    return settings


def install_steps() -> list:
    """The lines that scripts/systemd-check.sh runs, as it reads them from the doc."""
    done = subprocess.run(["bash", str(CHECK), "--print-steps"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    return done.stdout.splitlines()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze (systemd)")
def test_unit_sandbox_is_rated_2_or_lower():
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    rating = re.search(r"Overall exposure level for prefectflow\.service: (\d+\.\d+) ", done.stdout)
    assert done.returncode == 0 and rating, done.stdout + done.stderr
    assert float(rating.group(1)) <= 2.0, done.stdout


def test_unit_confines_the_service_to_its_data_folder():
    settings = unit_settings()
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ReadWritePaths"] == ["/opt/prefectflow/data"]
    assert settings["UMask"] == ["0077"]
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert settings["LimitNOFILE"] == ["4096"]


def test_unit_leaves_a_usage_error_failed_instead_of_restarting_it():
    settings = unit_settings()
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == ["2"]


def test_install_steps_make_what_the_unit_needs():
    """The user, the venv, the data folder, the settings and secrets files the unit names, the unit."""
    settings, steps = unit_settings(), install_steps()
    user, home = settings["User"][0], settings["WorkingDirectory"][0]
    (data,), (env_file,) = settings["ReadWritePaths"], settings["EnvironmentFile"]
    config = re.fullmatch(rf"{home}/\.venv/bin/python prefectflow\.py --config (\S+)", settings["ExecStart"][0])
    assert settings["Group"] == [user] and config
    assert f"cd {home} && make .venv/.run" in steps
    assert f"useradd --system --home-dir {home} --no-create-home --shell /usr/sbin/nologin {user}" in steps
    assert f"install -d -o {user} -g {user} -m 0700 {data}" in steps
    # The settings file, with the report's URL (the check swaps it for its loopback source's).
    assert f"cp deploy/prefectflow.toml {config[1]}" in steps
    assert f"echo 'url = [\"{API_URL}\"]' >> {config[1]}" in steps
    assert f"\ndefault_url={API_URL} " in CHECK.read_text()
    # The secrets, root's alone; systemd reads them for the service, which may start without them.
    assert env_file.startswith("-") and f"install -m 600 /dev/null {env_file[1:]}" in [
        step.split("  #")[0].rstrip() for step in steps]
    assert steps[-2:] == ["cp deploy/prefectflow.service /etc/systemd/system/ && systemctl daemon-reload",
                          "systemctl enable --now prefectflow"]


def test_settings_write_only_in_the_data_folder():
    """What deploy/prefectflow.toml has the service write lies in the unit's writable folder."""
    settings = unit_settings()
    home, (data,) = settings["WorkingDirectory"][0], settings["ReadWritePaths"]
    written = tomllib.loads((ROOT / "deploy" / "prefectflow.toml").read_text())
    assert written["listen"] == "127.0.0.1:9100"
    for key in ("output", "history"):
        assert os.path.dirname(os.path.normpath(os.path.join(home, written[key]))) == data


def test_unit_comments_point_to_the_doc_instead_of_repeating_the_steps():
    comments = "\n".join(line for line in UNIT.read_text().splitlines() if line.startswith("#"))
    assert "docs/deploying.md" in comments
    for step in ("useradd", "make .venv/.run", "systemctl enable", "cp deploy/"):
        assert step not in comments

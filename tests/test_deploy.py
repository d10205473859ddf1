"""The systemd unit: its sandbox, and its rating by systemd-analyze."""
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

from conftest import ROOT

UNIT = ROOT / "deploy" / "prefectflow.service"


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


def test_unit_comments_point_to_the_doc_instead_of_repeating_the_steps():
    comments = "\n".join(line for line in UNIT.read_text().splitlines() if line.startswith("#"))
    assert "docs/deploying.md" in comments
    for step in ("useradd", "make .venv/.run", "systemctl enable", "cp deploy/"):
        assert step not in comments

"""A champion per site, through the real CLI on a real trained store: `promote --site`,
`--auto --site`, `--rollback --site`, `--list`, `--history`, and two site promotions racing.

The adapted versions come from conftest.register_adapted_version (the contract's tags and a
``site:<site>`` predictions set, registered through MlflowClient), trained versions from the
shared training session, which scored every site.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import (
    assert_one_champion,
    invoke_heartml,
    one_line_error,
    register_adapted_version,
    settings_env,
)
from heartml.registry import read_family
from heartml.settings import Settings

pytestmark = pytest.mark.slow

LR = "heart-disease-logistic_regression"
# The second model of the site tests: its graph has no label output computed from the
# probabilities (the SVM's has, which the recalibrated graph does not handle yet).
GB = "heart-disease-gradient_boosting"
ENV = {"HEARTML_PROMOTED_BY": "site-tests"}


def promote(settings: Settings, *args: str) -> tuple[int, str, str]:
    result = invoke_heartml(settings, "promote", *args, env=ENV)
    return result.returncode, result.stdout, result.stderr


def global_state(settings: Settings) -> tuple[str, list[str]]:
    state = read_family(settings)
    champion = state.champion
    assert champion is not None
    return champion.ref, [v.ref for v in state.in_production]


def test_auto_promotes_the_adapted_version_through_the_site_gate(
    trained_settings: Settings,
) -> None:
    settings = trained_settings
    champion, production = global_state(settings)
    assert champion == f"{LR}/1"
    good = register_adapted_version(settings, LR, 1, "va")

    code, out, err = promote(settings, "--auto", "--site", "va", "--reason", "VA go-live")
    assert code == 0, (out, err)
    assert f"Latest version adapted for site 'va': {LR}/{good}" in out
    assert f"promoted {LR}/{good} to champion of site 'va' (alias 'champion-va')" in out
    state = read_family(settings)
    assert {s: v.ref for s, v in state.site_champions().items()} == {"va": f"{LR}/{good}"}
    assert global_state(settings) == (champion, production)  # untouched
    target = state.find(LR, good)
    assert target.stage == "None" and target.tags["gate_verdict"] == "passed"
    assert target.tags["gate_site"] == "va" and target.tags["gate_champion"] == champion

    # Again: the same version is champion already.
    code, out, _ = promote(settings, "--auto", "--site", "va")
    assert code == 0 and "already the champion of site 'va'" in out

    # A miscalibrated update of the same version is refused by the site gate (exit 2).
    bad = register_adapted_version(settings, LR, 1, "va", update=(2.0, 3.0))
    code, out, _ = promote(settings, "--auto", "--site", "va")
    assert code == 2, out
    assert "refused by the gate" in out and "calibration slope" in out
    assert "on 200 validated rows of site 'va'" in out
    assert read_family(settings).site_champion("va").ref == f"{LR}/{good}"  # type: ignore[union-attr]

    code, out, _ = promote(settings, "--list")
    assert code == 0
    assert "🏥 Site champions" in out
    assert f"   🏆 va: {LR} v{good} (adapted, logistic)" in out
    assert "Aliases: champion-va" in out
    listed = json.loads(promote(settings, "--list", "--json")[1])
    assert listed["site_champions"]["va"]["version"] == good
    assert listed["site_champions"]["va"]["adapted"] is True
    assert listed["champion"]["name"] == LR and listed["champion"]["version"] == 1

    history = json.loads(promote(settings, "--history", "--json", "--site", "va")[1])
    assert [(e["version"], e["promoted"], e["site"]) for e in history] == [
        (bad, False, "va"),
        (good, True, "va"),
    ]
    assert history[1]["by"] == "site-tests"
    assert history[1]["reason"].endswith("VA go-live")
    assert history[1]["gate"]["verdict"] == "passed" and history[1]["gate"]["site"] == "va"
    assert history[0]["gate"]["verdict"] == "refused"
    text = promote(settings, "--history")[1]
    assert f"{LR} v{good}  (ROC-AUC" in text and "[site va]" in text


def test_by_name_and_rollback_for_a_site_leave_the_global_champion_alone(
    trained_settings: Settings,
) -> None:
    settings = trained_settings
    before = global_state(settings)
    first = register_adapted_version(settings, LR, 1, "hungarian", method="intercept")
    second = register_adapted_version(settings, GB, 1, "hungarian", method="intercept")
    for name, number in ((LR, first), (GB, second)):
        code, out, err = promote(settings, "--site", "hungarian", name, str(number))
        assert code == 0, (out, err)
    state = read_family(settings)
    assert state.site_champion("hungarian").ref == f"{GB}/{second}"  # type: ignore[union-attr]
    assert [v.ref for v in state.site_holders("hungarian")] == [f"{GB}/{second}"]

    code, out, _ = promote(settings, "--rollback", "--site", "hungarian", "--dry-run")
    assert code == 0 and f"would promote {LR}/{first} to champion of site 'hungarian'" in out
    assert read_family(settings).site_champion("hungarian").ref == f"{GB}/{second}"  # type: ignore[union-attr]
    code, out, _ = promote(settings, "--rollback", "--site", "hungarian")
    assert code == 0, out
    state = read_family(settings)
    assert [v.ref for v in state.site_holders("hungarian")] == [f"{LR}/{first}"]
    assert global_state(settings) == before
    [latest, *_] = json.loads(promote(settings, "--history", "--json")[1])
    assert latest["site"] == "hungarian" and "rollback of site 'hungarian'" in latest["reason"]


def test_bad_site_names_and_misplaced_versions_are_one_line(trained_settings: Settings) -> None:
    settings = trained_settings
    va = register_adapted_version(settings, LR, 1, "va")
    for bad in ("VA", "va-1", "a" * 33, ""):
        result = invoke_heartml(settings, "promote", "--auto", "--site", bad, env=ENV)
        one_line_error(result, "invalid site name")
    result = invoke_heartml(settings, "promote", "--site", "hungarian", LR, str(va), env=ENV)
    one_line_error(result, "adapted for site 'va', not 'hungarian'")
    result = invoke_heartml(settings, "promote", LR, str(va), env=ENV)
    one_line_error(result, "is adapted for site 'va'", "--site va")
    result = invoke_heartml(settings, "promote", "--auto", "--site", "switzerland", env=ENV)
    one_line_error(result, "no version is adapted for site 'switzerland'")
    result = invoke_heartml(settings, "promote", "--rollback", "--site", "va", env=ENV)
    one_line_error(result, "site 'va' has no champion")
    result = invoke_heartml(settings, "promote", "--list", "--site", "va", env=ENV)
    one_line_error(result, "--list")
    assert read_family(settings).site_champions() == {}


def test_two_simultaneous_site_promotions_leave_one_site_champion(
    trained_settings: Settings,
) -> None:
    settings = trained_settings
    before = global_state(settings)
    candidates = [
        (LR, register_adapted_version(settings, LR, 1, "va")),
        (GB, register_adapted_version(settings, GB, 1, "va")),
    ]
    env = {**settings_env(settings), **ENV}
    for _ in range(2):
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "heartml", "promote", "--site", "va", name, str(number)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, number in candidates
        ]
        try:
            errors = [p.communicate(timeout=120)[1] for p in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert [p.returncode for p in processes] == [0, 0], errors
        state = read_family(settings)
        holders = [v.ref for v in state.site_holders("va")]
        assert len(holders) == 1, holders
        assert state.site_champion("va").ref == holders[0]  # type: ignore[union-attr]
        assert global_state(settings) == before
        assert_one_champion(settings)

"""How a training session turns SIGINT and SIGTERM into an exit: real signals to this process."""

from __future__ import annotations

import os
import signal

import pytest

from heartml.training.interruption import Interrupted, TrainingInterrupted, stop_on_signals


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_stops_the_session_with_the_shells_exit_code(signum: int, code: int) -> None:
    with pytest.raises(Interrupted) as stopped, stop_on_signals():
        os.kill(os.getpid(), signum)
        pytest.fail("the signal did not interrupt")
    assert stopped.value.signum == signum
    assert stopped.value.exit_code == code


def test_a_signal_during_a_deferred_block_is_acted_on_once_the_block_completes() -> None:
    done = []
    with pytest.raises(Interrupted) as stopped, stop_on_signals() as guard:
        with guard.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)  # a second one changes nothing
            done.append("registered")
        pytest.fail("the deferred signal was dropped")
    assert done == ["registered"]
    assert stopped.value.signum == signal.SIGTERM


def test_the_previous_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_the_message_says_what_was_and_was_not_registered() -> None:
    partly = TrainingInterrupted(
        signal.SIGTERM, ("heart-disease-logistic_regression/3",), ("random_forest", "svm")
    )
    assert str(partly) == (
        "interrupted by SIGTERM: registered heart-disease-logistic_regression/3; "
        "not registered: random_forest, svm (no version left half-registered)"
    )
    promoting = TrainingInterrupted(signal.SIGINT, ("heart-disease-knn/2",), (), promoting=True)
    assert str(promoting) == (
        "interrupted by SIGINT: registered heart-disease-knn/2; promotion not completed "
        "(`heartml promote --auto` completes it) (no version left half-registered)"
    )
    assert "registered nothing" in str(TrainingInterrupted(signal.SIGINT, (), ("knn",)))

"""tasks.net.session: the interrupts a task that changes things answers in order."""
import os
import signal
import threading
from types import SimpleNamespace

import pytest

from tasks.net import session


@pytest.mark.parametrize("sig", session.STOPPING)
def test_the_first_interrupt_asks_for_an_orderly_stop_and_the_handlers_go_back_after(sig, capsys):
    s = SimpleNamespace(ex=SimpleNamespace(interrupted=threading.Event()))
    before = signal.getsignal(sig)
    with session._interrupts(s):
        os.kill(os.getpid(), sig)  # delivered to the main thread before kill returns to Python code
        assert s.ex.interrupted.is_set()
    assert signal.getsignal(sig) == before
    assert "interrupt: finishing the step in hand and putting its machine back" in capsys.readouterr().err


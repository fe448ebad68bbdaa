"""Threads that first touch transformers at the same time: a tokenize node compiling its chat
template beside a train node loading the ML stack. Python breaks a cross-thread import deadlock
by handing one thread a half-initialised module, and a build then failed with "module
'transformers' has no attribute 'AutoTokenizer'" (seen with two arms, one training while the
other still tokenized). Each try is a fresh interpreter: the race is only at first import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

RACE = textwrap.dedent("""
    import threading
    from evsys_rules.data import chat_observe, template_clock
    from evsys_rules.ml_stack import preload_ml

    errors = []

    def tokenize_side():
        try:
            chat_observe._observing_template("{{ messages[0]['content'] }}")
            template_clock._install()
        except Exception as exc:
            errors.append(repr(exc))

    def train_side():
        try:
            preload_ml()
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=tokenize_side), threading.Thread(target=train_side)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(errors)
""")


def test_first_imports_of_transformers_from_two_threads_never_see_a_half_initialised_module():
    for _ in range(3):  # before the fix, 6 tries in 8 failed
        proc = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout

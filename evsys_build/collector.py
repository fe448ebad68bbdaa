"""The cyclic garbage collector, paused while an `evsys` command imports and compiles.

Importing and compiling allocate a few hundred thousand objects that live until the command ends
(modules, pydantic schemas, the graph and its keys), and every collection those allocations
trigger walks them all again: a sixth of a 100-arm `plan`. Memory is still freed by reference
counting meanwhile; only objects in reference cycles wait for the collector, and compiling makes
few. So a command pauses it on start, and it is resumed where work of unbounded length begins
(running nodes, `validate --deep`) and when the command ends. A process that had it off already
keeps it off.

The interpreter's shutdown runs one more full collection, over everything the process imported:
60 ms after a `plan` whose whole work took under half a second. The `evsys` executable is about
to exit, so it freezes (`gc.freeze`) what is alive instead, and the shutdown's pass skips it: the
operating system takes the memory back either way, and what evsys writes is closed explicitly.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Turn the collector off until `resume` (nothing, when it is off already)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Turn the collector back on, if `pause` turned it off."""
    global _paused
    if _paused:
        _paused = False
        gc.enable()


def before_exit() -> None:
    """Called by the `evsys` executable as it exits (never by a process that goes on)."""
    gc.freeze()

"""A fresh process that loads one engine, measures its memory on a prompt that fills most of
the context, prints what it measured and its engine's process ids, and then (with --wait)
keeps the engine loaded until its stdin closes or it is killed.

Run by tests as ``python tests/engine_owner.py ENGINE COLUMN [--wait]``: memory has to be
measured in a process of its own (another engine in the same process would inflate it), and
"the engine dies with its owner" needs an owner to kill.
"""

import json
import sys

import labkit
from labkit.memory import MemorySampler

if __name__ == "__main__":
    name, column = sys.argv[1], sys.argv[2]
    with labkit.load(name, model="smollm2-135m", context=1024) as engine:
        sampler = MemorySampler(engine.memory_scope(), 0.05, device=False)
        with sampler.running():
            engine.generate(["the " * 900], max_tokens=64, ignore_eos=True)
        print("MEASURED", json.dumps({"measured": int(sampler.frame()[column].max())}), flush=True)
        print("PIDS", *(p.pid for p in engine.memory_scope().roots), flush=True)
        if "--wait" in sys.argv:
            sys.stdin.read()

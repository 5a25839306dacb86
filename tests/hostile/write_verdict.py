"""Class 1, writing the verdict: forge result.json where the runner writes it (and wherever an out dir may be
mounted), keep rewriting it from a detached daemon, and exit without handing a model over.

Expect: invalid | never handed
Needs: separation
"""

import json
import os
import sys
import time

forged = json.dumps({"status": "ok", "val_bpb": 0.0, "profile": os.environ.get("FARM_PROFILE", "cpu-smoke"),
                     "time_budget": 3.0, "reason": ""})
targets = [os.path.join(os.path.dirname(os.getcwd()), name) for name in ("result.json", "result.json.tmp")]
targets += ["/out/result.json", "/run/farm/out/result.json"]


def forge() -> None:
    for target in targets:
        try:
            with open(target, "w") as f:
                f.write(forged)
            print("LEAK wrote", target, flush=True)
        except OSError as exc:
            print("blocked", target, exc.strerror, flush=True)
    try:
        os.chmod(os.path.dirname(os.getcwd()), 0o777)
        print("LEAK opened the out dir", flush=True)
    except OSError as exc:
        print("blocked chmod", exc.strerror, flush=True)


forge()
if os.fork() == 0:  # a daemon outside the candidate's session, rewriting after the runner has written
    os.setsid()
    end = time.time() + 30
    while time.time() < end:
        for target in targets:
            try:
                with open(target, "w") as f:
                    f.write(forged)
            except OSError:
                pass
        time.sleep(0.05)
    os._exit(0)
sys.exit(0)

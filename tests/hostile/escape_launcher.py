"""Class 1, seizing the channel: kill or trace whatever started it (the runner, or the kubernetes pod's launcher,
PID 1 of the candidate's container), connect to the runner's socket as a second candidate, then leave without
handing a model over, hoping a dead launcher or a forged connection reads as a clean exit.

Expect: invalid | never handed
Needs: separation
"""

import ctypes
import os
import signal
import socket
import sys
import time

for pid in sorted({1, os.getppid()}):
    try:
        os.kill(pid, signal.SIGKILL)  # the kernel drops it silently when it goes to its PID namespace's init
        time.sleep(0.5)
        os.kill(pid, 0)
        print("survived kill", pid, flush=True)
    except ProcessLookupError:
        print("LEAK killed", pid, flush=True)
    except OSError as exc:
        print("blocked kill", pid, exc.strerror, flush=True)
    PTRACE_ATTACH = 16
    if ctypes.CDLL(None, use_errno=True).ptrace(PTRACE_ATTACH, pid, 0, 0) == 0:
        print("LEAK traced", pid, flush=True)
    else:
        print("blocked ptrace", pid, os.strerror(ctypes.get_errno()), flush=True)

for path in ("/exchange/runner.sock", os.path.join(os.path.dirname(os.path.dirname(os.getcwd())), "runner.sock")):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        conn.sendall(b"control\nrc 0\n")
        print("LEAK connected to", path, flush=True)
    except OSError as exc:
        print("blocked connect", path, exc.strerror, flush=True)
    finally:
        conn.close()
sys.exit(0)

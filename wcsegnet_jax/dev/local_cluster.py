"""Several processes of one run on this machine, joined as a multi-host run would be.

What tools/local_cluster.py does: start N copies of a command (by default `python -m
wcsegnet_jax.main`) with the coordinator settings of process i, print their output line by line
prefixed `[i]`, and wait. If one process fails, the others cannot go on (their next collective
would wait for it), so they are stopped and the first failure's status is returned. On CPUs the
processes exchange data through gloo, JAX's CPU collectives.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

MAIN_COMMAND = (sys.executable, '-m', 'wcsegnet_jax.main')
STOP_GRACE_SECONDS = 10  # after SIGTERM (a run saves and exits), before SIGKILL


def free_port() -> int:
  """A TCP port nothing listens on now (the OS picks it)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_args(process_id: int, num_processes: int, port: int) -> list[str]:
  """The flags that make a process of `wcsegnet_jax.main` process `process_id` of the run."""
  return [
    f'--coordinator_address=127.0.0.1:{port}',
    f'--num_processes={num_processes}',
    f'--process_id={process_id}',
  ]


def _exit_status(returncode: int) -> int:
  """A Popen return code as a shell's exit status (killed by signal s: 128 + s)."""
  return 128 - returncode if returncode < 0 else returncode


class _Printer:
  """Copies each process's output to `out`, one whole line at a time, prefixed `[i] `."""

  def __init__(self, out: TextIO):
    self.out, self.lock = out, threading.Lock()

  def copy(self, prefix: str, stream) -> None:
    for line in iter(stream.readline, ''):
      with self.lock:
        self.out.write(prefix + line if line.endswith('\n') else prefix + line + '\n')
        self.out.flush()
    stream.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  """`sig` to a process and its children (grain's workers): each runs in a group of its own."""
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass


def _stop(procs: Sequence[subprocess.Popen], sig: int, grace: float) -> None:
  """`sig` to the processes still running; SIGKILL to those still running `grace` s later."""
  running = [p for p in procs if p.poll() is None]
  for p in running:
    _signal_group(p, sig)
  deadline = time.monotonic() + grace
  for p in running:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      _signal_group(p, signal.SIGKILL)
      p.wait()


def _raise_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def _wait(procs: Sequence[subprocess.Popen], deadline: float | None) -> int | None:
  """Waits until every process has ended (None) or one has failed (its index); TimeoutError
  past `deadline` (a `time.monotonic()`)."""
  while any(p.poll() is None for p in procs):
    failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
    if failed is not None:
      return failed
    if deadline is not None and time.monotonic() > deadline:
      raise TimeoutError
    time.sleep(0.05)
  return next((i for i, p in enumerate(procs) if p.returncode != 0), None)


def run(
  num_processes: int,
  args: Sequence[str],
  port: int | None = None,
  command: Sequence[str] = MAIN_COMMAND,
  out: TextIO | None = None,
  env: dict[str, str] | None = None,
  cwd: str | None = None,
  grace: float = STOP_GRACE_SECONDS,
  timeout: float | None = None,
) -> int:
  """Runs `command ARGS COORDINATOR_FLAGS` as processes 0..num_processes-1; returns 0 when all
  succeed, else the exit status of the first to fail (the others are stopped: SIGTERM, then
  SIGKILL after `grace` seconds). Ctrl-C or SIGTERM stops them all (status 130), as does
  running past `timeout` seconds (status 124, as `timeout(1)`)."""
  if num_processes < 1:
    raise ValueError(f'num_processes must be at least 1, not {num_processes}')
  out = out or sys.stdout
  port = port or free_port()
  env = {
    **os.environ,
    **(env or {}),
    # gloo: JAX's CPU collectives across processes (harmless for GPU and TPU runs).
    'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
  }
  printer, procs, readers = _Printer(out), [], []
  message = None
  # SIGTERM (a scheduler's or `kill`'s stop) to this tool stops the processes as Ctrl-C does;
  # they run in sessions of their own, so would otherwise go on without it.
  previous = (
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if threading.current_thread() is threading.main_thread()
    else None
  )
  try:
    for i in range(num_processes):
      procs.append(
        subprocess.Popen(
          [*command, *args, *process_args(i, num_processes, port)],
          cwd=cwd,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
          errors='replace',
          start_new_session=True,
        )
      )  # its own group: stopping it stops its workers too
      readers.append(
        threading.Thread(target=printer.copy, args=(f'[{i}] ', procs[-1].stdout), daemon=True)
      )
      readers[-1].start()
    failed = _wait(procs, None if timeout is None else time.monotonic() + timeout)
    status = 0
    if failed is not None:
      _stop(procs, signal.SIGTERM, grace)
      status = _exit_status(procs[failed].returncode)
      message = (
        f'local_cluster: process {failed} of {num_processes} failed (exit status '
        f'{status}); stopped the others\n'
      )
  except TimeoutError:
    _stop(procs, signal.SIGTERM, grace)
    status = 124
    message = f'local_cluster: stopped all {num_processes} processes after {timeout} s\n'
  except KeyboardInterrupt:
    _stop(procs, signal.SIGTERM, grace)  # what a run stops on whatever its SIGINT handling
    status = 128 + signal.SIGINT
  finally:
    _stop(procs, signal.SIGKILL, 0)  # none is left behind, whatever happened above
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
    for reader in readers:
      reader.join(timeout=5)
  if message:  # after the processes' last lines
    out.write(message)
    out.flush()
  return status

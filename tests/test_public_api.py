"""The public surface: the names ``vi_flow`` exports, and what importing it costs."""

from __future__ import annotations

import os
import subprocess
import sys

import vi_flow

EXPECTED = {
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncFlow",
    "AsyncJob",
    "AsyncRun",
    "AsyncPausedResult",
    "AsyncTask",
    "ExecuteResult",
    "Flow",
    "Job",
    "PausedResult",
    "Run",
    "ShellResult",
    "ShellUnavailableError",
    "Task",
    "TaskConfig",
    "TaskEndedError",
    "TaskStatus",
    "ToolHandlerWarning",
    "VolumeSpec",
    "AsyncPaginator",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientState",
    "ClientStateError",
    "ConflictError",
    "FlowExecutionError",
    "FlowNotFoundError",
    "HostKeyChangedError",
    "InsufficientCreditsError",
    "InternalServerError",
    "LocalServerError",
    "NotFoundError",
    "NotImplementedByProviderError",
    "PaginatedResponse",
    "PaginationError",
    "PaginationParams",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "RateLimitError",
    "RunNotFoundError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "Timeout",
    "ToolCallLimitError",
    "ToolCallsPendingError",
    "UnprocessableEntityError",
    "ViFlowError",
    "__version__",
}


def test_public_names_are_pinned() -> None:
    assert set(vi_flow.__all__) >= EXPECTED
    for name in vi_flow.__all__:
        assert getattr(vi_flow, name) is not None, name


def test_error_tree_matches_its_drawing() -> None:
    assert issubclass(vi_flow.FlowNotFoundError, vi_flow.NotFoundError)
    assert issubclass(vi_flow.NotFoundError, vi_flow.APIStatusError)
    assert issubclass(vi_flow.APITimeoutError, vi_flow.APIConnectionError)
    assert issubclass(vi_flow.APIStatusError, vi_flow.APIError)
    assert issubclass(vi_flow.TaskTimeoutError, TimeoutError)
    for name in vi_flow.__all__:
        obj = getattr(vi_flow, name)
        if isinstance(obj, type) and issubclass(obj, vi_flow.ViFlowError):
            assert obj.__name__ in (vi_flow._errors.__doc__ or ""), (
                f"{name} missing from the drawing"
            )


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_import_is_light() -> None:
    code = (
        "import sys, vi_flow\n"
        "heavy = [m for m in ('aiohttp', 'asyncssh', 'vi_flow.server', 'vi_flow.cli', 'rich') if m in sys.modules]\n"
        "print(heavy)"
    )
    assert _run(code).stdout.strip() == "[]"


def test_opening_ssh_warns_of_nothing() -> None:
    # cryptography 51 deprecates DSA, which asyncssh names on import: every shell and log
    # follow printed "CryptographyDeprecationWarning: DSA is deprecated ..." to the user.
    code = "import vi_flow, asyncssh\nfrom vi_flow.compute import ssh\nprint(asyncssh.__version__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    assert done.stderr == ""


def test_vi_flow_log_debug_logs_requests_without_the_token() -> None:
    code = (
        "import vi_flow\n"
        "with vi_flow.Client() as c:\n"
        "    c.flows.list()\n"
        "    print(c.async_client.http.connection._endpoint.api_key)\n"
    )
    done = _run(code, VI_FLOW_LOG="debug")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert len(token) > 16
    assert "GET http://127.0.0.1:" in done.stderr and "/v1/flows" in done.stderr
    assert token not in done.stderr


def test_the_seed_methods_on_the_client_classes_have_their_signatures() -> None:
    # QA: inspect.signature(vi_flow.Client.cancel) raised "forward(...) is not a callable
    # object", and help() showed "forward in module vi_flow._forward": what IDEs, pydoc
    # and documentation tools read on the class
    import inspect
    import pydoc

    for cls in (vi_flow.Client, vi_flow.AsyncClient):
        for name in ("cancel", "logs", "run", "create_volume", "ssh"):
            params = list(inspect.signature(getattr(cls, name)).parameters)
            assert params[0] == "self" and len(params) > 1, (cls, name, params)
        assert "task_id: 'str', force: 'bool' = False" in pydoc.render_doc(cls.cancel)

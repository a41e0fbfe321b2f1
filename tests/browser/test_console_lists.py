"""The console's lists past their first page, the Runs filter, odd input names, long log
lines and long names (defects found by QA).

Each test acts on the home's real server in Chromium, as in ``test_console.py``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from .conftest import ConsoleServer
from .test_console import _signed_in, _until

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

TOOL_FLOW_PAUSING = (
    {"block": "tool", "id": "ask", "settings": {"tool": "count", "arguments": {}}},
)
LONG_NAME = "quarterly-revenue-forecast-" * 7 + "end"  # 192 characters, no space to break at


@pytest.fixture(scope="module")
def many_flows(console_server: ConsoleServer) -> list[str]:
    """205 flows, oldest first: more than one page of the Flows list (200)."""
    return [
        console_server.flow(f"many-flow-{n:03d}", {"block": "emit", "settings": {"count": 1}})
        for n in range(205)
    ]


def _walk(one: Any, server: ConsoleServer, path: str, older: str) -> list[list[str]]:
    """Open a list's page and follow its ``older`` link to the end: each page's ids."""
    one.page.goto(server.root + path)
    pages = []
    while True:
        one.page.wait_for_selector("main tbody tr .mono")
        pages.append(one.page.locator("main tbody tr .mono").all_inner_texts())
        link = one.page.locator(f".pager a:text-is('{older}')")
        if not link.count():
            return pages
        link.click()


def _listed(server: ConsoleServer, kind: str, key: str) -> list[str]:
    """The ids of the API's list, newest first (all of them fit one page of 1000)."""
    return [item[key] for item in server.call("GET", f"/{kind}?pageSize=1000")["items"]]


def _pages_back_and_forth(one: Any, server: ConsoleServer, kind: str, size: int) -> None:
    key = {"flows": "flowId", "tasks": "taskId", "volumes": "volumeId"}[kind]
    everything = _listed(server, kind, key)
    assert len(everything) > size
    pages = _walk(one, server, f"/{kind}", f"Older {kind} →")
    assert pages == [everything[:size], everything[size:]]  # the oldest ones too, once each
    one.page.click(".pager a:text-is('Newest')")
    one.page.wait_for_selector("main tbody tr .mono")
    assert one.page.locator("main tbody tr .mono").all_inner_texts() == pages[0]
    assert "pageToken" not in one.page.url


def test_the_flows_list_pages_back_to_the_oldest_flow(
    visit: Any, console_server: ConsoleServer, many_flows: list[str]
) -> None:
    one = _signed_in(visit, console_server)
    _pages_back_and_forth(one, console_server, "flows", 200)


def test_the_tasks_list_pages_back_to_the_oldest_task(
    visit: Any, console_server: ConsoleServer
) -> None:
    for n in range(105):  # not waited for: the list shows them in any state
        console_server.call("POST", "/tasks", {"name": f"many-task-{n:03d}", "command": "true"})
    one = _signed_in(visit, console_server)
    _pages_back_and_forth(one, console_server, "tasks", 100)
    one.page.focus(".pager a:text-is('Older tasks →')")
    for _ in range(2):  # refreshes of the live list keep the keyboard focus on its pager
        with one.page.expect_response(re.compile(r"/v1/tasks\?")) as refresh:
            pass
        refresh.value.finished()
    time.sleep(0.3)  # the page draws right after it has read the answer
    assert one.page.evaluate("document.activeElement.textContent") == "Older tasks →"


def test_the_volumes_list_pages_back_to_the_oldest_volume(
    visit: Any, console_server: ConsoleServer
) -> None:
    for n in range(201):
        console_server.call("POST", "/volumes", {"name": f"many-volume-{n:03d}", "sizeGb": 1})
    one = _signed_in(visit, console_server)
    _pages_back_and_forth(one, console_server, "volumes", 200)


def _flow_filter(one: Any) -> str:
    """The text of the option the Runs page's Flow filter shows."""
    chosen = one.page.locator("select[name=flowId] option:checked")
    return str(chosen.inner_text())


def test_the_runs_flow_filter_shows_the_filter_applied(
    visit: Any, console_server: ConsoleServer, many_flows: list[str]
) -> None:
    # Its options were one page of 200 flows: for an older flow the select said "All
    # flows" over a table of that flow's runs alone.
    oldest = many_flows[0]
    run = console_server.call("POST", f"/flows/{oldest}/jobs", {})["executionId"]
    spec = {"name": "theirs", "blocks": [{"block": "emit"}], "inputs": []}
    theirs = console_server.call(
        "POST", "/flows", {"spec": spec}, token=console_server.other_token
    )["flowId"]
    one = _signed_in(visit, console_server)
    one.page.goto(f"{console_server.root}/runs?flowId={oldest}")
    one.page.wait_for_selector(f"#runs tr[data-run='{run}']")
    assert one.page.locator("#runs tbody tr").count() == 1
    assert _flow_filter(one) == f"many-flow-000 · {oldest}"
    options = one.page.locator("select[name=flowId] option").count()
    assert options == 1 + len(_listed(console_server, "flows", "flowId"))  # every flow
    for missing in ("flow_0123456789abcdef", theirs):  # none, or another organization's
        one.page.goto(f"{console_server.root}/runs?flowId={missing}")
        one.page.wait_for_selector("text=No runs match.")
        assert _flow_filter(one) == f"unknown flow · {missing}"

    # A flow beyond the one page of options is named from GET /v1/flows/{id}.
    answer = {"items": [], "nextPage": None}
    one.page.route(re.compile(r"/v1/flows\?pageSize=1000$"), lambda r: r.fulfill(json=answer))
    one.page.goto(f"{console_server.root}/runs?flowId={oldest}")
    one.page.wait_for_selector(f"#runs tr[data-run='{run}']")
    assert _flow_filter(one) == f"many-flow-000 · {oldest}"
    assert one.page.locator("select[name=flowId] option").count() == 2


def test_an_input_named_like_an_objects_builtin_is_sent(
    visit: Any, console_server: ConsoleServer
) -> None:
    # `parameters[name] = value` on a plain object set its prototype for "__proto__": the
    # value was dropped and the run refused ("required input not given").
    inputs = [{"name": name, "required": True} for name in ("__proto__", "constructor")]
    flow = console_server.flow("odd inputs", {"block": "emit"}, inputs=inputs)
    one = _signed_in(visit, console_server)
    one.page.goto(f"{console_server.root}/flows/{flow}")
    form = one.page.locator("form.execute")
    form.locator("input[name='param:__proto__']").fill('{"polluted": true}')
    form.locator("input[name='param:constructor']").fill("Oslo")
    form.locator("button[type=submit]").click()
    one.page.wait_for_url(re.compile(r"/runs/run_"))
    run_id = one.page.url.rsplit("/", 1)[1]
    parameters = console_server.call("GET", f"/runs/{run_id}")["spec"]["parameters"]
    assert parameters == {"__proto__": {"polluted": True}, "constructor": "Oslo"}


def _log_rows(one: Any) -> list[tuple[int, str]]:
    """The drawn log rows: each one's length and last 40 characters."""
    rows = one.page.evaluate(
        "[...document.querySelectorAll('.log-line:not([hidden])')]"
        ".map(r => [r.textContent.length, r.textContent.slice(-40)])"
    )
    return [(n, tail) for n, tail in rows]


def _following(visit: Any, server: ConsoleServer, command: str) -> Any:
    """A signed-in page following the log of a task that runs ``command`` only once the
    page shows the task's first line ("ready"): what it draws is what came live. A page
    that opens a finished task reads each stream 256 KiB at a time, and a CI machine slow
    to sign in opened it after a ``sleep 2`` meant to wait for the page had ended."""
    gate = "echo ready; while [ ! -e go ]; do sleep 0.05; done; "
    task = server.call("POST", "/tasks", {"command": gate + command})["taskId"]
    one = _signed_in(visit, server)
    one.page.goto(f"{server.root}/tasks/{task}")
    one.page.wait_for_selector(".log-line:text-is('ready')", timeout=60_000)
    (server.home / "tasks" / task / "workspace" / "go").touch()
    return one


def test_a_log_line_longer_than_one_read_stays_one_line(
    visit: Any, console_server: ConsoleServer
) -> None:
    # The server sends a line past 256 KiB in pieces, only the last one ending in "\n";
    # the page drew each piece as a line of its own. The sleep makes the page draw the
    # line's start before its rest.
    command = (
        "head -c 8000000 /dev/zero | tr '\\0' x; sleep 1;"
        " head -c 9000000 /dev/zero | tr '\\0' x; echo -end; echo after"
    )
    one = _following(visit, console_server, command)
    one.page.wait_for_selector(".log-line:text-is('after')", timeout=60_000)
    assert one.page.inner_text(".section-head .muted") == "3 lines"
    note = " … (16,737,860 more characters)"  # 17,000,004 - 262,144 drawn
    x_line = (262_144 + len(note), ("x" * 40 + note)[-40:])
    assert _log_rows(one) == [(5, "ready"), x_line, (5, "after")]


def test_the_rest_of_a_long_line_no_longer_kept_is_left_out(
    visit: Any, console_server: ConsoleServer
) -> None:
    # The long line's start is pushed out of the page's 50,000 lines by stderr before its
    # end comes: that end is not a line of its own.
    command = "head -c 300000 /dev/zero | tr '\\0' x; seq 50001 >&2; sleep 2; echo -end; echo next"
    one = _following(visit, console_server, command)
    one.page.wait_for_selector(".log-line:text-is('next')", timeout=60_000)
    counter = one.page.inner_text(".section-head .muted")
    assert counter == "50,004 lines (the first 4 are no longer kept here)"  # ready, x, 1, 2
    assert _log_rows(one)[-2:] == [(5, "50001"), (4, "next")]


def _finished(server: ConsoleServer, command: str) -> str:
    """A task of ``command`` once it has completed: its id."""
    task = server.call("POST", "/tasks", {"command": command})["taskId"]
    deadline = time.monotonic() + 60
    while server.call("GET", f"/tasks/{task}")["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return str(task)


def test_a_log_whose_last_2_mib_are_one_line_shows_that_lines_end(
    visit: Any, console_server: ConsoleServer
) -> None:
    # QA: a task whose stdout ended with a 5 MB line showed "0 lines": the page opens a
    # long log on its last 2 MiB and leaves out the partial line it starts in, and that
    # was all of them. A last line the task never ended with "\n" was lost the same way.
    one = _signed_in(visit, console_server)
    cut = "(start of the line not shown) … "
    its_end = [(len(cut) + 262_144, "L" * 40)]  # within a line's 256 Ki, as any line
    for end, rows in (("echo", its_end), ("", its_end), ("echo; echo after", [(5, "after")])):
        task = _finished(console_server, f"seq 1000; head -c 5000000 /dev/zero | tr '\\0' L; {end}")
        one.page.goto(f"{console_server.root}/tasks/{task}")
        counter = one.page.locator(".section-head .muted")
        _until(lambda: counter.inner_text().startswith("1 line ·"))  # noqa: B023
        assert _log_rows(one) == rows, end  # a line after it: the partial one left out
        first = one.page.evaluate("document.querySelector('.log-line').textContent")
        assert first.startswith(cut) or rows[0][1] == "after"


def test_long_names_keep_every_column_in_view(visit: Any, console_server: ConsoleServer) -> None:
    # The Flow select took its longest option's width and the Flow column did not wrap: at
    # 1280 px the page was 1861 px wide, and Condition, Created and Took were off screen.
    flow = console_server.flow(LONG_NAME, {"block": "emit"})
    console_server.call("POST", f"/flows/{flow}/jobs", {})
    console_server.call("POST", "/tasks", {"name": LONG_NAME, "command": "true"})
    for width in (1280, 390):
        one = _signed_in(visit, console_server, width=width, height=800)
        for path in ("/runs", "/flows", "/tasks"):
            one.page.goto(console_server.root + path)
            one.page.wait_for_selector(f"main tbody :text('{LONG_NAME[:40]}')")
            page_width = one.page.evaluate("document.documentElement.scrollWidth")
            assert page_width <= width, (path, width, page_width)
            if width == 1280:  # every column in view, none scrolled off
                wrap = "document.querySelector('.table-wrap')"
                over = one.page.evaluate(f"{wrap}.scrollWidth - {wrap}.clientWidth")
                assert over <= 0, (path, over)
            shown = one.page.locator(f"main tbody [title='{LONG_NAME}']")  # whole on hover
            assert shown.count() == 1, path


def test_detail_pages_keep_long_text_and_direction_controls_in_their_place(
    visit: Any, console_server: ConsoleServer
) -> None:
    # Found by QA: a flow page was 45,884 px wide at 390 px (a 250-character name, a
    # 5,000-character description), a task's 2,087 px; and U+202E in a command showed
    # `echo "\u202e; fr- mr #" safe` as `echo "# rm -rf ;" safe`.
    described = {"name": "F" * 250, "description": "D" * 5000}
    made = console_server.call("POST", "/flows", {**described, "blocks": [{"block": "emit"}]})
    # QA: the marks U+200E, U+200F and U+061C were drawn raw, and still turned text
    command = 'echo "\u202e; fr- mr #\u202c" safe "rm \u200f-rf\u061c /x \u200e" && sleep 30'
    task = console_server.call("POST", "/tasks", {"name": "T" * 200, "command": command})
    one = _signed_in(visit, console_server, width=390, height=800)
    for path in (f"/flows/{made['flowId']}", f"/tasks/{task['taskId']}"):
        one.page.goto(console_server.root + path)
        one.page.wait_for_selector("main h1")
        width = one.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
    # one line is "1 line", not "1 lines"
    one.page.wait_for_selector(".section-head .muted:text-is('1 line')", timeout=30_000)
    shown = one.page.inner_text("main")
    assert "\u202e" not in shown and "⟨U+202E⟩; fr- mr #⟨U+202C⟩" in shown
    assert "rm ⟨U+200F⟩-rf⟨U+61C⟩ /x ⟨U+200E⟩" in shown
    assert not {"\u200e", "\u200f", "\u061c"} & set(shown)
    console_server.call("POST", f"/tasks/{task['taskId']}/cancel", {"force": True})


def test_a_link_whose_id_climbs_out_signs_nothing_in(
    visit: Any, console_server: ConsoleServer
) -> None:
    # Client-side path traversal (found by QA): the router decoded the id of
    # /runs/..%2F..%2Fconsole%2Fsignin%3Fcode%3DX and fetched /v1/runs/<it>, which the
    # browser resolved to /console/signin?code=X, a same-origin request the server took
    # for a sign-in: the victim's console was switched to the attacker's organization.
    one = _signed_in(visit, console_server)
    code = console_server.sign_in_url(console_server.other_token).split("code=", 1)[1]
    for kind in ("runs", "tasks", "flows"):
        climb = f"/{kind}/..%2F..%2Fconsole%2Fsignin%3Fcode%3D{code}%26"
        one.page.goto(console_server.root + climb)
        one.page.wait_for_selector("h1:text('Not found')")
        session = one.page.evaluate(
            "fetch('/console/api/session', {headers: {'X-CSRF-Token':"
            " localStorage.getItem('vi-flow-console-key')}}).then(r => r.json())"
        )
        assert session["organizationId"] == "org_default", kind
    # the longest id a user may choose still has its page
    chosen = "flow_" + "x" * 64
    console_server.call(
        "POST", f"/flows?flowId={chosen}", {"name": "long id", "blocks": [{"block": "emit"}]}
    )
    one.page.goto(f"{console_server.root}/flows/{chosen}")
    one.page.wait_for_selector("h1:text('long id')")
    # and a fetch of the link itself (as a page's script would make it) is no sign-in
    status = one.page.evaluate(
        f"fetch('/console/signin?code={code}', {{redirect: 'manual'}}).then(r => r.status)"
    )
    assert status == 403
    assert one.page.inner_text("#who") == "org_default"


def test_numbers_past_two_to_the_53_keep_their_digits(
    visit: Any, console_server: ConsoleServer
) -> None:
    # The execute form sent 9007199254740993 as ...992 and 1e400 as null, and the run page
    # showed ...992 (found by QA); the CLI sends the first exactly and 1e400 as text.
    inputs = [{"name": name, "required": True} for name in ("big", "huge")]
    flow = console_server.flow("numbers", *TOOL_FLOW_PAUSING, inputs=inputs)
    one = _signed_in(visit, console_server)
    one.page.goto(f"{console_server.root}/flows/{flow}")
    form = one.page.locator("form.execute")
    form.locator("input[name='param:big']").fill("9007199254740993")
    form.locator("input[name='param:huge']").fill("1e400")
    form.locator("button[type=submit]").click()
    one.page.wait_for_url(re.compile(r"/runs/run_"))
    run_id = one.page.url.rsplit("/", 1)[1]
    parameters = console_server.call("GET", f"/runs/{run_id}")["spec"]["parameters"]
    assert parameters == {"big": 9007199254740993, "huge": "1e400"}
    answer = one.page.locator("form.tool-call")
    answer.locator("textarea").fill('{"n": 1e400}')
    answer.locator("button").click()
    assert "too large for JSON" in answer.locator(".field-error").inner_text()
    answer.locator("textarea").fill('{"n": 1234567890123456789}')
    answer.locator("button").click()
    one.page.wait_for_selector("#run-condition [data-state=Succeeded]", timeout=30_000)
    trace = console_server.call("GET", f"/runs/{run_id}/trace")
    assert trace["steps"][-1]["output"] == {"n": 1234567890123456789}
    one.page.reload()
    one.page.wait_for_selector(".timeline [data-step=ask] details")
    one.page.click(".timeline [data-step=ask] summary")
    assert "1234567890123456789" in one.page.inner_text(".timeline [data-step=ask]")


def test_each_page_has_a_title_of_its_own(visit: Any, console_server: ConsoleServer) -> None:
    # QA AL: every page was titled "vi-flow console": tabs and history entries looked alike
    flow = console_server.flow("titled", {"block": "emit", "settings": {"count": 1}})
    job = console_server.call("POST", f"/flows/{flow}/jobs", {})
    one = _signed_in(visit, console_server)
    for path, title in [
        ("/flows", "Flows"),
        (f"/runs/{job['executionId']}", f"Run {job['executionId']}"),
        ("/volumes", "Volumes"),
        ("/nowhere", "Not found"),
    ]:
        one.page.goto(console_server.root + path)
        one.page.wait_for_function("t => document.title === t", arg=f"{title} · vi-flow console")


def test_a_tasks_command_keeps_its_line_breaks(visit: Any, console_server: ConsoleServer) -> None:
    # QA AL: "echo hello # note\necho SECOND" showed on one line, the second command
    # (which ran) read as part of the comment
    command = ["sh", "-c", "echo hello # note\necho SECOND"]
    task = console_server.call("POST", "/tasks", {"command": command})
    one = _signed_in(visit, console_server)
    one.page.goto(f"{console_server.root}/tasks/{task['taskId']}")
    code = one.page.locator("dd code.command")
    assert code.inner_text() == "sh -c 'echo hello # note\necho SECOND'"
    lines = code.evaluate(
        "c => c.getClientRects().length > 1 || c.offsetHeight > 1.5 * parseFloat(getComputedStyle(c).lineHeight)"
    )
    assert lines, "the command's second line is drawn on its first"
    console_server.call("POST", f"/tasks/{task['taskId']}/cancel", {})


def test_a_run_events_long_line_is_cut_in_its_row_and_whole_in_its_detail(
    visit: Any, console_server: ConsoleServer
) -> None:
    # QA AL: 12 log lines of 2 MB, drawn whole in their rows, froze a run's page for 9 s
    line = "x" * 50_000 + " end"
    flow = console_server.flow("long", {"block": "emit", "settings": {"count": 1, "line": line}})
    job = console_server.call("POST", f"/flows/{flow}/jobs", {})
    one = _signed_in(visit, console_server)
    one.page.goto(f"{console_server.root}/runs/{job['executionId']}")
    one.page.wait_for_selector(".ev-flow_completed", timeout=30_000)
    row = one.page.locator(".vl-row", has_text="more characters").first
    text = row.text_content() or ""
    assert len(text) < 2100 and "(48," in text, text[-80:]
    row.click()
    assert line in (one.page.locator(".event-detail").text_content() or "")
    # QA AM: a cut between the halves of an emoji drew a lone half (as U+FFFD)
    for emoji in ("😀" * 3000, "a" + "😀" * 3000):  # one of the two is cut inside an emoji
        settings = {"count": 1, "line": emoji}
        flow = console_server.flow("emoji", {"block": "emit", "settings": settings})
        job = console_server.call("POST", f"/flows/{flow}/jobs", {})
        one.page.goto(f"{console_server.root}/runs/{job['executionId']}")
        one.page.wait_for_selector(".ev-flow_completed", timeout=30_000)
        row = one.page.locator(".vl-row", has_text="more characters").first
        cut = row.evaluate("r => r.textContent.split(' … (')[0]")
        assert not re.search(r"[\ud800-\udfff]", cut), repr(cut[-8:])


def test_a_tasks_command_shows_its_words_apart(visit: Any, console_server: ConsoleServer) -> None:
    task = console_server.call("POST", "/tasks", {"command": ["sh", "-c", "printf 'x y'", ""]})
    one = _signed_in(visit, console_server)
    one.page.goto(f"{console_server.root}/tasks/{task['taskId']}")
    shown = one.page.locator("dd code").first.inner_text()
    assert shown == """sh -c 'printf '"'"'x y'"'"'' ''"""
    console_server.call("POST", f"/tasks/{task['taskId']}/cancel", {})

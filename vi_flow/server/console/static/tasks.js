// Tasks: the list (state, instance), and one task (live log, state changes, Cancel, artifacts).
'use strict';
import {
  VirtualList, actionButton, api, asTerminalShows, badge, drawPager, duration, every, h, lastDrawn, link, notice,
  onLeave, pageToken, query, refreshRows, shown, table, when, withKey,
} from './lib.js';

const ENDED = new Set(['completed', 'failed', 'cancelled', 'preempted', 'terminated']);
const KEEP = 50000; // log lines kept in memory; the page shows a window of them
const KEEP_CHARS = 16 * 1024 * 1024; // and at most this much of their text (long lines)
// A line keeps (and shows) no more characters than this and counts the rest: a line of
// 17 MB drawn whole stalled the page for seconds, and one without an end would grow on.
const LINE_CHARS = 256 * 1024;
const FROM_END = 2 * 1024 * 1024; // a long log opens on its last 2 MiB

function instance(t) {
  return t.instanceType + (t.gpuCount ? ` · ${t.gpuCount}× ${t.gpuType || 'GPU'}` : '');
}

export async function tasksPage(root) {
  const token = pageToken();
  const body = h('tbody');
  const more = h('p', { class: 'pager' });
  root.append(h('h1', {}, 'Tasks'), h('div', { class: 'table-wrap' }, h('table', { id: 'tasks' },
    h('thead', {}, h('tr', {}, ['Task', 'Name', 'State', 'Instance', 'Created', 'Exit code'].map((x) => h('th', { scope: 'col' }, x)))), body)), more);
  const load = async () => {
    const page = await api('GET', '/v1/tasks' + query({ pageToken: token, pageSize: 100 }));
    const rows = page.items.map((t) => h('tr', { 'data-task': t.taskId, 'data-key': t.taskId },
      h('td', {}, link(`/tasks/${t.taskId}`, t.taskId, { class: 'mono' })), h('td', {}, h('span', { class: 'clip', title: t.name }, t.name)),
      h('td', {}, badge(t.status)), h('td', {}, instance(t)), h('td', {}, when(t.createdAt)),
      h('td', {}, ended(t))));
    refreshRows(body, rows.length ? rows : [h('tr', {}, h('td', { colspan: 6 }, 'No tasks yet.'))]);
    drawPager(more, { path: '/tasks', token, nextPage: page.nextPage, older: 'Older tasks →' });
  };
  await load();
  every(2000, () => load().catch(() => {}));
}

// The exit code, or the signal that ended the process (docs/tasks.md, "How a task ended").
function ended(t) {
  if (t.signal != null) return `signal ${t.signal}`;
  return t.exitCode ?? '–';
}

/** An argv list as a shell would take it back (`sh -c 'printf x'`), as `shlex.join` writes it. */
function commandLine(command) {
  if (!Array.isArray(command)) return command || '';
  return command.map((word) => (/^[A-Za-z0-9_@%+=:,.\/-]+$/.test(word) ? word
    : `'${word.replaceAll("'", "'\"'\"'")}'`)).join(' ');
}

function facts(t) {
  const pairs = [
    ['State', badge(t.status)], ['Instance', instance(t)], ['Provider', t.provider],
    ['Command', h('code', { class: 'command' }, commandLine(t.config.command))], ['Exit code', ended(t)],
    ['Reason', [t.reason, t.message].filter(Boolean).join(': ') || '–'],
    ['Ran for', t.startedAt ? duration((t.endedAt || Date.now()) - t.startedAt) : '–'],
  ];
  if (t.runId) pairs.push(['Run', link(`/runs/${t.runId}`, t.runId, { class: 'mono' })]);
  return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function changes(t, seen) {
  const items = [['created', t.createdAt]];
  if (t.startedAt) items.push(['started', t.startedAt]);
  for (const [state, at] of seen) if (!ENDED.has(state) && state !== 'running') items.push([state, at]);
  if (t.endedAt) items.push([`${t.status}${t.reason ? ' (' + t.reason + ')' : ''}`, t.endedAt]);
  return h('ol', { class: 'changes' }, items.map(([s, at]) => h('li', {}, h('span', { class: 'muted' }, when(at)), ' ', s)));
}

async function artifacts(taskId) {
  const out = await api('GET', `/v1/tasks/${taskId}/outputs`);
  const items = out.items || [];
  if (!items.length) return notice('No artifacts (files the task wrote to its output directory).');
  return table(['File', 'Size'], items.map((f) => h('tr', {},
    h('td', {}, h('a', { href: withKey(`/v1/tasks/${taskId}/outputs/${f.path.split('/').map(encodeURIComponent).join('/')}`), download: f.path.split('/').pop() }, f.path)),
    h('td', {}, `${f.size.toLocaleString()} bytes`))));
}

function logView() {
  const counter = h('span', { class: 'muted' });
  const list = new VirtualList({
    label: 'Task log',
    rowHeight: 20,
    render: (row, line) => {
      row.className = 'vl-row log-line' + (line.stream === 'stderr' ? ' stderr' : '') + (row.classList.contains('selected') ? ' selected' : '');
      const text = (line.headless ? '(start of the line not shown) … ' : '') + asTerminalShows(line.text);
      row.textContent = shown(line.more ? `${text} … (${line.more.toLocaleString()} more characters)` : text);
    },
  });
  return { counter, list };
}

/**
 * The log's lines as the stream's frames bring them, handed to `list` (and their count to
 * `drawn`) once per animation frame; the newest KEEP lines are kept, with no more than
 * KEEP_CHARS of text, LINE_CHARS of any one. `windowEnd[stream]`: where a stream read from
 * past its start (it may start inside a line) ends at the page's opening, in bytes; that
 * first partial line is left out, unless it is all there is of the stream up to there:
 * then its end shows, marked as cut. Returns `take(stream, text, offset)`, to call with
 * each frame (`offset`: the stream's byte offset after it).
 */
function keptLines(list, windowEnd, drawn) {
  let lines = [];
  let dropped = 0; // lines no longer kept
  let queue = [];
  let flushing = false;
  let kept = 0; // characters of text in lines and queue
  // A stream's last line while no "\n" has ended it: the server sends a line longer than
  // one read (256 KiB) in several frames, and the next frame of the stream goes on with it.
  const open = { stdout: null, stderr: null };
  const midLine = { stdout: 'stdout' in windowEnd, stderr: 'stderr' in windowEnd };
  // The end of a window's first partial line so far (its last LINE_CHARS characters): a
  // log whose last 2 MiB are one long line would otherwise show no line at all.
  const partial = { stdout: midLine.stdout ? '' : null, stderr: midLine.stderr ? '' : null };
  const flush = () => {
    flushing = false;
    lines = lines.concat(queue);
    queue = [];
    let cut = Math.max(0, lines.length - KEEP);
    let gone = 0;
    for (let i = 0; i < cut; i++) gone += lines[i].text.length;
    while (kept - gone > KEEP_CHARS && cut < lines.length - 1) gone += lines[cut++].text.length;
    if (cut) { dropped += cut; kept -= gone; lines = lines.slice(cut); }
    list.setItems(lines);
    drawn(lines.length + dropped, dropped);
  };
  // `at`: the line's place in the whole log, so lines[i].at === dropped + i.
  const push = (stream, text) => {
    const line = { stream, text: '', more: 0, at: dropped + lines.length + queue.length };
    grow(line, text);
    queue.push(line);
    return line;
  };
  const grow = (line, text) => {
    if (!line.more && text.includes('\r')) { // redrawn (a progress bar): its last state shows
      text = lastDrawn(line.text + text);
      kept -= line.text.length;
      line.text = '';
    }
    let room = line.more ? 0 : LINE_CHARS - line.text.length;
    if (text.length > room) {
      const high = text.charCodeAt(room - 1);
      if (high >= 0xD800 && high <= 0xDBFF) room -= 1; // not half of a surrogate pair
      line.more += text.length - room;
      text = text.slice(0, room);
    }
    line.text += text;
    kept += text.length;
  };
  const join = (stream, text, offset) => {
    if (open[stream] && open[stream].at < dropped) { // its start is no longer kept: nor is its rest
      open[stream] = null;
      midLine[stream] = true;
    }
    if (midLine[stream]) { // leave out the partial line, up to its "\n" (maybe frames later)
      const end = text.indexOf('\n');
      const redraw = text.lastIndexOf('\r'); // or take a live bar from its last redraw on
      if (end < 0 && redraw >= 0) {
        midLine[stream] = false;
        partial[stream] = null;
        text = text.slice(redraw);
      } else if (partial[stream] === null) { // a line whose start is no longer kept
        if (end < 0) return;
        midLine[stream] = false;
        text = text.slice(end + 1);
      } else {
        partial[stream] = lineEnd(partial[stream] + (end < 0 ? text : text.slice(0, end)));
        const rest = end < 0 ? '' : text.slice(end + 1);
        const more = rest !== '' || offset < windowEnd[stream]; // the window holds more
        if (end < 0 && more) return;
        midLine[stream] = false;
        if (!more) { // the window is this one line: its end shows (and grows while open)
          const line = push(stream, partial[stream]);
          line.headless = true;
          open[stream] = end < 0 ? line : null;
        }
        partial[stream] = null;
        if (!more) return;
        text = rest;
      }
    }
    const pieces = text.split('\n');
    const rest = pieces.pop(); // after the last "\n": the start of a line not ended yet
    let line = open[stream];
    if (line && pieces.length) { grow(line, pieces.shift()); line = null; }
    for (const piece of pieces) push(stream, piece);
    if (line) grow(line, rest);
    else if (rest) line = push(stream, rest);
    open[stream] = line;
  };
  return (stream, text, offset) => {
    join(stream, text, offset);
    if (!flushing) { flushing = true; requestAnimationFrame(flush); }
  };
}

/** The last LINE_CHARS characters of `text` (not half of a surrogate pair). */
function lineEnd(text) {
  let from = Math.max(0, text.length - LINE_CHARS);
  const low = text.charCodeAt(from);
  if (from && low >= 0xDC00 && low <= 0xDFFF) from += 1;
  return text.slice(from);
}

export async function taskPage(root, taskId) {
  let task = await api('GET', `/v1/tasks/${taskId}`);
  const seen = [];
  const head = h('div', { class: 'page-head' });
  const info = h('div', { class: 'two-col' });
  const files = h('section', {}, h('h2', {}, 'Artifacts'), h('div'));
  const { counter, list } = logView();
  let skipped = false;
  const drawCount = (total = 0, dropped = 0) => {
    counter.textContent = `${total.toLocaleString()} ${total === 1 ? 'line' : 'lines'}` +
      (dropped ? ` (the first ${dropped.toLocaleString()} are no longer kept here)` : '') +
      (skipped ? ' · earlier output skipped: showing the log\'s last 2 MiB' : '');
  };
  const draw = () => {
    const ended = ENDED.has(task.status);
    head.replaceChildren(
      h('div', {}, h('h1', {}, 'Task ', h('span', { class: 'mono' }, task.taskId)), h('p', { class: 'meta' }, task.name)),
      h('div', { class: 'head-actions' }, h('span', { id: 'task-state' }, badge(task.status)),
        ended ? '' : actionButton('Cancel task', async () => { task = await api('POST', `/v1/tasks/${taskId}/cancel`, {}); draw(); })));
    info.replaceChildren(h('section', {}, h('h2', {}, 'Details'), facts(task)),
      h('section', {}, h('h2', {}, 'State changes'), changes(task, seen)));
  };
  const refresh = async () => {
    const before = task.status;
    task = await api('GET', `/v1/tasks/${taskId}`);
    if (task.status !== before) {
      seen.push([task.status, Date.now()]);
      draw();
      if (ENDED.has(task.status)) files.lastChild.replaceWith(await artifacts(taskId));
    }
  };
  draw();
  root.append(head, info,
    h('section', {}, h('div', { class: 'section-head' }, h('h2', {}, 'Log'), counter), list.el), files);
  files.lastChild.replaceWith(await artifacts(taskId));

  // Live log over SSE; EventSource resumes after a dropped connection with Last-Event-ID.
  // A long log opens on the last FROM_END bytes of each stream; a stream that starts
  // after its beginning may start mid-line, and that first partial line is left out
  // (unless it is all of the stream's last FROM_END bytes: keptLines).
  let from = '';
  const big = (task.stdoutSize || 0) + (task.stderrSize || 0) > 2 * FROM_END;
  const start = { stdout: 0, stderr: 0 };
  const windowEnd = {};
  if (big) {
    start.stdout = Math.max(0, task.stdoutSize - FROM_END);
    start.stderr = Math.max(0, task.stderrSize - FROM_END);
    skipped = start.stdout > 0 || start.stderr > 0;
    from = `&lastEventId=${start.stdout}:${start.stderr}`;
    for (const stream of ['stdout', 'stderr']) if (start[stream] > 0) windowEnd[stream] = task[`${stream}Size`];
  }
  const take = keptLines(list, windowEnd, drawCount);
  const source = new EventSource(withKey(`/v1/tasks/${taskId}/logs?follow=true${from}`));
  source.addEventListener('log', (msg) => {
    const data = JSON.parse(msg.data);
    take(data.stream, String(data.text), Number(data.offset));
  });
  // A server-sent `event: error` (the log cannot be read) has data; a dropped connection
  // has none, and the browser reconnects by itself with Last-Event-ID.
  source.addEventListener('error', (e) => {
    if (!e.data) return;
    source.close();
    let message = e.data;
    try { message = JSON.parse(e.data).message; } catch { /* shown as sent */ }
    counter.after(notice(`The log cannot be read: ${message}`, 'error'));
  });
  source.addEventListener('end', async () => {
    source.close();
    await refresh();
  });
  onLeave(() => source.close());
  drawCount();
  every(1500, () => { if (!ENDED.has(task.status)) refresh().catch(() => {}); });
}

// Runs: the list (newest first, filters, live status) and one run (timeline, events, tool calls).
'use strict';
import {
  VirtualList, actionButton, api, badge, duration, every, h, link, navigate, notice, onLeave,
  pretty, query, readEvents, refreshRows, when,
} from './lib.js';

const CONDITIONS = ['Pending', 'Running', 'Succeeded', 'Failed', 'Error', 'Cancelled'];
const TERMINAL = new Set(['Succeeded', 'Failed', 'Error', 'Cancelled']);
const TAIL = 2000; // events shown when a run page opens (its newest ones)
const KEEP = 20000; // events kept in memory at most; older ones are paged in on demand
const PAGE = 1000;

export function condition(run) {
  const list = run.status.conditions || [];
  return list.length ? list[list.length - 1].condition : 'Pending';
}

function runRow(run) {
  const c = condition(run);
  return h('tr', { 'data-run': run.runId, 'data-key': run.runId },
    h('td', {}, link(`/runs/${run.runId}`, run.runId, { class: 'mono' })),
    h('td', {}, link(`/flows/${run.spec.flowId}`, run.spec.flow.name || run.spec.flowId)),
    h('td', {}, String(run.spec.flowVersion)),
    h('td', {}, badge(c)),
    h('td', {}, when(run.metadata.timeCreated)),
    h('td', {}, TERMINAL.has(c) ? duration(run.metadata.lastUpdated - run.metadata.timeCreated) : '…'));
}

function select(name, label, options, value, onchange) {
  return h('label', {}, label + ' ',
    h('select', { name, onchange },
      options.map(([v, text]) => h('option', { value: v, selected: v === value }, text))));
}

export async function runsPage(root) {
  const params = new URLSearchParams(location.search);
  const flowId = params.get('flowId') || '';
  const cond = params.get('condition') || '';
  const token = params.get('pageToken') || '';
  const flows = await api('GET', '/v1/flows?pageSize=200');
  const refilter = (e) => {
    const form = e.target.form;
    navigate('/runs' + query({ flowId: form.flowId.value, condition: form.condition.value }), true);
  };
  const filters = h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
    select('flowId', 'Flow', [['', 'All flows'], ...flows.items.map((f) => [f.flowId, f.spec.name + ' · ' + f.flowId])], flowId, refilter),
    select('condition', 'Condition', [['', 'Any'], ...CONDITIONS.map((c) => [c, c])], cond, refilter));
  const body = h('tbody');
  const more = h('p', { class: 'pager' });
  root.append(h('h1', {}, 'Runs'), filters,
    h('div', { class: 'table-wrap' }, h('table', { id: 'runs' },
      h('thead', {}, h('tr', {}, ['Run', 'Flow', 'Version', 'Condition', 'Created', 'Took'].map((x) => h('th', { scope: 'col' }, x)))),
      body)), more);
  const load = async () => {
    const page = await api('GET', '/v1/runs' + query({ flowId, condition: cond, pageToken: token, pageSize: 50 }));
    const rows = page.items.map(runRow);
    refreshRows(body, rows.length ? rows : [h('tr', {}, h('td', { colspan: 6 }, 'No runs match.'))]);
    more.replaceChildren(
      token ? link('/runs' + query({ flowId, condition: cond }), 'Newest') : '',
      page.nextPage ? link('/runs' + query({ flowId, condition: cond, pageToken: page.nextPage }), 'Older runs →') : '');
  };
  await load();
  every(2000, () => load().catch(() => {}));
}

// -- one run -------------------------------------------------------------------------------

function summary(type, data) {
  switch (type) {
    case 'log': return `${data.stepId || ''} ${data.stream === 'stderr' ? '!' : '›'} ${data.line}`;
    case 'step_started': return `${data.stepId} (${data.block}) started`;
    case 'step_completed': return `${data.stepId} completed in ${duration(data.durationMs)}`;
    case 'step_failed': return `${data.stepId} failed: ${data.error || ''}`;
    case 'step_paused': return `${data.stepId} paused (${data.reason || ''})`;
    case 'tool_calls_required': return `${data.stepId} needs ${data.toolCalls.map((c) => c.function.name).join(', ')}`;
    case 'flow_completed': return `run ${data.status}${data.error ? ': ' + data.error : ''}`;
    case 'step_input': case 'step_output': return `${data.stepId} ${type.slice(5)}: ${JSON.stringify(data[type.slice(5)]).slice(0, 200)}`;
    default: return JSON.stringify(data).slice(0, 200);
  }
}

function toEvent(id, type, raw) {
  let data;
  try { data = JSON.parse(raw); } catch { data = { raw }; }
  return { id: Number(id), type, data, text: summary(type, data) };
}

function timeline(trace) {
  const steps = trace.steps || [];
  if (!steps.length) return notice('No step has started yet.');
  const t0 = Math.min(...steps.map((s) => s.startedAt || Infinity));
  const t1 = Math.max(...steps.map((s) => s.endedAt || Date.now()));
  const span = Math.max(1, t1 - t0);
  return h('ol', { class: 'timeline' }, steps.map((s) => {
    const left = ((s.startedAt || t0) - t0) / span * 100;
    const width = Math.max(0.5, ((s.endedAt || Date.now()) - (s.startedAt || t0)) / span * 100);
    const usage = s.usage ? `${s.usage.totalTokens ?? ''} tokens` : '';
    const details = [];
    if (s.input !== null && s.input !== undefined) details.push(h('h4', {}, 'Input'), h('pre', {}, pretty(s.input)));
    if (s.output !== null && s.output !== undefined) details.push(h('h4', {}, 'Output'), h('pre', {}, pretty(s.output)));
    if (s.error) details.push(h('h4', {}, 'Error'), h('pre', { class: 'error' }, s.error));
    return h('li', { class: 'step', 'data-step': s.stepId },
      h('div', { class: 'step-head' },
        h('span', { class: 'step-name' }, s.stepId), h('span', { class: 'muted' }, s.block), badge(s.status),
        h('span', { class: 'step-dur' }, duration(s.durationMs)), h('span', { class: 'muted' }, usage)),
      h('div', { class: 'bar-track', 'aria-hidden': 'true' },
        h('div', { class: 'bar bar-' + String(s.status).toLowerCase(), style: { marginLeft: `${left}%`, width: `${Math.min(width, 100 - left)}%` } })),
      details.length ? h('details', {}, h('summary', {}, 'Input and output'), details) : '');
  }));
}

function usageText(usage) {
  if (!usage) return 'none recorded';
  return `${usage.promptTokens ?? 0} prompt + ${usage.completionTokens ?? 0} completion = ${usage.totalTokens ?? 0} tokens`;
}

function toolForm(runId, call, done) {
  const area = h('textarea', { name: 'result', rows: 4, spellcheck: false, 'aria-label': `Result of ${call.function.name} as JSON`, placeholder: '{"answer": 42}' });
  const isError = h('input', { type: 'checkbox', name: 'isError' });
  const problem = h('p', { class: 'field-error', role: 'alert' });
  const send = h('button', { type: 'submit' }, 'Send result');
  const form = h('form', {
    class: 'tool-call', 'data-call': call.id,
    onsubmit: async (e) => {
      e.preventDefault();
      let output;
      try {
        output = JSON.parse(area.value);
      } catch (err) {
        area.setAttribute('aria-invalid', 'true');
        problem.textContent = `Not valid JSON: ${err.message}`;
        area.focus();
        return;
      }
      area.removeAttribute('aria-invalid');
      problem.textContent = '';
      send.disabled = true;
      try {
        await api('POST', `/v1/runs/${runId}/tool-results`, { toolResults: [{ toolCallId: call.id, output, isError: isError.checked }] });
        done(form);
      } catch (err) {
        problem.textContent = err.message;
        send.disabled = false;
      }
    },
  },
  h('h3', {}, h('code', {}, call.function.name)),
  h('p', { class: 'muted' }, 'Arguments'),
  h('pre', {}, (() => { try { return pretty(JSON.parse(call.function.arguments)); } catch { return call.function.arguments; } })()),
  h('label', {}, 'Result (JSON)', area),
  h('label', { class: 'check' }, isError, ' Report as a tool error'),
  problem, send);
  return form;
}

export async function runPage(root, runId) {
  let run = await api('GET', `/v1/runs/${runId}`);
  const { lastEventId } = await api('GET', `/console/api/runs/${runId}/last-event`);
  const head = h('div', { class: 'page-head' });
  const tools = h('section', { class: 'tools', 'aria-live': 'polite' });
  const steps = h('section', {}, h('h2', {}, 'Steps'), h('div', { class: 'timeline-box' }, notice('Loading…')));
  const tokens = h('p', { class: 'usage' });
  const counter = h('span', { class: 'muted', 'aria-live': 'off' });
  const detail = h('pre', { class: 'event-detail', 'aria-live': 'polite' }, 'Select an event (click, or arrow keys in the list) to see all of it.');
  const list = new VirtualList({
    label: 'Run events',
    render: (row, e) => {
      row.textContent = '';
      row.append(h('span', { class: 'ev-id' }, e.id), h('span', { class: 'ev-type ev-' + e.type }, e.type), h('span', { class: 'ev-text' }, e.text));
    },
    onPick: (e) => { detail.textContent = `#${e.id} ${e.type}\n` + pretty(e.data); },
  });
  let events = [];
  let latest = lastEventId;
  let historyMode = false;
  const earlier = h('button', { type: 'button', onclick: () => loadEarlier() }, `Load ${PAGE} earlier`);
  const jump = h('button', { type: 'button', hidden: true, onclick: () => jumpToLatest() }, 'Jump to latest');
  const answered = new Set();

  let shown = null;
  const drawHead = () => {
    const c = condition(run);
    if (c === shown) return;
    shown = c;
    head.replaceChildren(
      h('div', {}, h('h1', {}, 'Run ', h('span', { class: 'mono' }, run.runId)),
        h('p', { class: 'meta' }, 'Flow ', link(`/flows/${run.spec.flowId}`, run.spec.flow.name || run.spec.flowId),
          ` · version ${run.spec.flowVersion} · created ${when(run.metadata.timeCreated)}`)),
      h('div', { class: 'head-actions' }, h('span', { id: 'run-condition' }, badge(c)),
        TERMINAL.has(c) ? '' : actionButton('Cancel run', async () => { run = await api('POST', `/v1/runs/${runId}/cancel`); drawHead(); tools.replaceChildren(); })));
  };
  const drawCount = () => {
    const first = events.length ? events[0].id : 0;
    const last = events.length ? events[events.length - 1].id : 0;
    counter.textContent = events.length ? `events ${first.toLocaleString()}–${last.toLocaleString()} of ${latest.toLocaleString()}` : 'no events yet';
    earlier.hidden = first <= 1;
    jump.hidden = !historyMode;
  };
  let traceTimer = null;
  const refreshTrace = () => {
    if (traceTimer) return;
    traceTimer = setTimeout(async () => {
      traceTimer = null;
      try {
        const trace = await api('GET', `/v1/runs/${runId}/trace`);
        steps.lastChild.replaceChildren(timeline(trace));
        tokens.textContent = `Token usage: ${usageText(trace.usage)} · ran ${duration(trace.durationMs)}`;
      } catch (err) { console.error(err); }
    }, 150);
  };
  const showCalls = (e) => {
    tools.replaceChildren();
    const calls = e.data.toolCalls.filter((c) => !answered.has(c.id));
    if (!calls.length || TERMINAL.has(condition(run))) return;
    tools.append(h('h2', {}, 'Waiting for tool results'),
      h('p', {}, `Step ${e.data.stepId} is paused until each call below is answered.`),
      ...calls.map((c) => toolForm(runId, c, (form) => { answered.add(c.id); form.replaceWith(notice(`Sent the result of ${c.function.name}.`)); })));
    tools.querySelector('textarea')?.focus();
  };
  const pendingCalls = () => {
    for (let i = events.length - 1; i >= 0; i--) {
      const e = events[i];
      if (e.type === 'tool_calls_required') return e;
      if (e.type === 'step_completed' || e.type === 'step_failed' || e.type === 'flow_completed') return null;
    }
    return null;
  };
  const react = async (e) => {
    if (e.type.startsWith('step_') || e.type === 'flow_completed') refreshTrace();
    if (e.type === 'tool_calls_required') showCalls(e);
    if (e.type === 'step_completed' || e.type === 'step_failed' || e.type === 'flow_completed') tools.replaceChildren();
    if (e.type === 'flow_completed') setTimeout(refreshTrace, 1000); // the last step's end lands after
    if (e.type === 'flow_completed' || e.type === 'run_started') {
      run = await api('GET', `/v1/runs/${runId}`);
      drawHead();
    }
  };

  // Live: events arrive in batches and are drawn once per frame.
  let queue = [];
  let flushing = false;
  const flush = () => {
    flushing = false;
    const batch = queue;
    queue = [];
    latest = Math.max(latest, batch[batch.length - 1].id);
    if (!historyMode) {
      events = events.concat(batch);
      if (events.length > KEEP) events = events.slice(events.length - KEEP);
      list.setItems(events);
    }
    drawCount();
    for (const e of batch) if (e.type !== 'log') react(e);
  };
  let source = null;
  const connect = (after) => {
    if (source) source.close();
    source = new EventSource(`/v1/runs/${runId}/events?after=${after}`);
    const take = (msg) => {
      queue.push(toEvent(msg.lastEventId, msg.type, msg.data));
      if (msg.type === 'flow_completed') { source.close(); }
      if (!flushing) { flushing = true; requestAnimationFrame(flush); }
    };
    for (const type of ['run_started', 'step_started', 'step_input', 'step_output', 'step_completed', 'step_failed', 'step_paused', 'tool_calls_required', 'flow_completed', 'log', 'message']) {
      source.addEventListener(type, take);
    }
    // The browser reconnects by itself, with Last-Event-ID; stop only when nothing is left.
    source.onerror = () => {
      const have = events.length ? events[events.length - 1].id : 0;
      if (TERMINAL.has(condition(run)) && have >= lastEventId && !historyMode) source.close();
    };
  };
  onLeave(() => { if (source) source.close(); clearTimeout(traceTimer); });

  const loadEarlier = async () => {
    const first = events.length ? events[0].id : latest + 1;
    const from = Math.max(0, first - 1 - PAGE);
    const older = [];
    await readEvents(`/v1/runs/${runId}/events?after=${from}`, (msg) => {
      const id = Number(msg.id);
      if (id >= first) return true;
      older.push(toEvent(id, msg.type, msg.data));
      return false;
    });
    events = older.concat(events);
    if (events.length > KEEP) { events = events.slice(0, KEEP); historyMode = true; }
    list.follow = false;
    list.setItems(events);
    list.selected += older.length;
    list.el.scrollTop += older.length * list.rowHeight;
    drawCount();
  };
  const jumpToLatest = () => {
    historyMode = false;
    events = [];
    list.follow = true;
    list.setItems(events);
    connect(Math.max(0, latest - TAIL));
  };

  drawHead();
  root.append(head, tools, steps, tokens,
    h('section', {}, h('div', { class: 'section-head' }, h('h2', {}, 'Events'), counter, earlier, jump), list.el, detail));
  drawCount();
  refreshTrace();
  connect(Math.max(0, lastEventId - TAIL));
  // A paused run's pending calls are in its newest events; show their forms when they arrive.
  const firstPaint = setInterval(() => {
    if (!events.length && lastEventId) return;
    clearInterval(firstPaint);
    const pending = pendingCalls();
    if (pending && condition(run) === 'Running') showCalls(pending);
  }, 50);
  onLeave(() => clearInterval(firstPaint));
  every(3000, async () => {
    if (TERMINAL.has(condition(run))) return;
    run = await api('GET', `/v1/runs/${runId}`);
    drawHead();
  });
}


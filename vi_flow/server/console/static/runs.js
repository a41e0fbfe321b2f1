// Runs: the list (newest first, filters, live status) and one run (timeline, events, tool calls).
'use strict';
import {
  PageLeft, actionButton, api, badge, drawPager, duration, every, h, hasNonFinite, link, navigate, notice,
  onLeave, parseJSON, pretty, query, refreshRows, when,
} from './lib.js';
import { RunEvents } from './events.js';

const CONDITIONS = ['Pending', 'Running', 'Succeeded', 'Failed', 'Error', 'Cancelled'];
const TERMINAL = new Set(['Succeeded', 'Failed', 'Error', 'Cancelled']);

export function condition(run) {
  const list = run.status.conditions || [];
  return list.length ? list[list.length - 1].condition : 'Pending';
}

function runRow(run) {
  const c = condition(run);
  return h('tr', { 'data-run': run.runId, 'data-key': run.runId },
    h('td', {}, link(`/runs/${run.runId}`, run.runId, { class: 'mono' })),
    h('td', {}, link(`/flows/${run.spec.flowId}`, run.spec.flow.name || run.spec.flowId, { class: 'clip', title: run.spec.flow.name })),
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

/** The Flow filter's choices: the flows (as many as one page holds), and always the one applied. */
async function flowChoices(flowId) {
  const flows = await api('GET', '/v1/flows?pageSize=1000');
  const choices = flows.items.map((f) => [f.flowId, f.spec.name + ' · ' + f.flowId]);
  if (flowId && !choices.some(([id]) => id === flowId)) choices.unshift([flowId, await flowLabel(flowId)]);
  return [['', 'All flows'], ...choices];
}

// A filter by a flow beyond that page, or one that does not exist (for this organization),
// still shows: a select without its value would show "All flows" over a filtered table.
async function flowLabel(flowId) {
  try {
    const flow = await api('GET', `/v1/flows/${encodeURIComponent(flowId)}`);
    return flow.spec.name + ' · ' + flowId;
  } catch {
    return 'unknown flow · ' + flowId;
  }
}

export async function runsPage(root) {
  const params = new URLSearchParams(location.search);
  const flowId = params.get('flowId') || '';
  const cond = params.get('condition') || '';
  const token = params.get('pageToken') || '';
  const flows = await flowChoices(flowId);
  const refilter = (e) => {
    const form = e.target.form;
    navigate('/runs' + query({ flowId: form.flowId.value, condition: form.condition.value }), true);
  };
  const filters = h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
    select('flowId', 'Flow', flows, flowId, refilter),
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
    drawPager(more, { path: '/runs', params: { flowId, condition: cond }, token, nextPage: page.nextPage, older: 'Older runs →' });
  };
  await load();
  every(2000, () => load().catch(() => {}));
}

// -- one run -------------------------------------------------------------------------------

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
        output = parseJSON(area.value);
        if (hasNonFinite(output)) throw new Error('a number too large for JSON (such as 1e400)');
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
  h('pre', {}, (() => { try { return pretty(parseJSON(call.function.arguments)); } catch { return call.function.arguments; } })()),
  h('label', {}, 'Result (JSON)', area),
  h('label', { class: 'check' }, isError, ' Report as a tool error'),
  problem, send);
  return form;
}

/** The run's head: id, flow, condition and Cancel; redrawn only when the condition changes. */
function runHead(onCancel) {
  const el = h('div', { class: 'page-head' });
  let shown = null;
  const draw = (run) => {
    const c = condition(run);
    if (c === shown) return;
    shown = c;
    el.replaceChildren(
      h('div', {}, h('h1', {}, 'Run ', h('span', { class: 'mono' }, run.runId)),
        h('p', { class: 'meta' }, 'Flow ', link(`/flows/${run.spec.flowId}`, run.spec.flow.name || run.spec.flowId),
          ` · version ${run.spec.flowVersion} · created ${when(run.metadata.timeCreated)}`)),
      h('div', { class: 'head-actions' }, h('span', { id: 'run-condition' }, badge(c)),
        TERMINAL.has(c) ? '' : actionButton('Cancel run', onCancel)));
  };
  return { el, draw };
}

/** Steps and token usage from the run's trace, fetched at most once per 150 ms. */
function runTrace(runId) {
  const steps = h('section', {}, h('h2', {}, 'Steps'), h('div', { class: 'timeline-box' }, notice('Loading…')));
  const tokens = h('p', { class: 'usage' });
  let timer = null;
  const refresh = () => {
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      try {
        const trace = await api('GET', `/v1/runs/${runId}/trace`);
        steps.lastChild.replaceChildren(timeline(trace));
        tokens.textContent = `Token usage: ${usageText(trace.usage)} · ran ${duration(trace.durationMs)}`;
      } catch (err) { if (!(err instanceof PageLeft)) console.error(err); }
    }, 150);
  };
  onLeave(() => clearTimeout(timer));
  return { els: [steps, tokens], refresh };
}

/** The forms of the calls a paused run waits for; each call is answered on its own. */
function toolCalls(runId, answeredBefore) {
  const el = h('section', { class: 'tools', 'aria-live': 'polite' });
  const marker = h('span', { class: 'badge badge-paused', id: 'run-paused' }, 'waiting for tool results');
  const answered = new Set(answeredBefore); // by this page, or before it was opened
  const clear = () => { el.replaceChildren(); marker.remove(); };
  const show = (e) => {
    clear();
    const calls = e.data.toolCalls.filter((c) => !answered.has(c.id));
    if (!calls.length) return;
    document.getElementById('run-condition')?.after(marker);
    el.append(h('h2', {}, 'Waiting for tool results'),
      h('p', {}, `Step ${e.data.stepId} is paused until each call below is answered.`),
      ...calls.map((c) => toolForm(runId, c, (form) => { answered.add(c.id); form.replaceWith(notice(`Sent the result of ${c.function.name}.`)); })));
    el.querySelector('textarea')?.focus();
  };
  return { el, show, clear };
}

const STEP_END = new Set(['step_completed', 'step_failed', 'flow_completed']);

/** The newest tool_calls_required that no later step end answered, or null. */
function pendingCalls(events) {
  for (let i = events.length - 1; i >= 0; i--) {
    if (events[i].type === 'tool_calls_required') return events[i];
    if (STEP_END.has(events[i].type)) return null;
  }
  return null;
}

export async function runPage(root, runId) {
  let run = await api('GET', `/v1/runs/${runId}`);
  const { lastEventId, answeredCalls } = await api('GET', `/console/api/runs/${runId}/last-event`);
  const reload = async () => { run = await api('GET', `/v1/runs/${runId}`); head.draw(run); };
  const tools = toolCalls(runId, answeredCalls || []);
  const trace = runTrace(runId);
  const head = runHead(async () => { run = await api('POST', `/v1/runs/${runId}/cancel`); head.draw(run); tools.clear(); });
  const onEvent = (e) => {
    if (e.type.startsWith('step_') || e.type === 'flow_completed') trace.refresh();
    if (e.type === 'tool_calls_required' && !TERMINAL.has(condition(run))) tools.show(e);
    if (STEP_END.has(e.type)) tools.clear();
    if (e.type === 'flow_completed') setTimeout(trace.refresh, 1000); // the last step's end lands after
    if (e.type === 'flow_completed' || e.type === 'run_started') reload().catch(() => {});
  };
  const stream = new RunEvents(runId, lastEventId, onEvent, () => TERMINAL.has(condition(run)));
  head.draw(run);
  root.append(head.el, tools.el, ...trace.els, stream.el);
  trace.refresh();
  // A paused run's pending calls are among its newest events: show their forms once loaded.
  stream.whenLoaded(() => {
    const pending = pendingCalls(stream.events);
    if (pending && condition(run) === 'Running') tools.show(pending);
  });
  every(3000, () => { if (!TERMINAL.has(condition(run))) reload().catch(() => {}); });
}

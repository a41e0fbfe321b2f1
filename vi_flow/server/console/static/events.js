// A run's events on its page: the newest ones live over SSE, older ones paged in, few rows drawn.
'use strict';
import {
  VirtualList, asTerminalShows, duration, h, lastDrawn, onLeave, parseJSON, pretty, readEvents, shown, withKey,
} from './lib.js';

const TAIL = 2000; // events shown when a run page opens (its newest ones)
const KEEP = 20000; // events kept in memory at most; older ones are paged in on demand
const PAGE = 1000;
// Of an event's text, what its row shows (the detail shows all of it): a row is one line,
// and a few log lines of megabytes each drawn whole froze the page for seconds (QA AL).
const ROW_CHARS = 2000;
const TYPES = ['run_started', 'step_started', 'step_input', 'step_output', 'step_completed',
  'step_failed', 'step_paused', 'tool_calls_required', 'flow_completed', 'log', 'message'];

function summary(type, data) {
  switch (type) {
    // as the task's own page shows it (QA: colours, "\r" and BEL were drawn raw here)
    case 'log': return `${data.stepId || ''} ${data.stream === 'stderr' ? '!' : '›'} ${asTerminalShows(lastDrawn(String(data.line ?? '')))}`;
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
  try { data = parseJSON(raw); } catch { data = { raw }; }
  let text = summary(type, data);
  if (text.length > ROW_CHARS) {
    // not between the halves of a character past U+FFFF (an emoji): one would show as �
    const cut = /[\uD800-\uDBFF]/.test(text[ROW_CHARS - 1]) ? ROW_CHARS - 1 : ROW_CHARS;
    const rest = [...text.slice(cut)].length; // characters, not UTF-16 units
    text = `${text.slice(0, cut)} … (${rest.toLocaleString()} more characters)`;
  }
  return { id: Number(id), type, data, text };
}

/**
 * The events panel of a run page. It opens on the newest TAIL events and follows the run
 * live (EventSource resumes a dropped connection with Last-Event-ID by itself); "Load
 * earlier" reads older pages; past KEEP events it stops adding live ones until "Jump to
 * latest". Every event but `log` lines is handed to `onEvent` once it is drawn.
 */
export class RunEvents {
  constructor(runId, lastEventId, onEvent, runEnded) {
    this.runId = runId;
    this.lastEventId = lastEventId;
    this.latest = lastEventId;
    this.onEvent = onEvent;
    this.runEnded = runEnded;
    this.events = [];
    this.history = false; // showing older events; live ones are counted, not kept
    this.queue = [];
    this.source = null;
    this.loaded = [];
    this.counter = h('span', { class: 'muted', 'aria-live': 'off' });
    this.earlier = h('button', { type: 'button', onclick: () => this.loadEarlier() }, `Load ${PAGE} earlier`);
    this.jump = h('button', { type: 'button', hidden: true, onclick: () => this.jumpToLatest() }, 'Jump to latest');
    const detail = h('pre', { class: 'event-detail', 'aria-live': 'polite' }, 'Select an event (click, or arrow keys in the list) to see all of it.');
    this.list = new VirtualList({
      label: 'Run events',
      render: (row, e) => {
        row.replaceChildren(h('span', { class: 'ev-id' }, e.id), h('span', { class: 'ev-type ev-' + e.type }, e.type), h('span', { class: 'ev-text' }, e.text));
      },
      onPick: (e) => { detail.textContent = shown(`#${e.id} ${e.type}\n` + pretty(e.data)); },
    });
    this.el = h('section', {}, h('div', { class: 'section-head' }, h('h2', {}, 'Events'), this.counter, this.earlier, this.jump), this.list.el, detail);
    onLeave(() => this.source && this.source.close());
    this.drawCount();
    this.connect(Math.max(0, lastEventId - TAIL));
  }

  /** Call fn once the newest events are in (at once for a run without events). */
  whenLoaded(fn) {
    if (this.events.length || !this.lastEventId) fn();
    else this.loaded.push(fn);
  }

  drawCount() {
    const { events } = this;
    const first = events.length ? events[0].id : 0;
    const last = events.length ? events[events.length - 1].id : 0;
    this.counter.textContent = events.length ? `events ${first.toLocaleString()}–${last.toLocaleString()} of ${this.latest.toLocaleString()}` : 'no events yet';
    this.earlier.hidden = first <= 1;
    this.jump.hidden = !this.history;
  }

  connect(after) {
    if (this.source) this.source.close();
    const source = new EventSource(withKey(`/v1/runs/${this.runId}/events?after=${after}`));
    const take = (msg) => {
      this.queue.push(toEvent(msg.lastEventId, msg.type, msg.data));
      if (msg.type === 'flow_completed') source.close();
      if (this.queue.length === 1) requestAnimationFrame(() => this.flush());
    };
    for (const type of TYPES) source.addEventListener(type, take);
    // The browser reconnects by itself, with Last-Event-ID; stop only when nothing is left.
    source.onerror = () => {
      const have = this.events.length ? this.events[this.events.length - 1].id : 0;
      if (this.runEnded() && have >= this.lastEventId && !this.history) source.close();
    };
    this.source = source;
  }

  /** Draw what arrived since the last frame, in one go. */
  flush() {
    const batch = this.queue;
    this.queue = [];
    this.latest = Math.max(this.latest, batch[batch.length - 1].id);
    if (!this.history) {
      this.events = this.events.concat(batch);
      if (this.events.length > KEEP) this.events = this.events.slice(this.events.length - KEEP);
      this.list.setItems(this.events);
    }
    this.drawCount();
    for (const fn of this.loaded.splice(0)) fn();
    for (const e of batch) if (e.type !== 'log') this.onEvent(e);
  }

  async loadEarlier() {
    const first = this.events.length ? this.events[0].id : this.latest + 1;
    const older = [];
    await readEvents(`/v1/runs/${this.runId}/events?after=${Math.max(0, first - 1 - PAGE)}`, (msg) => {
      const id = Number(msg.id);
      if (id >= first) return true;
      older.push(toEvent(id, msg.type, msg.data));
      return false;
    });
    this.events = older.concat(this.events);
    if (this.events.length > KEEP) { this.events = this.events.slice(0, KEEP); this.history = true; }
    this.list.follow = false;
    this.list.setItems(this.events);
    this.list.selected += older.length;
    this.list.el.scrollTop += older.length * this.list.rowHeight;
    this.drawCount();
  }

  jumpToLatest() {
    this.history = false;
    this.events = [];
    this.list.follow = true;
    this.list.setItems(this.events);
    this.connect(Math.max(0, this.latest - TAIL));
  }
}

// Shared pieces of the console: elements, the API call, formatting, a windowed list.
'use strict';

export const state = { session: null, leaving: [], reachable: true, stale: false, page: 0 };

/** Thrown into a page that was left while it waited for the API: the answer is not
 * drawn (it would land in the page the user went to, its buttons acting on the old
 * object) and nothing more of that page runs. */
export class PageLeft extends Error {}

// The session's key: the sign-in answer hands it to the page (in a meta element), and
// every request sends it. It lives in this origin's storage, which no other port of the
// host can read or write, while the session cookie goes to (and may be set by) every
// port: the cookie alone is not enough. No address is ever read for a key: another page
// could send the browser to one carrying its own.
const KEY_STORE = 'vi-flow-console-key';
const KEY_META = 'meta[name="vi-flow-console-key"]';
const KEY_HEADER = 'X-CSRF-Token';
const KEY_PARAM = 'consoleKey';

// Where the console lives: this file is <root>console/static/lib.js, and <root> is "/"
// unless a reverse proxy serves the server under a path prefix ("/vf/") that it strips,
// so the server never sees it. Every address the console makes goes through `at`, and
// the page's own address is read through `consolePath`.
const ROOT = new URL('../../', import.meta.url).pathname;

/** The address of the console's path `path` ('/runs', '/v1/tasks'): under its root. */
export function at(path) {
  return ROOT + path.replace(/^\//, '');
}

/** The console's path of an address's `pathname` ('/vf/runs' → '/runs'); null outside its root. */
export function consolePath(pathname) {
  return pathname.startsWith(ROOT) ? '/' + pathname.slice(ROOT.length) : null;
}

/** The session's key (empty when this browser has none). */
function currentKey() {
  try { return localStorage.getItem(KEY_STORE) || state.key || ''; } catch { return state.key || ''; }
}

/** Keep the key the sign-in answer carries, and show "/" instead of the sign-in link. */
export function adoptKey() {
  const meta = document.querySelector(KEY_META);
  if (!meta) return;
  const given = meta.getAttribute('content') || '';
  meta.remove();
  try { localStorage.setItem(KEY_STORE, given); } catch { /* private mode: this page only */ }
  state.key = given;
  history.replaceState(null, '', at('/'));
}

/** Forget the key (signed out). */
export function dropKey() {
  state.key = '';
  try { localStorage.removeItem(KEY_STORE); } catch { /* nothing kept */ }
}

/** The address of the console's path ``url`` with the key as a query parameter: for an
 * EventSource or a download link, which cannot send headers. */
export function withKey(url) {
  return at(url) + (url.includes('?') ? '&' : '?') + `${KEY_PARAM}=${encodeURIComponent(currentKey())}`;
}

// The direction controls (embeddings, overrides, isolates, and the marks LRM, RLM and
// ALM: the set the server refuses in names, models/limits.py): shown as they are,
// "\u202e; fr- mr #" read as "# rm -rf ;" in a task's command or a tool call's
// arguments. They are shown as visible marks instead, in every text the console draws.
const BIDI = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;

/** ``text`` with each direction control shown as ⟨U+202E⟩. */
export function shown(text) {
  return String(text).replace(BIDI, (c) => `⟨U+${c.charCodeAt(0).toString(16).toUpperCase()}⟩`);
}

const SGR = /\x1b\[[0-9;:]*m/g; // a colour or style
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g; // tab stays a tab; C1 too (U+009B is CSI)

/**
 * A log line as a terminal leaves it: its colour codes left out, and of a line a progress
 * bar redrew with "\r" its last state; any other control character shown by its code.
 */
export function asTerminalShows(text) {
  const parts = text.replace(SGR, '').split('\r');
  let last = parts.pop();
  while (!last && parts.length) last = parts.pop();
  return last.replace(CONTROL, (c) => `⟨U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}⟩`);
}

/**
 * What a line redrawn with "\r" shows on a terminal, kept short: from the "\r" before its
 * last state on (a bar redrawn for an hour would otherwise be drawn whole, and freeze the page).
 */
export function lastDrawn(text) {
  let end = text.length;
  while (end && text[end - 1] === '\r') end -= 1;
  const at = text.lastIndexOf('\r', end - 1);
  return at > 0 ? text.slice(at) : text;
}

/** Create an element: h('a', {href: '/x', class: 'y'}, 'text', child...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = shown(value);
    else if (key === 'title') el.setAttribute(key, shown(value));
    else if (key === 'style') Object.assign(el.style, value); // CSSOM: allowed by the CSP
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : shown(child));
  }
  return el;
}

/** A link to the console's path `href`, handled by the console's router (no page reload). */
export function link(href, text, attrs = {}) {
  return h('a', { href: at(href), 'data-link': true, ...attrs }, text);
}

/** Go to the console's path `url` without reloading (the router listens to popstate). */
export function navigate(url, replace = false) {
  if (replace) history.replaceState(null, '', at(url));
  else history.pushState(null, '', at(url));
  window.dispatchEvent(new PopStateEvent('popstate'));
}

/** Run fn when the user leaves the current page (close streams, stop timers). */
export function onLeave(fn) { state.leaving.push(fn); }

export function leavePage() {
  state.page += 1;
  for (const fn of state.leaving.splice(0)) {
    try { fn(); } catch (err) { console.error(err); }
  }
}

/** Repeat fn every ms milliseconds until the page is left. */
export function every(ms, fn) {
  const timer = setInterval(fn, ms);
  onLeave(() => clearInterval(timer));
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// JSON.rawJSON and the reviver's source text (Chromium 114, Firefox 135, Safari 18.4):
// where the browser has them, an integer past 2^53 keeps its digits, shown or sent.
const EXACT = typeof JSON.rawJSON === 'function';

/**
 * `JSON.parse`, but an integer a double cannot hold (9007199254740993) stays the
 * integer it spells where the browser can keep it: shown and sent again as its digits,
 * as `vi-flow ... --json` shows it. Elsewhere it is the nearest double, as before.
 */
export function parseJSON(text) {
  if (!EXACT) return JSON.parse(text);
  return JSON.parse(text, (key, value, context) =>
    (typeof value === 'number' && !Number.isSafeInteger(value) && context &&
      /^-?\d+$/.test(context.source)) ? JSON.rawJSON(context.source) : value);
}

/** Whether a parsed value holds a number JSON cannot carry (1e400 parses as Infinity). */
export function hasNonFinite(value) {
  if (typeof value === 'number') return !Number.isFinite(value);
  if (value === null || typeof value !== 'object' || (EXACT && JSON.isRawJSON(value))) return false;
  return Object.values(value).some(hasNonFinite);
}

const GATEWAY = [502, 503, 504];

/** Note whether the server answered; a change is told as a 'server-reachable' event. */
function reached(ok) {
  if (state.reachable === ok) return;
  state.reachable = ok;
  document.dispatchEvent(new CustomEvent('server-reachable', { detail: ok }));
}

/** Call the API for the page being shown: a PageLeft once the user left it meanwhile. */
export async function api(method, path, body) {
  const page = state.page;
  let answer, failure = null;
  try { answer = await apiAnyPage(method, path, body); } catch (err) { failure = err; }
  if (state.page !== page) throw new PageLeft(`the page was left while ${method} ${path} was answered`);
  if (failure) throw failure;
  return answer;
}

/** Call the server's API with the session cookie and key, for the console itself (its
 * session, the server's health) whatever page is shown; an ApiError when it answers an
 * error, or with code UNREACHABLE when it cannot be reached. */
export async function apiAnyPage(method, path, body) {
  const headers = { Accept: 'application/json', [KEY_HEADER]: currentKey() };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp, text;
  try {
    resp = await fetch(at(path), init);
    text = await resp.text();
  } catch {
    reached(false);
    throw new ApiError(0, 'UNREACHABLE', 'the vi-flow server cannot be reached');
  }
  let data = null;
  try { data = text ? parseJSON(text) : null; } catch { data = null; }
  // A reverse proxy answers 502-504 for a server that is down; the server's own errors
  // carry its JSON.
  reached(resp.ok || !GATEWAY.includes(resp.status) || Boolean(data && data.error));
  if (!resp.ok) {
    const error = (data && data.error) || {};
    if (resp.status === 401) document.dispatchEvent(new CustomEvent('signed-out'));
    throw new ApiError(resp.status, error.code || 'HTTP_' + resp.status, error.message || resp.statusText);
  }
  return data;
}

/** Build a query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? '?' + s : '';
}

/** The page of a list this URL asks for ('' for the first, newest one). */
export function pageToken() {
  return new URLSearchParams(location.search).get('pageToken') || '';
}

/**
 * Draw the pager under a list read page by page into `el`: "Newest" while on a later page
 * (`token`), and `older` to the next page when there is one; `params` are the list's
 * filters, kept. Redrawn only when a link changes, so a live list's refresh leaves the
 * keyboard focus where it was.
 */
export function drawPager(el, { path, params = {}, token, nextPage, older }) {
  const links = [
    token ? link(path + query(params), 'Newest') : '',
    nextPage ? link(path + query({ ...params, pageToken: nextPage }), older) : '',
  ];
  const signature = links.map((a) => a && a.getAttribute('href')).join(' ');
  if (el.dataset.signature === signature) return el;
  el.dataset.signature = signature;
  el.replaceChildren(...links);
  return el;
}

export function when(ms) {
  if (!ms) return '–';
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60000);
  return m < 60 ? `${m} min ${Math.round((ms % 60000) / 1000)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function pretty(value) {
  return typeof value === 'string' ? value : JSON.stringify(value, null, 2);
}

/** A coloured state label (Succeeded, running, Failed...). */
export function badge(text) {
  const t = String(text || 'unknown');
  return h('span', { class: 'badge badge-' + t.toLowerCase(), 'data-state': t }, t);
}

/**
 * Replace a live table's rows, but only when they changed, and keep the keyboard focus on
 * the same row (rows carry data-key), so a refresh never throws a keyboard user out.
 */
export function refreshRows(body, rows) {
  const signature = rows.map((r) => r.textContent + '|' + (r.dataset.key || '')).join('\n');
  if (body.dataset.signature === signature) return;
  body.dataset.signature = signature;
  const active = document.activeElement;
  const key = active && body.contains(active) ? active.closest('tr')?.dataset.key : null;
  body.replaceChildren(...rows);
  if (key) body.querySelector(`tr[data-key="${CSS.escape(key)}"] a`)?.focus();
}

export function table(headers, rows, attrs = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', attrs,
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows)));
}

export function notice(text, kind = 'info') {
  return h('p', { class: 'notice notice-' + kind, role: kind === 'error' ? 'alert' : 'status' }, text);
}

export function errorText(err) {
  return err instanceof ApiError ? `${err.message} (${err.code})` : String(err && err.message || err);
}

/** A button that disables itself while its action runs and shows a failure next to it. */
export function actionButton(label, action, attrs = {}) {
  const out = h('span', { class: 'action-error', role: 'alert' });
  const button = h('button', {
    type: 'button', ...attrs,
    onclick: async () => {
      button.disabled = true;
      out.textContent = '';
      try { await action(); } catch (err) { out.textContent = errorText(err); } finally { button.disabled = false; }
    },
  }, label);
  return h('span', { class: 'action' }, button, out);
}

/**
 * A list that renders only the rows in view, so 100,000 items keep a small DOM.
 * Rows are one line of fixed height; `render(item)` fills a row element.
 */
export class VirtualList {
  constructor({ label, rowHeight = 22, render, onPick }) {
    this.items = [];
    this.rowHeight = rowHeight;
    this.render = render;
    this.onPick = onPick;
    this.selected = -1;
    this.follow = true;
    this.spacer = h('div', { class: 'vl-spacer' });
    this.el = h('div', {
      class: 'vlist', tabindex: '0', role: 'list', 'aria-label': label,
      onscroll: () => { this.follow = this.atBottom(); this.schedule(); },
      onkeydown: (e) => this.key(e),
    }, this.spacer);
    this.pool = [];
    this.pending = false;
    new ResizeObserver(() => this.schedule()).observe(this.el);
  }

  atBottom() {
    return this.el.scrollTop + this.el.clientHeight >= this.el.scrollHeight - this.rowHeight;
  }

  setItems(items) { this.items = items; this.schedule(); }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    const n = this.items.length;
    this.spacer.style.height = `${n * this.rowHeight}px`;
    if (this.follow) this.el.scrollTop = this.el.scrollHeight;
    const first = Math.max(0, Math.floor(this.el.scrollTop / this.rowHeight) - 5);
    const count = Math.min(n - first, Math.ceil(this.el.clientHeight / this.rowHeight) + 10);
    while (this.pool.length < count) {
      const row = h('div', { class: 'vl-row', role: 'listitem' });
      row.addEventListener('click', () => this.pick(Number(row.dataset.index)));
      this.spacer.append(row);
      this.pool.push(row);
    }
    this.pool.forEach((row, i) => {
      if (i >= count) { row.hidden = true; return; }
      const index = first + i;
      row.hidden = false;
      row.dataset.index = index;
      row.style.top = `${index * this.rowHeight}px`;
      row.classList.toggle('selected', index === this.selected);
      this.render(row, this.items[index], index);
    });
  }

  pick(index) {
    if (index < 0 || index >= this.items.length) return;
    this.selected = index;
    this.follow = false;
    const top = index * this.rowHeight;
    if (top < this.el.scrollTop) this.el.scrollTop = top;
    else if (top + this.rowHeight > this.el.scrollTop + this.el.clientHeight) {
      this.el.scrollTop = top + this.rowHeight - this.el.clientHeight;
    }
    this.schedule();
    if (this.onPick) this.onPick(this.items[index]);
  }

  key(e) {
    const page = Math.max(1, Math.floor(this.el.clientHeight / this.rowHeight) - 1);
    const moves = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page };
    if (e.key in moves) this.pick(Math.max(0, Math.min(this.items.length - 1, (this.selected < 0 ? this.items.length : this.selected) + moves[e.key])));
    else if (e.key === 'Home') this.pick(0);
    else if (e.key === 'End') { this.pick(this.items.length - 1); this.follow = true; }
    else return;
    e.preventDefault();
  }
}

/**
 * Read an event stream with fetch until `stop(event)` says so (or it ends), then hang up.
 * Used for pages of history; live streams use EventSource, which resumes by itself.
 */
export async function readEvents(url, stop) {
  const controller = new AbortController();
  const headers = { Accept: 'text/event-stream', [KEY_HEADER]: currentKey() };
  const resp = await fetch(at(url), { credentials: 'same-origin', signal: controller.signal, headers });
  if (!resp.ok) throw new ApiError(resp.status, 'HTTP_' + resp.status, resp.statusText);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = { id: '', type: 'message', data: '' };
        for (const line of block.split('\n')) {
          const colon = line.indexOf(':');
          if (colon <= 0) continue;
          const field = line.slice(0, colon);
          const val = line.slice(colon + 1).replace(/^ /, '');
          if (field === 'id') event.id = val;
          else if (field === 'event') event.type = val;
          else if (field === 'data') event.data += val;
        }
        if (event.data && stop(event)) return;
      }
    }
  } finally {
    controller.abort();
  }
}

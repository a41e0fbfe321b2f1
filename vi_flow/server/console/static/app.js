// The console's entry: session, navigation between pages, and the simple lists.
'use strict';
import {
  PageLeft, adoptKey, api, apiAnyPage, at, badge, consolePath, drawPager, dropKey, errorText, h, leavePage, navigate, notice,
  pageToken, query, state, table, when,
} from './lib.js';
import { runPage, runsPage } from './runs.js';
import { flowPage, flowsPage } from './flows.js';
import { taskPage, tasksPage } from './tasks.js';

const SESSION_CHECK_MS = 3000; // how often a page checks its session is still the same
const PROBE_MS = 2000; // how often a page whose server went away looks for it again

// An id in a page's address is one the server could have made or a user chose
// ('run_', 'flow_', 'task_' and up to 64 letters, digits, '_' and '-'): it is put into
// the API's URLs as it is, so '..%2F' in an address must not lead the page's own
// requests to another endpoint.
const ID = '([a-z]+_[A-Za-z0-9_-]{1,64})';

const ROUTES = [
  [/^\/(runs)?$/, runsPage],
  [new RegExp(`^/runs/${ID}$`), runPage],
  [/^\/flows$/, flowsPage],
  [new RegExp(`^/flows/${ID}$`), flowPage],
  [/^\/tasks$/, tasksPage],
  [new RegExp(`^/tasks/${ID}$`), taskPage],
  [/^\/volumes$/, volumesPage],
  [/^\/reservations$/, reservationsPage],
];

const main = () => document.getElementById('main');

function markNav(path) {
  for (const a of document.querySelectorAll('nav a')) {
    const to = consolePath(a.pathname);
    const here = path === to || path?.startsWith(to + '/') || (path === '/' && to === '/runs');
    if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
}

// The tab's title names the page (its heading): tabs and history entries told apart, and
// a screen reader hears the page change (QA AL: every page was "vi-flow console").
function titled() {
  const heading = main().querySelector('h1')?.textContent?.trim();
  document.title = heading ? `${heading} · vi-flow console` : 'vi-flow console';
}

async function render() {
  await drawPage();
  titled();
}

async function drawPage() {
  leavePage();
  const path = consolePath(location.pathname);
  const root = main();
  root.replaceChildren();
  markNav(path);
  if (!state.session) { signedOut(); return; }
  for (const [pattern, page] of ROUTES) {
    const match = path?.match(pattern);
    if (!match) continue;
    try {
      state.stale = false;
      await page(root, ...match.slice(1).filter((x) => x && x !== 'runs'));
    } catch (err) {
      if (err instanceof PageLeft) return; // the page the user went to draws itself
      state.stale = err.code === 'UNREACHABLE'; // drawn again when the server is back
      const text = err.status === 404 ? 'Not found: nothing here belongs to your organization.' : errorText(err);
      root.replaceChildren(h('h1', {}, err.status === 404 ? 'Not found' : 'Something went wrong'), notice(text, 'error'));
    }
    return;
  }
  root.append(h('h1', {}, 'Not found'), notice(`There is no page at ${location.pathname}.`, 'error'));
}

function signedOut(text) {
  state.session = null;
  leavePage();
  document.getElementById('signout').hidden = true;
  document.getElementById('who').textContent = '';
  main().replaceChildren(h('section', { class: 'signin' },
    h('h1', {}, 'Sign in to the vi-flow console'),
    h('p', {}, text || 'You are not signed in.'),
    h('p', {}, 'In a terminal where vi-flow has your API key, run ', h('code', {}, 'vi-flow console'),
      ' (or ', h('code', {}, 'vi-flow console --print-url'), ' and open the URL it prints). ',
      'Each sign-in link works once, for one minute.')));
  titled();
}

// Signed out only once the server ended the session (or had: 401). A sign-out that did
// not reach it leaves the session alive there, its cookie in the browser and its key in
// other tabs: the page says so and stays signed in, rather than claim what did not happen.
async function signOut() {
  try {
    await apiAnyPage('POST', '/console/api/signout');
  } catch (err) {
    if (err.status !== 401) {
      document.getElementById('signout-failed')?.remove();
      const said = notice(`Not signed out: ${errorText(err)} Your session still holds; ` +
        'sign out again once the server answers.', 'error');
      said.id = 'signout-failed';
      main().prepend(said);
      return;
    }
  }
  dropKey();
  signedOut('You signed out.');
}

async function volumesPage(root) {
  const token = pageToken();
  const page = await api('GET', '/v1/volumes' + query({ pageToken: token, pageSize: 200 }));
  const rows = page.items.map((v) => h('tr', {},
    h('td', {}, h('span', { class: 'clip', title: v.name }, v.name)), h('td', { class: 'mono' }, v.volumeId), h('td', {}, `${v.sizeGb} GB`),
    h('td', {}, v.region), h('td', {}, (v.attachedTo || []).join(', ') || '–'), h('td', {}, when(v.createdAt))));
  root.append(h('h1', {}, 'Volumes'),
    rows.length ? table(['Name', 'ID', 'Size', 'Region', 'Attached to', 'Created'], rows) : notice('No volumes yet.'),
    drawPager(h('p', { class: 'pager' }), { path: '/volumes', token, nextPage: page.nextPage, older: 'Older volumes →' }));
}

async function reservationsPage(root) {
  const page = await api('GET', '/v1/reservations?pageSize=200');
  const rows = page.items.map((r) => h('tr', {},
    h('td', {}, h('span', { class: 'clip', title: r.name }, r.name)), h('td', { class: 'mono' }, r.reservationId), h('td', {}, badge(r.status)),
    h('td', {}, r.instanceType + (r.gpuCount ? ` (${r.gpuCount}× ${r.gpuType || 'GPU'})` : '')),
    h('td', {}, when(r.startTime)), h('td', {}, when(r.endTime))));
  root.append(h('h1', {}, 'Reservations'),
    rows.length ? table(['Name', 'ID', 'State', 'Instance', 'Starts', 'Ends'], rows) : notice('No reservations.'));
}

async function start() {
  // The page's own links name the console's paths: under its root (a proxy's prefix).
  for (const a of document.querySelectorAll('header a[data-link]')) a.setAttribute('href', at(a.getAttribute('href')));
  // The server wrote the icon's address relative to the page's first address, and the
  // browser reads it again against every later one (history.pushState): made absolute.
  document.querySelector('link[rel=icon]')?.setAttribute('href', at('/console/static/favicon.svg'));
  adoptKey();
  document.addEventListener('click', (e) => {
    const a = e.target.closest('a[data-link]');
    if (!a || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(consolePath(a.pathname) + a.search);
  });
  window.addEventListener('popstate', render);
  document.addEventListener('signed-out', () => signedOut('Your session has ended.'));
  document.getElementById('signout').addEventListener('click', signOut);
  const signIn = async () => {
    try {
      state.session = await apiAnyPage('GET', '/console/api/session');
      document.getElementById('who').textContent = state.session.organizationId;
      document.getElementById('signout').hidden = false;
    } catch (err) {
      state.session = null;
      state.stale = err.code === 'UNREACHABLE';
    }
  };
  // While the server cannot be reached a banner says so, and the page looks for it every
  // PROBE_MS (live lists keep polling too); once it answers, the banner goes, and a page
  // that could not be drawn is drawn again.
  let probe = null;
  document.addEventListener('server-reachable', async ({ detail: ok }) => {
    document.getElementById('unreachable').hidden = ok;
    clearInterval(probe);
    probe = ok ? null : setInterval(() => apiAnyPage('GET', '/v1/health').catch(() => {}), PROBE_MS);
    if (ok && state.stale) {
      if (!state.session) await signIn();
      render();
    }
  });
  await signIn();
  render();
  // Another tab may sign this browser in anew (another organization): the page would
  // show one organization's name over another's data. Look again now and then.
  const recheck = async () => {
    if (!state.session) return;
    let now;
    try { now = await apiAnyPage('GET', '/console/api/session'); } catch { return; } // 401: signed out
    if (now.organizationId !== state.session.organizationId || now.csrfToken !== state.session.csrfToken) {
      location.reload();
    }
  };
  setInterval(recheck, SESSION_CHECK_MS);
  window.addEventListener('focus', recheck);
}

start();

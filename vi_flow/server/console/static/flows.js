// Flows: the list, and one flow (its spec, versions, and an Execute form built from its inputs).
'use strict';
import {
  api, drawPager, h, hasNonFinite, link, navigate, notice, pageToken, parseJSON, pretty, query, table, when,
} from './lib.js';

export async function flowsPage(root) {
  const token = pageToken();
  const page = await api('GET', '/v1/flows' + query({ pageToken: token, pageSize: 200 }));
  const rows = page.items.map((f) => h('tr', {},
    h('td', {}, link(`/flows/${f.flowId}`, f.spec.name, { class: 'clip', title: f.spec.name })),
    h('td', { class: 'mono' }, f.flowId),
    h('td', {}, String(f.spec.blocks.length)),
    h('td', {}, f.latestVersion ?? '–'),
    h('td', {}, f.productionVersion ?? '–'),
    h('td', {}, when(f.metadata.lastUpdated))));
  root.append(h('h1', {}, 'Flows'),
    rows.length ? table(['Name', 'ID', 'Blocks', 'Latest version', 'Production', 'Updated'], rows) : notice('No flows yet.'),
    drawPager(h('p', { class: 'pager' }), { path: '/flows', token, nextPage: page.nextPage, older: 'Older flows →' }));
}

function versions(flow) {
  const items = [h('li', {}, 'draft (the spec shown below)')];
  for (let v = flow.latestVersion || 0; v >= 1; v--) {
    items.push(h('li', {}, `version ${v}`, v === flow.productionVersion ? h('span', { class: 'badge badge-succeeded' }, 'production') : ''));
  }
  return h('ul', { class: 'versions' }, items);
}

/**
 * A parameter's text as the JSON value it spells, or as plain text (as the CLI's
 * `-p NAME=VALUE` does): a number JSON cannot carry (1e400) is sent as the text typed.
 */
function parameterValue(text) {
  let value;
  try { value = parseJSON(text); } catch { return text; }
  return hasNonFinite(value) ? text : value;
}

function executeForm(flow) {
  const inputs = flow.spec.inputs || [];
  const problem = h('p', { class: 'field-error', role: 'alert' });
  const choices = [['', flow.productionVersion ? 'production' : 'draft'], ['draft', 'draft']];
  for (let v = flow.latestVersion || 0; v >= 1; v--) choices.push([String(v), `version ${v}`]);
  const fields = inputs.map((input) => h('label', {},
    `${input.name}${input.required ? ' (required)' : ''}`,
    input.description ? h('small', { class: 'muted' }, input.description) : '',
    h('input', {
      name: 'param:' + input.name, required: input.required,
      placeholder: input.default === null || input.default === undefined ? '' : JSON.stringify(input.default),
    })));
  const form = h('form', {
    class: 'execute',
    onsubmit: async (e) => {
      e.preventDefault();
      problem.textContent = '';
      const parameters = Object.create(null); // an input may be named __proto__
      for (const input of inputs) {
        const text = form.elements['param:' + input.name].value;
        if (text !== '') parameters[input.name] = parameterValue(text);
      }
      const body = { parameters, trace: form.elements.trace.checked };
      if (form.elements.message.value) body.message = form.elements.message.value;
      const version = form.elements.version.value;
      if (version) body.version = /^\d+$/.test(version) ? Number(version) : version;
      try {
        const job = await api('POST', `/v1/flows/${flow.flowId}/jobs`, body);
        navigate(`/runs/${job.executionId}`);
      } catch (err) {
        problem.textContent = err.message;
      }
    },
  },
  h('label', {}, 'Message', h('textarea', { name: 'message', rows: 2 })),
  fields,
  h('label', {}, 'Version ', h('select', { name: 'version' }, choices.map(([v, t]) => h('option', { value: v }, t)))),
  h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'trace', checked: true }), ' Record step inputs and outputs (trace)'),
  problem,
  h('button', { type: 'submit' }, 'Execute'));
  return form;
}

export async function flowPage(root, flowId) {
  const flow = await api('GET', `/v1/flows/${flowId}`);
  root.append(
    h('div', { class: 'page-head' }, h('div', {},
      h('h1', {}, flow.spec.name),
      h('p', { class: 'meta' }, h('span', { class: 'mono' }, flow.flowId), ` · updated ${when(flow.metadata.lastUpdated)} · `,
        link(`/runs?flowId=${flow.flowId}`, 'its runs')))),
    h('div', { class: 'two-col' },
      h('section', {}, h('h2', {}, 'Execute'), executeForm(flow)),
      h('section', {}, h('h2', {}, 'Versions'), versions(flow))),
    h('section', {}, h('h2', {}, 'Spec'), h('pre', { class: 'spec' }, pretty(flow.spec))));
}

// The mecha node dashboard: polls mechad's /api/ views and renders them.
// Every value from the daemon is inserted as text (textContent), never as
// markup: tenant names and app ids are chosen by tenants.
'use strict';

const PAGE = 25;
const POLL_MS = 2000;
const SLOW_POLL_MS = 10000;

// A token (remote viewers) comes once in the address fragment, which is
// never sent to a server, and is kept for this tab only.
const token = (() => {
  const given = new URLSearchParams(location.hash.slice(1)).get('token');
  if (given) {
    sessionStorage.setItem('mecha-token', given);
    history.replaceState(null, '', location.pathname);
  }
  return sessionStorage.getItem('mecha-token');
})();

const lists = {
  tenants: { offset: 0, filter: '', total: 0 },
  apps: { offset: 0, filter: '', total: 0 },
};

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ cache: 'no-store', headers: headers() }, options || {}));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || ('HTTP ' + response.status));
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('data-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ''));
  return node;
}

function duration(s) {
  if (s === null || s === undefined) return '–';
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

function num(x, digits) {
  if (x === null || x === undefined) return '–';
  return Number(x).toFixed(digits ?? 0);
}

function replaceRows(table, rows) {
  const body = document.querySelector(table + ' tbody');
  body.replaceChildren(...rows);
}

function notice(text, ok) {
  const n = document.getElementById('notice');
  n.hidden = false;
  n.className = ok ? 'ok' : 'bad';
  n.textContent = text;
}

async function restart(name) {
  if (!confirm(`Restart module ${name}? Requests wait while the new instance takes over.`)) return;
  try {
    const r = await api(`/api/modules/${encodeURIComponent(name)}/restart`, {
      method: 'POST',
      headers: headers({ 'X-Mecha-Dashboard': '1' }),
    });
    notice(`Restarted ${r.module}: pid ${r.pid} now serves.`, true);
  } catch (e) {
    notice(`Restart of ${name} refused: ${e.message}`, false);
  }
  refresh();
}

function renderOverview(o) {
  const fact = (label, value) => el('span', {}, label + ' ', el('b', {}, value));
  document.getElementById('overview').replaceChildren(
    fact('mechad', o.version), fact('pid', o.pid), fact('up', duration(o.uptime_s)),
    fact('modules running', `${o.modules_running}/${o.modules}`),
    fact('connections', o.connections_open), fact('tenants', o.tenants));
}

function renderModules(modules) {
  replaceRows('#modules', modules.map((m) => {
    let state = m.state;
    if (m.next_try_ms !== null && m.next_try_ms !== undefined) state += ` (next try in ${(m.next_try_ms / 1000).toFixed(1)} s)`;
    const button = el('button', { class: 'restart', type: 'button', textContent: 'restart', title: `hot-restart ${m.name} (admins only)` });
    button.addEventListener('click', () => restart(m.name));
    return el('tr', { 'data-module': m.name },
      el('td', { class: 'name' }, m.name),
      el('td', { class: 'state state-' + m.state }, state),
      el('td', { class: 'pid' }, m.pid || '–'),
      el('td', {}, duration(m.uptime_s)),
      el('td', { class: 'restarts' }, m.restarts),
      el('td', { class: 'wrap' }, m.last_exit || ''),
      el('td', { class: 'rate' }, num(m.rate, 1)),
      el('td', {}, num(m.p50_ms, 3)),
      el('td', {}, num(m.p99_ms, 3)),
      el('td', {}, m.in_flight),
      el('td', {}, bytes(m.rss_bytes)),
      el('td', {}, button));
  }));
}

function renderComponents(components) {
  replaceRows('#components', components.map((c) => {
    let backend = '';
    if (c.backend) backend = el('span', { class: c.reachable ? 'up' : 'down' }, `${c.backend} ${c.reachable ? 'reachable' : 'unreachable'}`);
    return el('tr', { 'data-component': c.name },
      el('td', {}, c.name), el('td', {}, c.kind), el('td', {}, c.module),
      el('td', {}, backend), el('td', { class: 'wrap' }, c.tenants));
  }));
}

function quota(used, max) {
  return max === null || max === undefined ? String(used) : `${used}/${max}`;
}

function renderTenants(page) {
  lists.tenants.total = page.total;
  document.getElementById('tenants-total').textContent = `(${page.total})`;
  replaceRows('#tenants', page.items.map((t) => {
    const u = t.usage;
    const refused = Object.entries(t.refused).map(([s, n]) => `${s} ${n}`).join(', ');
    return el('tr', { 'data-tenant': t.name },
      el('td', { class: 'name wrap' }, t.name), el('td', {}, t.kind),
      el('td', {}, u ? quota(u.connections, u.max_connections) : '0'),
      el('td', {}, u ? quota(u.in_flight, u.max_in_flight) : '0'),
      el('td', { class: 'streams' }, t.streams),
      el('td', {}, u ? `${bytes(u.queued_bytes)}/${bytes(u.max_queued_bytes)}` : '–'),
      el('td', {}, num(t.rate, 1)), el('td', {}, t.requests),
      el('td', { class: 'wrap' }, refused));
  }));
  pager('tenants', page);
}

function renderApps(page) {
  lists.apps.total = page.total;
  document.getElementById('apps-total').textContent = `(${page.total})`;
  replaceRows('#apps', page.items.map((a) => el('tr', { 'data-app': a.app_id },
    el('td', { class: 'wrap' }, a.app_id), el('td', {}, a.node),
    el('td', {}, a.local ? 'local' : 'peer'), el('td', {}, a.instances))));
  pager('apps', page);
}

function pager(name, page) {
  const at = document.querySelector(`.pager[data-list="${name}"] .at`);
  const first = page.total ? page.offset + 1 : 0;
  at.textContent = `${first}–${page.offset + page.items.length} of ${page.total}`;
}

function renderEvents(events) {
  document.getElementById('events').replaceChildren(...events.map((e) => el('li', { 'data-kind': e.kind },
    el('time', {}, new Date(e.at_ms).toLocaleTimeString()),
    el('span', { class: 'kind' }, e.kind.replace(/_/g, ' ')),
    el('span', { class: 'subject' }, e.subject + ': '),
    el('span', {}, e.message),
    e.count > 1 ? el('span', { class: 'times' }, ` ×${e.count}`) : '')));
}

function color(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function chart(id, points, series) {
  const canvas = document.getElementById(id);
  const g = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height, pad = 34;
  g.clearRect(0, 0, w, h);
  let max = 0;
  for (const p of points) for (const s of series) max = Math.max(max, p[s.key] || 0);
  max = max > 0 ? max * 1.1 : 1;
  g.fillStyle = color('--muted');
  g.font = '11px system-ui, sans-serif';
  g.fillText(max >= 10 ? max.toFixed(0) : max.toPrecision(2), 2, 12);
  g.fillText('0', 2, h - 4);
  g.strokeStyle = color('--line');
  g.strokeRect(pad, 4, w - pad - 4, h - 12);
  if (points.length < 2) return;
  const t0 = points[0].t_ms, t1 = points[points.length - 1].t_ms;
  const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (w - pad - 6);
  const y = (v) => h - 8 - (v / max) * (h - 16);
  for (const s of series) {
    g.strokeStyle = color(s.color);
    g.lineWidth = 1.5;
    g.beginPath();
    let drawing = false;
    for (const p of points) {
      const v = p[s.key];
      if (v === null || v === undefined) { drawing = false; continue; }
      if (drawing) g.lineTo(x(p.t_ms), y(v)); else g.moveTo(x(p.t_ms), y(v));
      drawing = true;
    }
    g.stroke();
  }
}

function renderHistory(view) {
  chart('rate-chart', view.points, [{ key: 'rate', color: '--accent' }, { key: 'errors', color: '--bad' }]);
  chart('latency-chart', view.points, [{ key: 'p50_ms', color: '--accent' }, { key: 'p99_ms', color: '--bad' }]);
}

function listPath(name) {
  const l = lists[name];
  return `/api/${name}?offset=${l.offset}&limit=${PAGE}&q=${encodeURIComponent(l.filter)}`;
}

// One failing view must not stop the others from updating.
async function load(path, render) {
  try {
    render(await api(path));
  } catch (e) {
    notice(`${path}: ${e.message}`, false);
  }
}

// One refresh at a time; a refresh asked for while one runs (a filter typed,
// a page turned) runs right after it, so it shows what was asked.
let refreshing = null;
let again = false;
function refresh() {
  if (refreshing) {
    again = true;
    return refreshing;
  }
  refreshing = Promise.all([
    load('/api/overview', renderOverview),
    load('/api/modules', renderModules),
    load(listPath('tenants'), renderTenants),
    load(listPath('apps'), renderApps),
    load('/api/events', renderEvents),
    load('/api/history', renderHistory),
  ]).finally(() => {
    refreshing = null;
    if (again) {
      again = false;
      refresh();
    }
  });
  return refreshing;
}

function setUp() {
  for (const name of Object.keys(lists)) {
    const input = document.getElementById(`${name}-filter`);
    input.addEventListener('input', () => { lists[name].filter = input.value; lists[name].offset = 0; refresh(); });
    for (const b of document.querySelectorAll(`.pager[data-list="${name}"] button`)) {
      b.addEventListener('click', () => {
        const l = lists[name];
        const next = l.offset + Number(b.dataset.step) * PAGE;
        if (next >= 0 && next < l.total) { l.offset = next; refresh(); }
      });
    }
  }
  load('/api/viewer', (v) => {
    document.getElementById('viewer').textContent = v.admin ? `you: ${v.detail}` : `you: read-only (${v.detail})`;
  });
  load('/api/components', renderComponents);
  setInterval(() => load('/api/components', renderComponents), SLOW_POLL_MS);
  refresh();
  setInterval(refresh, POLL_MS);
}

setUp();

// The operator console's only script. It reads and changes the queue
// through the JSON API with the session cookie (same-origin, JSON bodies:
// the API's CSRF rules), builds the DOM with textContent only (no HTML from
// data), and polls instead of reloading.
'use strict';

(function () {
  const POLL_MS = 1500;
  // States a run does not leave on its own.
  const FINAL = new Set(['succeeded', 'failed', 'canceled', 'rejected', 'expired', 'replayed']);
  const REPLAYABLE = new Set(['succeeded', 'failed', 'canceled', 'rejected', 'expired']);

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'href' || k === 'type' || k === 'id' || k === 'tabindex') e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const kid of kids) {
      if (kid !== null && kid !== undefined) e.append(kid);
    }
    return e;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Every request: same-origin credentials and a JSON content type, so a
  // session-authenticated change passes the server's CSRF check.
  async function api(method, path, body) {
    const opts = {
      method,
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
    };
    if (body !== undefined) opts.body = JSON.stringify(body);
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      throw new ApiError(0, 'the server did not answer (' + e.message + ')');
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    if (!res.ok || !data || data.ok === false) {
      const msg = (data && data.error) || res.statusText || 'the request failed';
      throw new ApiError(res.status, msg);
    }
    return data;
  }

  function say(kind, text) {
    const r = $('result');
    if (!r) return;
    r.className = 'result ' + kind;
    r.textContent = text;
    r.scrollIntoView({ block: 'nearest' });
  }

  function failure(what, e) {
    const status = e.status ? ' (HTTP ' + e.status + ')' : '';
    let hint = '';
    if (e.status === 401) hint = ' Your session has ended: log in again.';
    say('error', what + ' failed: ' + e.message + status + '.' + hint);
  }

  const yn = (b) => (b === true ? 'yes' : b === false ? 'no' : 'not yet');
  const dash = (v) => (v === null || v === undefined || v === '' ? '-' : String(v));

  function when(ts) {
    if (!ts) return '-';
    const d = new Date(ts);
    if (Number.isNaN(d.getTime())) return String(ts);
    return d.toLocaleString();
  }

  function canaryText(c) {
    if (!c) return '-';
    return c.percent + '% · bucket ' + c.bucket + ' · ' + (c.selected ? 'selected' : 'not selected') +
      ' · ' + c.checks + ' checks · passed: ' + yn(c.passed === undefined ? null : c.passed);
  }

  function rollbackText(r) {
    if (!r) return '-';
    return 'armed: ' + yn(!!r.armed) + ' · ran: ' + yn(!!r.attempted) + ' · ok: ' +
      yn(r.succeeded === undefined ? null : r.succeeded);
  }

  function autoText(it) {
    const tier = it.tier || it.autoTier || 'no tier';
    const risk = it.risk ? ', risk ' + it.risk : '';
    return (it.autoQueued ? 'autonomous' : 'manual') + ' · ' + tier + risk;
  }

  function approvalText(it) {
    const a = it.approval || {};
    let t = it.approvalStatus || '-';
    if (a.decidedBy) t += ' by ' + a.decidedBy;
    if (a.reason) t += ': ' + a.reason;
    return t;
  }

  function errorText(it) {
    const parts = [];
    if (it.error) parts.push(it.error);
    if (it.dlqReason) parts.push('DLQ: ' + it.dlqReason);
    return parts.length ? parts.join(' · ') : '-';
  }

  // The confirmation step: a modal dialog, keyboard-usable (Escape cancels).
  function confirmStep(title, text, withReason) {
    const dlg = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('reason-wrap').hidden = !withReason;
    $('reason').value = '';
    dlg.returnValue = '';
    return new Promise((resolve) => {
      dlg.addEventListener('close', () => {
        resolve(dlg.returnValue === 'ok' ? { reason: $('reason').value.trim() } : null);
      }, { once: true });
      dlg.showModal();
      (withReason ? $('reason') : $('confirm-ok')).focus();
    });
  }

  // Actions shared by the queue and the run page. `done` refreshes the view.
  async function decide(run, mode, done) {
    const verb = mode === 'approve' ? 'Approve' : 'Reject';
    const ok = await confirmStep(verb + ' run', verb + ' run ' + run.runId + ' (' + run.actionKey + ' on ' + run.hostId + ')?', true);
    if (!ok) { say('info', verb + ' canceled: nothing was changed.'); return; }
    try {
      const body = { runId: run.runId, mode };
      if (ok.reason) body.reason = ok.reason;
      const v = await api('POST', '/api/ops/remediate-queue', body);
      say('ok', (mode === 'approve' ? 'Approved' : 'Rejected') + ' run ' + v.result.runId + ': it is now ' +
        v.result.state + ' (approval ' + v.result.approvalStatus + ').');
    } catch (e) {
      failure(verb, e);
    }
    done();
  }

  async function replayOne(run, done, track) {
    const ok = await confirmStep('Replay run', 'Replay run ' + run.runId + ' (' + run.actionKey + ' on ' + run.hostId +
      ') as a new run with a fresh attempt budget?', false);
    if (!ok) { say('info', 'Replay canceled: nothing was changed.'); return; }
    try {
      const v = await api('POST', '/api/ops/remediate-replay', { mode: 'single', runId: run.runId });
      if (track) track(v.replayed);
      say('ok', 'Replayed run ' + run.runId + ' as new run ' + v.replayed.runId + ' (' + v.replayed.state + ').');
    } catch (e) {
      failure('Replay', e);
    }
    done();
  }

  function actionButtons(run, done, track) {
    const box = el('div', { class: 'row-actions' });
    if (run.state === 'approval-pending' && run.approvalStatus === 'pending') {
      box.append(el('button', { type: 'button', 'data-action': 'approve', 'data-key': 'approve:' + run.runId,
        'aria-label': 'Approve run ' + run.runId, text: 'Approve…', onclick: () => decide(run, 'approve', done) }));
      box.append(el('button', { type: 'button', 'data-action': 'reject', 'data-key': 'reject:' + run.runId,
        'aria-label': 'Reject run ' + run.runId, text: 'Reject…', onclick: () => decide(run, 'reject', done) }));
    }
    if (REPLAYABLE.has(run.state)) {
      box.append(el('button', { type: 'button', 'data-action': 'replay', 'data-key': 'replay:' + run.runId,
        'aria-label': 'Replay run ' + run.runId, text: 'Replay…', onclick: () => replayOne(run, done, track) }));
    }
    return box;
  }

  function hostLink(id) {
    return el('a', { href: '/admin/hosts/' + encodeURIComponent(id), text: id });
  }

  function logoutButton() {
    const b = $('logout');
    if (!b) return;
    b.addEventListener('click', async () => {
      try { await api('POST', '/api/auth/logout', {}); } catch (e) { /* the cookie is cleared or already gone */ }
      window.location.assign('/admin/login');
    });
  }

  // ---- login page ----
  function loginPage() {
    const form = $('login-form');
    const out = $('login-result');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const input = $('token');
      const token = input.value.trim();
      if (!token) {
        out.className = 'result error';
        out.textContent = 'Enter an admin token.';
        input.focus();
        return;
      }
      out.className = 'result info';
      out.textContent = 'Checking the token…';
      try {
        await api('POST', '/api/auth/login', { token });
        input.value = '';
        out.className = 'result ok';
        out.textContent = 'Logged in; opening the queue…';
        window.location.assign('/admin');
      } catch (e) {
        input.value = '';
        out.className = 'result error';
        out.textContent = (e.status === 401
          ? 'Login refused: this token is not valid.'
          : e.status === 403
            ? 'Login refused: ' + e.message + '.'
            : 'Login failed: ' + e.message + (e.status ? ' (HTTP ' + e.status + ')' : '') + '.');
        input.focus();
      }
    });
  }

  // ---- queue page ----
  function queuePage() {
    let filter = 'all';
    let timer = null;
    let lastRender = '';
    // Runs seen while the page is open, by id; those that leave the
    // snapshot (it lists active and DLQ runs only) are followed through
    // the run route until they are final, so an approval is seen to end.
    const seen = new Map();

    const track = (item) => { if (item && item.runId) seen.set(item.runId, { item, gone: false }); };

    function renderCounts(c) {
      for (const li of document.querySelectorAll('#counts [data-count]')) {
        const v = c[li.dataset.count];
        li.querySelector('.n').textContent = v === undefined ? '-' : String(v);
      }
    }

    function row(it, finished) {
      const cell = (label, content, cls) => el('td', { 'data-label': label, class: cls || null }, content);
      // Ids are long: the table shows their start; the link names the whole id.
      const short = (id) => el('a', { href: '/admin/runs/' + encodeURIComponent(id), title: id,
        'aria-label': 'Run ' + id, text: id.length > 14 ? id.slice(0, 12) + '…' : id });
      const runLink = short(it.runId);
      const replayOf = it.replayOfRunId ? short(it.replayOfRunId) : '-';
      const st = el('span', { class: 'state state-' + it.state, text: it.state });
      return el('tr', { 'data-run-id': it.runId, 'data-state': it.state },
        cell('State', el('span', {}, st, finished ? el('span', { class: 'muted', text: ' (left the queue)' }) : null), 'state-cell'),
        cell('Attempts', it.attempts + '/' + it.maxAttempts),
        cell('Host / action', el('span', {}, hostLink(it.hostId), ' / ' + it.actionKey)),
        cell('Run', runLink),
        cell('Replay of', replayOf),
        cell('Next attempt', when(it.nextAttemptAt)),
        cell('Error / DLQ reason', errorText(it)),
        cell('Approval', approvalText(it)),
        cell('Autonomous / tier', autoText(it)),
        cell('Canary', canaryText(it.canary)),
        cell('Rollback', rollbackText(it.rollback)),
        cell('Actions', actionButtons(it, refreshSoon, track)));
    }

    function render(items, finished) {
      const rows = [];
      for (const it of items) {
        if (filter === 'approval' && it.state !== 'approval-pending') continue;
        if (filter === 'retry' && it.state !== 'retry-scheduled') continue;
        rows.push([it, false]);
      }
      if (filter === 'all') for (const it of finished) rows.push([it, true]);
      const key = JSON.stringify([filter, rows]);
      if (key === lastRender) return;
      lastRender = key;
      // Keep keyboard focus on the same button across a re-render.
      const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
      const body = $('rows');
      body.replaceChildren(...rows.map(([it, f]) => row(it, f)));
      $('empty').hidden = rows.length > 0;
      if (focused) {
        const again = body.querySelector('[data-key="' + CSS.escape(focused) + '"]');
        if (again) again.focus();
      }
    }

    async function refresh() {
      const path = filter === 'dlq'
        ? '/api/ops/remediate-queue?limit=100&dlq=1'
        : '/api/ops/remediate-queue?limit=100';
      try {
        const v = await api('GET', path);
        const snap = v.snapshot;
        renderCounts(snap.counts);
        const now = new Set();
        for (const it of snap.items) {
          now.add(it.runId);
          seen.set(it.runId, { item: it, gone: false });
        }
        const finished = [];
        if (filter !== 'dlq') {
          for (const [id, s] of seen) {
            if (now.has(id)) continue;
            s.gone = true;
            if (!FINAL.has(s.item.state)) {
              try {
                const r = await api('GET', '/api/ops/runs/' + encodeURIComponent(id));
                delete r.run.history;
                delete r.run.notes;
                s.item = r.run;
              } catch (e) {
                if (e.status === 404) { seen.delete(id); continue; }
              }
            }
            finished.push(s.item);
          }
          // Newest first, and only a few; forget the rest.
          finished.reverse();
          for (const old of finished.splice(25)) seen.delete(old.runId);
        }
        render(snap.items, finished);
        $('updated').textContent = 'Updated ' + new Date().toLocaleTimeString() + ' · refreshes every ' + (POLL_MS / 1000) + ' s';
      } catch (e) {
        $('updated').textContent = e.status === 401
          ? 'Your session has ended: log in again at /admin/login.'
          : 'Could not refresh: ' + e.message + (e.status ? ' (HTTP ' + e.status + ')' : '') + '; retrying.';
      }
    }

    async function loop() {
      timer = null;
      await refresh();
      timer = setTimeout(loop, POLL_MS);
    }

    function refreshSoon() {
      if (timer) clearTimeout(timer);
      loop();
    }

    function limitOf(id) {
      const n = parseInt($(id).value, 10);
      return Number.isFinite(n) ? Math.min(50, Math.max(1, n)) : null;
    }

    for (const r of document.querySelectorAll('input[name="filter"]')) {
      r.addEventListener('change', () => { filter = r.value; lastRender = ''; refreshSoon(); });
    }

    $('replay-batch').addEventListener('click', async () => {
      const limit = limitOf('replay-limit');
      if (limit === null) { say('error', 'Replay DLQ batch: enter a number from 1 to 50.'); return; }
      const ok = await confirmStep('Replay DLQ batch', 'Replay the ' + limit + ' oldest DLQ runs as new runs?', false);
      if (!ok) { say('info', 'Replay of the DLQ batch canceled: nothing was changed.'); return; }
      try {
        const v = await api('POST', '/api/ops/remediate-replay', { mode: 'dlq-batch', limit });
        const s = v.summary;
        for (const x of s.items || []) track(x.run);
        let text = 'Replayed ' + s.replayed + ' of ' + s.considered + ' DLQ runs';
        const pairs = (s.items || []).map((x) => x.sourceRunId + ' as ' + x.run.runId);
        if (pairs.length) text += ': ' + pairs.join(', ');
        if (s.failed) text += '; ' + s.failed + ' could not be replayed (' + (s.errors || []).map((x) => x.sourceRunId + ': ' + x.error).join('; ') + ')';
        say(s.failed ? 'error' : 'ok', text + '.');
      } catch (e) {
        failure('Replay of the DLQ batch', e);
      }
      refreshSoon();
    });

    $('drain').addEventListener('click', async () => {
      const limit = limitOf('drain-limit');
      if (limit === null) { say('error', 'Drain: enter a number from 1 to 50.'); return; }
      const ok = await confirmStep('Drain the queue', 'Ask the executors to run up to ' + limit + ' due runs now?', false);
      if (!ok) { say('info', 'Drain canceled: nothing was changed.'); return; }
      say('info', 'Draining: waiting for the executors…');
      try {
        const v = await api('POST', '/api/ops/remediate-drain', { limit });
        const d = v.drained || [];
        say('ok', d.length
          ? 'Drained ' + d.length + ' run' + (d.length === 1 ? '' : 's') + ': ' + d.map((x) => x.runId + ' is ' + x.state).join(', ') + '.'
          : 'Drain done: no run was due.');
      } catch (e) {
        failure('Drain', e);
      }
      refreshSoon();
    });

    workflowSteps();
    loop();
  }

  // The incident workflow's steps, run one at a time after a confirmation.
  async function workflowSteps() {
    const sel = $('wf-step');
    const steps = new Map();
    try {
      const v = await api('GET', '/api/ops/incident-workflow');
      sel.replaceChildren();
      for (const wf of v.workflows) {
        for (const st of wf.steps) {
          const key = wf.id + '/' + st.id;
          steps.set(key, { wf, st });
          sel.append(el('option', { value: key, text: wf.title + ': ' + st.title }));
        }
      }
    } catch (e) {
      sel.replaceChildren(el('option', { value: '', text: 'Workflows unavailable: ' + e.message }));
    }
    $('wf-run').addEventListener('click', async () => {
      const picked = steps.get(sel.value);
      if (!picked) { say('error', 'Run step: choose a workflow step first.'); return; }
      const { wf, st } = picked;
      const ok = await confirmStep('Run workflow step', 'Run "' + st.title + '" of "' + wf.title + '" now?', false);
      if (!ok) { say('info', 'Workflow step canceled: nothing was changed.'); return; }
      try {
        const v = await api('POST', '/api/ops/incident-workflow', { workflowId: wf.id, stepId: st.id, payload: st.defaultPayload });
        say('ok', 'Step "' + st.title + '" done: ' + stepSummary(v.result) + '.');
      } catch (e) {
        failure('Workflow step "' + st.title + '"', e);
      }
    });
  }

  function stepSummary(r) {
    if (!r || typeof r !== 'object') return String(r);
    if (Array.isArray(r.drained)) return r.drained.length + ' run(s) drained';
    if (r.considered !== undefined && r.replayed !== undefined) return r.replayed + ' of ' + r.considered + ' DLQ runs replayed';
    if (r.counts) return Object.entries(r.counts).filter(([, n]) => n).map(([k, n]) => k + ' ' + n).join(', ') || 'the queue is empty';
    if (r.validatedBy) return 'validated by ' + r.validatedBy;
    const text = JSON.stringify(r);
    return text.length > 300 ? text.slice(0, 300) + '…' : text;
  }

  // ---- host page ----
  function hostPage() {
    const hostId = document.body.dataset.hostId;
    const admin = document.body.dataset.role === 'admin';
    let guardKeys = new Set();

    function render(v) {
      const eff = v.effective;
      guardKeys = new Set(Object.keys(eff.guard || {}));
      $('profile').value = v.raw.remediationPolicyProfile || 'balanced';
      $('enabled').checked = v.raw.enabled !== false;
      const over = Object.assign({}, v.raw.remediationPolicyOverrides || {}, v.raw.remediationGuardOverrides || {});
      const rows = (eff.explain || []).map((x) => {
        const input = el('input', { type: 'text', id: 'ovr-' + x.key, 'data-knob': x.key,
          'aria-label': 'Host override for ' + x.key, disabled: !admin,
          value: x.key in over ? (typeof over[x.key] === 'string' ? over[x.key] : JSON.stringify(over[x.key])) : '' });
        return el('tr', { 'data-knob': x.key },
          el('th', { scope: 'row', 'data-label': 'Knob' }, el('code', { text: x.key }), el('br'), el('span', { class: 'muted', text: x.variable })),
          el('td', { 'data-label': 'Effective value', class: 'knob-value', text: x.value === null ? 'unset' : (typeof x.value === 'string' ? x.value : JSON.stringify(x.value)) }),
          el('td', { 'data-label': 'Set by', class: 'knob-layer', text: x.layer }),
          el('td', { 'data-label': 'Host override' }, input));
      });
      $('knob-rows').replaceChildren(...rows);
      $('updated').textContent = (v.registered ? 'Registered' : 'Not registered yet: saving registers it') +
        ' · profile ' + eff.profile + ' · ' + (eff.enabled ? 'enabled' : 'disabled');
    }

    async function load() {
      try {
        render(await api('GET', '/api/hosts/' + encodeURIComponent(hostId)));
      } catch (e) {
        $('updated').textContent = 'Could not load the host: ' + e.message + (e.status ? ' (HTTP ' + e.status + ')' : '') + '.';
      }
    }

    // An override is JSON when it parses (numbers, booleans), else text.
    function parseValue(text) {
      try { return JSON.parse(text); } catch (e) { return text; }
    }

    $('edit-note').hidden = admin;
    $('save').hidden = !admin;
    $('profile').disabled = !admin;
    $('enabled').disabled = !admin;
    $('host-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const doc = {
        remediationPolicyProfile: $('profile').value,
        enabled: $('enabled').checked,
        remediationPolicyOverrides: {},
        remediationGuardOverrides: {},
      };
      for (const input of document.querySelectorAll('input[data-knob]')) {
        const t = input.value.trim();
        if (!t) continue;
        const k = input.dataset.knob;
        (guardKeys.has(k) ? doc.remediationGuardOverrides : doc.remediationPolicyOverrides)[k] = parseValue(t);
      }
      try {
        const v = await api('PUT', '/api/hosts/' + encodeURIComponent(hostId), doc);
        render(v);
        const n = Object.keys(doc.remediationPolicyOverrides).length + Object.keys(doc.remediationGuardOverrides).length;
        say('ok', 'Saved host ' + hostId + ': profile ' + doc.remediationPolicyProfile + ', ' +
          (doc.enabled ? 'enabled' : 'disabled') + ', ' + n + ' override' + (n === 1 ? '' : 's') + '.');
      } catch (e) {
        failure('Saving host ' + hostId, e);
      }
    });
    load();
  }

  // ---- run page ----
  function runPage() {
    const runId = document.body.dataset.runId;
    let lastKey = '';

    function dt(dl, term, value) {
      dl.append(el('dt', { text: term }), el('dd', {}, value));
    }

    function link(id) {
      return el('a', { href: '/admin/runs/' + encodeURIComponent(id), text: id });
    }

    function summary(r) {
      const dl = $('summary');
      dl.replaceChildren();
      dt(dl, 'State', el('span', { class: 'state state-' + r.state, id: 'run-state', text: r.state }));
      dt(dl, 'Attempts', r.attempts + '/' + r.maxAttempts);
      dt(dl, 'Host', hostLink(r.hostId));
      dt(dl, 'Action', r.actionKey);
      dt(dl, 'Parameters', el('code', { text: JSON.stringify(r.params || {}) }));
      dt(dl, 'Requested', when(r.requestedAt) + ' by ' + dash(r.requestedBy));
      dt(dl, 'Replay of', r.replayOfRunId ? link(r.replayOfRunId) : '-');
      const as = el('span', {});
      (r.replayedAs || []).forEach((id, i) => { if (i) as.append(', '); as.append(link(id)); });
      dt(dl, 'Replayed as', (r.replayedAs || []).length ? as : '-');
      dt(dl, 'Next attempt', when(r.nextAttemptAt));
      dt(dl, 'Error / DLQ reason', errorText(r));
      dt(dl, 'End reason', dash(r.endReason));
      dt(dl, 'Approval', approvalText(r));
      dt(dl, 'Autonomous / tier', autoText(r));
      dt(dl, 'Canary', canaryText(r.canary));
      dt(dl, 'Rollback', rollbackText(r.rollback));
    }

    function output(o, i) {
      const art = el('article', { class: 'output' });
      art.append(el('h4', {}, (i + 1) + '. ' + o.phase + ': ', el('code', { text: (o.argv || []).join(' ') })));
      const facts = ['exit code ' + dash(o.exitCode)];
      if (o.signal) facts.push('signal ' + o.signal);
      if (o.timedOut) facts.push('timed out');
      facts.push(o.durationMs + ' ms');
      if (o.truncated) facts.push('output truncated');
      art.append(el('p', { class: 'muted', text: facts.join(' · ') }));
      art.append(el('p', { class: 'stream', text: 'stdout' }), el('pre', { tabindex: 0, 'aria-label': 'stdout of command ' + (i + 1), text: o.stdout || '(empty)' }));
      art.append(el('p', { class: 'stream', text: 'stderr' }), el('pre', { tabindex: 0, 'aria-label': 'stderr of command ' + (i + 1), text: o.stderr || '(empty)' }));
      return art;
    }

    function attempts(r) {
      const box = $('attempts');
      const hist = r.history || [];
      if (!hist.length) { box.replaceChildren(el('p', { class: 'muted', text: 'No attempt yet.' })); return; }
      box.replaceChildren(...hist.map((a) => {
        const res = a.result || a;
        const sec = el('section', { class: 'attempt', 'aria-label': 'Attempt ' + a.attempt });
        sec.append(el('h3', { text: 'Attempt ' + a.attempt }));
        const facts = ['started ' + when(a.startedAt), 'finished ' + when(a.finishedAt)];
        if (a.worker) facts.push('worker ' + a.worker);
        facts.push('exit status ' + dash(res.exitStatus));
        if (res.canaryPassed !== undefined && res.canaryPassed !== null) facts.push('canary passed: ' + yn(res.canaryPassed));
        if (res.rollbackAttempted) facts.push('rollback ran, ok: ' + yn(res.rollbackSucceeded));
        if (res.interrupted) facts.push('interrupted');
        sec.append(el('p', { text: facts.join(' · ') }));
        if (res.error) sec.append(el('p', { class: 'result error', text: 'Error: ' + res.error }));
        const outs = res.outputs || [];
        if (!outs.length) sec.append(el('p', { class: 'muted', text: 'No command output was captured.' }));
        outs.forEach((o, i) => sec.append(output(o, i)));
        return sec;
      }));
    }

    let timer = null;
    async function refresh() {
      try {
        const v = await api('GET', '/api/ops/runs/' + encodeURIComponent(runId));
        const r = v.run;
        const key = JSON.stringify(r);
        if (key !== lastKey) {
          lastKey = key;
          summary(r);
          attempts(r);
          const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
          $('run-actions').replaceChildren(actionButtons(r, refreshSoon, null));
          if (focused) {
            const again = $('run-actions').querySelector('[data-key="' + CSS.escape(focused) + '"]');
            if (again) again.focus();
          }
        }
        $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      } catch (e) {
        $('updated').textContent = 'could not refresh: ' + e.message + (e.status ? ' (HTTP ' + e.status + ')' : '');
      }
    }
    async function loop() {
      timer = null;
      await refresh();
      timer = setTimeout(loop, POLL_MS);
    }
    function refreshSoon() {
      if (timer) clearTimeout(timer);
      loop();
    }
    loop();
  }

  document.addEventListener('DOMContentLoaded', () => {
    logoutButton();
    const page = document.body.dataset.page;
    if (page === 'login') loginPage();
    else if (page === 'queue') queuePage();
    else if (page === 'run') runPage();
    else if (page === 'host') hostPage();
  });
})();

// The job page: the community's jobs (GET /jobs), and for one job its status (GET /jobs/:id), live
// charts and events from the event stream (GET /jobs/:id/events, text/event-stream, read with fetch so the
// bearer key can be sent; resumed with Last-Event-ID), samples and files once it completed.
/* global uPlot */

const $ = (id) => document.getElementById(id);
const state = { key: '', community: '', cursor: null, jobId: null, stream: null, charts: null, points: null, status: null, poll: null };

function headers(extra = {}) {
  return state.key ? { authorization: `Bearer ${state.key}`, ...extra } : extra;
}

async function api(path) {
  const res = await fetch(path, { headers: headers() });
  if (!res.ok) {
    let msg = `${res.status}`;
    try {
      msg = (await res.json()).message ?? msg;
    } catch {}
    throw new Error(msg);
  }
  return res.headers.get('content-type')?.includes('json') ? res.json() : res.text();
}

function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

function fmtEta(iso) {
  if (!iso) return '';
  const s = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
  return s < 90 ? `ETA ${s} s` : `ETA ${Math.round(s / 60)} min`;
}

async function loadJobs(append = false) {
  const q = new URLSearchParams({ limit: '20' });
  if (state.community) q.set('communityId', state.community);
  if (append && state.cursor) q.set('after', state.cursor);
  const body = $('jobs').tBodies[0];
  try {
    const page = await api(`/jobs?${q}`);
    $('jobs-error').hidden = true;
    if (!append) body.replaceChildren();
    for (const j of page.data) {
      const tr = document.createElement('tr');
      tr.dataset.jobId = j.jobId;
      if (j.jobId === state.jobId) tr.className = 'selected';
      for (const v of [j.jobId, j.communityId, j.state, j.stage ?? '', fmtTime(j.createdAt)]) {
        const td = document.createElement('td');
        td.textContent = v;
        tr.append(td);
      }
      tr.addEventListener('click', () => openJob(j.jobId));
      body.append(tr);
    }
    state.cursor = page.nextCursor;
    $('more').hidden = !page.hasMore;
  } catch (err) {
    $('jobs-error').textContent = `could not list jobs: ${err.message}`;
    $('jobs-error').hidden = false;
  }
}

function makeChart(el, series, xLabel = 'step') {
  const opts = {
    width: 360,
    height: 200,
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, {}],
    series: [{ label: 'step' }, ...series.map((s) => ({ label: s.label, stroke: s.color, spanGaps: true }))],
  };
  return new uPlot(opts, [[], ...series.map(() => [])], el);
}

function resetCharts() {
  for (const id of ['chart-loss', 'chart-acc', 'chart-margins']) $(id).replaceChildren();
  state.points = { loss: [[], [], []], acc: [[], []], margins: [[], []] };
  state.charts = {
    loss: makeChart(
      $('chart-loss'),
      [
        { label: 'sft loss', color: '#f59e0b' },
        { label: 'dpo loss', color: '#3b82f6' },
      ],
      'logged step (sft, then dpo)',
    ),
    acc: makeChart($('chart-acc'), [{ label: 'dpo', color: '#10b981' }]),
    margins: makeChart($('chart-margins'), [{ label: 'dpo', color: '#8b5cf6' }]),
  };
  $('chart-loss').dataset.points = '0';
}

/** A metrics row (one metrics.jsonl record) onto the charts; eval rows are skipped. */
function addMetrics(row) {
  if (typeof row.loss !== 'number') return;
  const p = state.points;
  const x = p.loss[0].length;
  p.loss[0].push(x);
  p.loss[1].push(row.stage === 'sft' ? row.loss : null);
  p.loss[2].push(row.stage === 'dpo' ? row.loss : null);
  state.charts.loss.setData(p.loss);
  $('chart-loss').dataset.points = String(x + 1);
  if (row.stage === 'dpo') {
    if (typeof row['rewards/accuracies'] === 'number') {
      p.acc[0].push(row.step);
      p.acc[1].push(row['rewards/accuracies']);
      state.charts.acc.setData(p.acc);
    }
    if (typeof row['rewards/margins'] === 'number') {
      p.margins[0].push(row.step);
      p.margins[1].push(row['rewards/margins']);
      state.charts.margins.setData(p.margins);
    }
  }
}

function addEvent(e) {
  const li = document.createElement('li');
  li.className = e.level;
  li.dataset.type = e.type;
  li.textContent = `${new Date(e.createdAt).toLocaleTimeString()}  ${e.type}  ${e.message}`;
  $('events').append(li);
  li.scrollIntoView({ block: 'nearest' });
}

function showStatus(s) {
  state.status = s;
  $('job-state').textContent = s.state;
  $('job-state').className = `state ${s.state}`;
  $('job-meta').textContent =
    `community ${s.communityId} · method ${s.method ?? 'sft+dpo'}${s.suffix ? ` · suffix ${s.suffix}` : ''}${s.datasetId ? ` · dataset ${s.datasetId.slice(0, 15)}…` : ''} · ${s.trainedTokens ?? 0} tokens trained`;
  const pct = Math.round((s.progress?.fraction ?? 0) * 100);
  $('bar').style.width = `${pct}%`;
  $('progress-text').textContent =
    s.state === 'active' && s.stage
      ? `${s.stage}: step ${s.progress.step}/${s.progress.totalSteps} (${pct}%) ${fmtEta(s.estimatedFinish)}`
      : s.state === 'completed'
        ? `completed ${fmtTime(s.finishedAt)}`
        : s.state;
  $('job-error').hidden = !s.error;
  if (s.error) $('job-error').textContent = `${s.error.code}: ${s.error.message}`;
}

async function refreshStatus() {
  if (!state.jobId) return;
  try {
    const s = await api(`/jobs/${state.jobId}`);
    showStatus(s);
    if (['completed', 'failed', 'cancelled'].includes(s.state)) {
      clearInterval(state.poll);
      loadJobs();
      await showFiles();
    }
  } catch {}
}

async function showFiles() {
  const list = await api(`/jobs/${state.jobId}/files`);
  const body = $('files').tBodies[0];
  body.replaceChildren();
  for (const f of list.data) {
    const tr = document.createElement('tr');
    const a = document.createElement('a');
    a.textContent = f.path;
    a.href = f.url;
    a.addEventListener('click', (ev) => {
      ev.preventDefault();
      download(f);
    });
    const td = document.createElement('td');
    td.append(a);
    const size = document.createElement('td');
    size.textContent = String(f.size);
    const sha = document.createElement('td');
    sha.textContent = `${f.sha256.slice(0, 16)}…`;
    tr.append(td, size, sha);
    body.append(tr);
  }
  if (list.data.some((f) => f.path === 'samples.jsonl')) {
    const text = await api(`/jobs/${state.jobId}/files/samples.jsonl`);
    const box = $('samples');
    box.replaceChildren();
    for (const line of String(text).trim().split('\n').slice(-6)) {
      try {
        const s = JSON.parse(line);
        const pre = document.createElement('pre');
        pre.className = 'sample';
        pre.textContent = `[${s.stage} step ${s.step}] ${s.prompt}\n→ ${s.completion}`;
        box.append(pre);
      } catch {}
    }
  }
}

async function download(f) {
  const res = await fetch(f.url, { headers: headers() });
  const blob = await res.blob();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = f.path.split('/').pop();
  a.click();
  URL.revokeObjectURL(a.href);
}

/** Read the SSE stream with fetch (bearer header), reconnecting with Last-Event-ID. */
async function follow(jobId) {
  const ctrl = new AbortController();
  state.stream = ctrl;
  let lastId = '';
  while (!ctrl.signal.aborted) {
    try {
      const res = await fetch(`/jobs/${jobId}/events`, {
        headers: headers({ accept: 'text/event-stream', ...(lastId ? { 'last-event-id': lastId } : {}) }),
        signal: ctrl.signal,
      });
      if (!res.ok || !res.body) throw new Error(`events: ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let data = '';
          for (const line of frame.split('\n')) {
            if (line.startsWith('id: ')) lastId = line.slice(4);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch {
      if (ctrl.signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function onEvent(e) {
  if (e.type === 'metrics') addMetrics(e.data);
  else addEvent(e);
  if (e.type.startsWith('job.') || e.type.startsWith('stage.') || e.type === 'upload.completed') refreshStatus();
}

async function openJob(jobId) {
  state.stream?.abort();
  clearInterval(state.poll);
  state.jobId = jobId;
  location.hash = `job=${jobId}`;
  for (const tr of $('jobs').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.jobId === jobId);
  $('job').hidden = false;
  $('job-id').textContent = jobId;
  $('events').replaceChildren();
  $('files').tBodies[0].replaceChildren();
  resetCharts();
  await refreshStatus();
  // progress (step, ETA) changes without events: poll the status while the job runs
  state.poll = setInterval(refreshStatus, 1000);
  follow(jobId);
}

$('settings').addEventListener('submit', (ev) => {
  ev.preventDefault();
  state.key = $('key').value.trim();
  state.community = $('community').value.trim();
  sessionStorage.setItem('dpo-key', state.key);
  loadJobs();
});
$('more').addEventListener('click', () => loadJobs(true));

// the key and a job can come from the fragment: /ui#key=...&job=...
const frag = new URLSearchParams(location.hash.slice(1));
state.key = frag.get('key') ?? sessionStorage.getItem('dpo-key') ?? '';
$('key').value = state.key;
state.community = frag.get('community') ?? '';
$('community').value = state.community;
loadJobs();
if (frag.get('job')) openJob(frag.get('job'));

"""The live page at `/`: SKUs with their availability updating over SSE; hold and release."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stockflow: live availability</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}
table{border-collapse:collapse;width:100%}td,th{padding:.3em .6em;border-bottom:1px solid #ddd;
text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.flash{background:#ffe9a8}#log{font-size:.85em;color:#555;white-space:pre-line}
</style></head><body>
<h1>stockflow: live availability</h1>
<p><label>API key <input id="key" value="__DEMO_KEY__" size="30"></label>
<label>SKUs <input id="skus" placeholder="empty: the first page" size="30"></label>
<button id="load">Load</button> <span id="state">disconnected</span></p>
<table><thead><tr><th>platform SKU</th><th>available</th><th>suppliers' total</th>
<th>reserved</th><th></th></tr></thead><tbody id="rows"></tbody></table>
<div id="log"></div>
<script>
const rows = document.getElementById('rows'), logEl = document.getElementById('log');
const holds = {};  // sku -> reservation ids held from this page
let source = null;
function key() { return document.getElementById('key').value.trim(); }
function note(text) { logEl.textContent = text + '\\n' + logEl.textContent.slice(0, 2000); }
function row(sku) {
  let tr = document.querySelector('tr[data-sku="' + CSS.escape(sku) + '"]');
  if (!tr) {
    tr = document.createElement('tr'); tr.dataset.sku = sku;
    for (const c of ['sku', 'available', 'total', 'reserved']) {
      const td = document.createElement('td'); td.className = c === 'sku' ? '' : 'n';
      td.dataset.col = c; tr.appendChild(td);
    }
    tr.children[0].textContent = sku;
    const td = document.createElement('td');
    const hold = document.createElement('button'); hold.textContent = 'hold 1';
    hold.className = 'hold'; hold.onclick = () => doHold(sku);
    const rel = document.createElement('button'); rel.textContent = 'release';
    rel.className = 'release'; rel.onclick = () => doRelease(sku);
    td.append(hold, ' ', rel); tr.appendChild(td); rows.appendChild(tr);
  }
  return tr;
}
function show(v) {
  const tr = row(v.platform_sku);
  tr.querySelector('[data-col=available]').textContent = v.available;
  tr.querySelector('[data-col=total]').textContent = v.supplier_total;
  tr.querySelector('[data-col=reserved]').textContent = v.reserved;
  tr.classList.add('flash'); setTimeout(() => tr.classList.remove('flash'), 400);
}
async function call(method, url, extra) {
  const headers = Object.assign({'X-API-Key': key()}, extra || {});
  const r = await fetch(url, {method, headers, body: extra && extra.body});
  return [r.status, await r.json().catch(() => ({}))];
}
async function doHold(sku) {
  const [status, body] = await call('POST', '/v1/reservations', {
    'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID(),
    body: JSON.stringify({platform_sku: sku, quantity: 1})});
  if (status === 201) { (holds[sku] = holds[sku] || []).push(body.reservation_id); }
  note(sku + ': hold -> ' + status + ' ' + (body.error || body.status));
}
async function doRelease(sku) {
  const id = (holds[sku] || []).pop();
  if (!id) { note(sku + ': no hold from this page'); return; }
  const [status, body] = await call('DELETE', '/v1/reservations/' + encodeURIComponent(id));
  note(sku + ': release -> ' + status + ' ' + (body.error || body.status));
}
async function load() {
  let skus = document.getElementById('skus').value.split(',').map(s => s.trim()).filter(s => s);
  rows.textContent = '';
  if (!skus.length) {
    const [status, page] = await call('GET', '/v1/inventory?limit=25');
    if (status !== 200) { note('list -> ' + status + ' ' + (page.error || '')); return; }
    skus = page.items.map(i => i.platform_sku);
  }
  for (const sku of skus) {
    const [status, v] = await call('GET', '/v1/inventory/' + encodeURIComponent(sku));
    if (status === 200) show(v); else row(sku);
  }
  if (source) source.close();
  const q = new URLSearchParams({skus: skus.join(','), api_key: key()});
  source = new EventSource('/v1/stream?' + q);
  source.onopen = () => { document.getElementById('state').textContent = 'live'; };
  source.onerror = () => { document.getElementById('state').textContent = 'reconnecting'; };
  for (const kind of ['availability', 'reset']) {
    source.addEventListener(kind, e => show(JSON.parse(e.data)));
  }
}
document.getElementById('load').onclick = load;
load();
</script></body></html>
"""

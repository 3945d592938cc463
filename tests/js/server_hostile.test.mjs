// server_hostile.test.mjs: `flash-moe serve` under bad input and bad clients: malformed
// JSON, wrong types, missing fields, a 100 MB body, a 10,000-message conversation,
// invalid UTF-8, unknown endpoints, wrong API keys, clients that disconnect mid-stream,
// slow clients, and 50 concurrent clients against a queue of 8. Afterwards both servers
// must still answer /health and a normal request, and exit cleanly (status 0, so no
// sanitizer report) on SIGTERM.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startServer, sleep, rssKb } from './server_lib.mjs';

const KEY = 'sk-hostile-key';
const LONG = Array.from({ length: 1500 }, (_, i) => `w${i % 10}`).join(' ');
let A, B; // A: the model, with an API key; B: a long forced completion, queue of 8

before(async () => {
  [A, B] = await Promise.all([
    startServer(['--api-key', KEY, '--max-tokens', '32']),
    startServer(['--queue', '8', '--force-completion', LONG]),
  ]);
});

after(async () => {
  for (const s of [A, B]) {
    if (!s) continue;
    const r = await s.stop();
    assert.equal(r.code, 0, `server exited with ${r.code ?? r.sig}:\n${s.stderr().slice(-3000)}`);
  }
});

const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
const post = (srv, path, body, headers = auth) =>
  fetch(`${srv.url}${path}`, { method: 'POST', headers, body: typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body) });
const health = async (srv) => (await fetch(`${srv.url}/health`)).json();
const chatBody = (extra = {}) => ({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, ...extra });

async function expectError(res, status, family) {
  assert.equal(res.status, status);
  const j = await res.json();
  if (family === 'anthropic') {
    assert.equal(j.type, 'error');
    assert.equal(typeof j.error.type, 'string');
    assert.equal(typeof j.error.message, 'string');
  } else {
    assert.equal(typeof j.error.message, 'string');
    assert.equal(typeof j.error.type, 'string');
  }
  return j;
}

async function waitIdle(srv, ms) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    const h = await health(srv);
    if (!h.busy && !h.queued) return Date.now() - t0;
    await sleep(20);
  }
  return -1;
}

test('malformed JSON is a 400 in each API\'s format', async () => {
  for (const body of ['{', '{"model":', 'null', '[]', '"text"', '', '{"model":"m","messages":[]}trailing', '{"a":1,}']) {
    await expectError(await post(A, '/v1/chat/completions', body), 400, 'openai');
    await expectError(await post(A, '/v1/messages', body), 400, 'anthropic');
  }
});

test('wrong types and missing fields are 400s', async () => {
  const chat = [
    {}, { model: 'm' }, { messages: [{ role: 'user', content: 'x' }] },
    chatBody({ messages: 'hi' }), chatBody({ messages: [{ role: 'user', content: 5 }] }),
    chatBody({ messages: [{ content: 'x' }] }), chatBody({ messages: [null] }),
    chatBody({ max_tokens: '5' }), chatBody({ max_tokens: -1 }), chatBody({ max_tokens: 1.5 }),
    chatBody({ temperature: 'hot' }), chatBody({ top_p: 2 }), chatBody({ stream: 'yes' }),
    chatBody({ stop: 7 }), chatBody({ stop: [1] }), chatBody({ tools: {} }), chatBody({ tools: [{ type: 'function' }] }),
    chatBody({ tool_choice: 'auto' }), chatBody({ seed: 'x' }), chatBody({ n: 3 }), chatBody({ best_of: 2 }),
    chatBody({ stream_options: { include_usage: true } }), chatBody({ model: 5 }), chatBody({ frobnicate: true }),
    chatBody({ messages: [{ role: 'tool', content: 'x' }] }),
  ];
  for (const b of chat) await expectError(await post(A, '/v1/chat/completions', b), 400, 'openai');
  const msgs = [
    { model: 'm', messages: [{ role: 'user', content: 'x' }] },
    { model: 'm', max_tokens: 5 }, { max_tokens: 5, messages: [{ role: 'user', content: 'x' }] },
    { model: 'm', max_tokens: 0, messages: [{ role: 'user', content: 'x' }] },
    { model: 'm', max_tokens: 5, messages: [{ role: 'system', content: 'x' }] },
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'text' }] }] },
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'tool_result' }] }] },
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], system: 5 },
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], tools: [{ name: 'x' }] },
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], stop_sequences: 'x' },
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], tool_choice: { type: 'any' } },
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], unknown_field: 1 },
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], thinking: { type: 'sometimes' } },
  ];
  for (const b of msgs) await expectError(await post(A, '/v1/messages', b), 400, 'anthropic');
  await expectError(await post(A, '/v1/completions', { model: 'm', prompt: 5 }), 400, 'openai');
  await expectError(await post(A, '/v1/completions', { model: 'm', prompt: [1e12] }), 400, 'openai');
  await expectError(await post(A, '/v1/messages/count_tokens', { model: 'm' }), 400, 'anthropic');
});

test('a 100 MB body is refused with 413 before it is read', async () => {
  const rss0 = rssKb(A.proc.pid);
  // expect100: send "Expect: 100-continue" and wait (how curl sends large bodies);
  // otherwise start pushing the body 200 ms after the headers.
  const send = (expect100) => new Promise((resolve, reject) => {
    const t0 = Date.now();
    const sock = net.connect(A.port, '127.0.0.1');
    let sent = 0, buf = '', done = false;
    const chunk = Buffer.alloc(1 << 20, 0x20);
    const finish = () => { if (!done) { done = true; sock.destroy(); resolve({ status: buf.slice(9, 12), sent, ms: Date.now() - t0 }); } };
    sock.on('error', () => {}); // EPIPE once the server has answered and closed
    sock.on('close', finish);
    sock.on('data', (d) => { buf += d.toString(); if (buf.includes('\r\n\r\n') && !buf.startsWith('HTTP/1.1 100')) finish(); });
    sock.on('connect', async () => {
      sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: ${100 << 20}\r\n${expect100 ? 'Expect: 100-continue\r\n' : ''}\r\n`);
      if (expect100) return;
      await sleep(200);
      const pump = () => {
        while (!done && sent < (100 << 20)) {
          sent += chunk.length;
          if (!sock.write(chunk)) { sock.once('drain', pump); return; }
        }
      };
      pump();
    });
    setTimeout(() => { if (!done) { done = true; sock.destroy(); reject(new Error('no answer within 10 s')); } }, 10000);
  });
  for (const expect100 of [true, false]) {
    const { status, sent, ms } = await send(expect100);
    assert.equal(status, '413');
    assert.ok(ms < 5000, 'answered quickly');
    assert.ok(sent < (100 << 20), `the server did not read the whole body (client sent ${sent})`);
  }
  assert.ok(rssKb(A.proc.pid) - rss0 < 32 * 1024, 'the server did not buffer the body');
  // without Content-Length (chunked), the limit still holds while reading
  const big = new Uint8Array(5 << 20).fill(0x20);
  const stream = new ReadableStream({ start(c) { c.enqueue(big); c.close(); } });
  const r = await fetch(`${A.url}/v1/messages`, { method: 'POST', headers: auth, body: stream, duplex: 'half' });
  await expectError(r, 413, 'anthropic');
});

test('a 10,000-message conversation is answered or refused for its length', async () => {
  const messages = Array.from({ length: 10000 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: `message ${i}` }));
  const model = (await (await fetch(`${A.url}/v1/models`, { headers: auth })).json()).data[0];
  const ct = await post(A, '/v1/messages/count_tokens', { model: 'm', messages });
  assert.equal(ct.status, 200);
  const n = (await ct.json()).input_tokens;
  assert.ok(n > 10000);
  const r = await post(A, '/v1/chat/completions', { model: 'm', messages, max_tokens: 2 });
  if (n >= model.context_length) {
    const j = await expectError(r, 400, 'openai');
    assert.match(j.error.message, /context/);
  } else {
    assert.equal(r.status, 200);
  }
});

test('invalid UTF-8 is a 400', async () => {
  const bad = [[0xff], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]];
  for (const seq of bad) {
    const pre = Buffer.from('{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"a');
    const body = Buffer.concat([pre, Buffer.from(seq), Buffer.from('"}]}')]);
    await expectError(await post(A, '/v1/chat/completions', body), 400, 'openai');
    await expectError(await post(A, '/v1/messages', body), 400, 'anthropic');
  }
  // a lone surrogate escape does not decode to UTF-8 either
  await expectError(await post(A, '/v1/chat/completions', '{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}'), 400, 'openai');
});

test('unknown endpoints and methods', async () => {
  await expectError(await fetch(`${A.url}/v2/chat`, { headers: auth }), 404, 'openai');
  await expectError(await post(A, '/v1/messages/batches', {}), 404, 'anthropic');
  await expectError(await post(A, '/../../etc/passwd', {}), 404, 'openai');
  await expectError(await fetch(`${A.url}/v1/chat/completions`, { headers: auth }), 405, 'openai');
  await expectError(await fetch(`${A.url}/v1/models/..%2F..%2Fetc%2Fpasswd`, { headers: auth }), 404, 'openai');
});

test('wrong or missing API keys are 401s; /health stays open', async () => {
  const b = chatBody();
  await expectError(await post(A, '/v1/chat/completions', b, { 'content-type': 'application/json' }), 401, 'openai');
  await expectError(await post(A, '/v1/chat/completions', b, { authorization: `Bearer ${KEY}x` }), 401, 'openai');
  await expectError(await post(A, '/v1/chat/completions', b, { authorization: `Bearer ${KEY.slice(0, -1)}` }), 401, 'openai');
  await expectError(await post(A, '/v1/messages', b, { 'x-api-key': 'nope' }), 401, 'anthropic');
  await expectError(await fetch(`${A.url}/v1/models`), 401, 'openai');
  assert.equal((await fetch(`${A.url}/health`)).status, 200);
  const ok = await post(A, '/v1/messages', { model: 'm', max_tokens: 2, messages: [{ role: 'user', content: 'x' }] }, { 'x-api-key': KEY });
  assert.equal(ok.status, 200);
});

test('a client that disconnects mid-stream cancels its generation', async () => {
  const before = await health(B);
  // the whole 800-token generation, for scale
  const t0 = Date.now();
  assert.equal((await post(B, '/v1/chat/completions', chatBody({ max_tokens: 800 }))).status, 200);
  const tFull = Date.now() - t0;
  console.log(`# an 800-token generation takes ${tFull} ms`);
  const ac = new AbortController();
  const r = await fetch(`${B.url}/v1/chat/completions`, { method: 'POST', headers: auth, body: JSON.stringify(chatBody({ max_tokens: 800, stream: true })), signal: ac.signal });
  const reader = r.body.getReader();
  let got = '';
  while (!got.includes('"content":"w')) got += new TextDecoder().decode((await reader.read()).value);
  ac.abort();
  const idle = await waitIdle(B, tFull * 2 + 3000);
  assert.ok(idle >= 0 && idle < Math.max(tFull / 2, 400), `stopped ${idle} ms after the disconnect (the whole generation takes ${tFull} ms)`);
  const h = await health(B);
  assert.ok(h.cancelled > before.cancelled);
  // a non-streaming client that leaves is noticed too
  const sock = net.connect(B.port, '127.0.0.1');
  await new Promise((res) => sock.on('connect', res));
  const body = JSON.stringify(chatBody({ max_tokens: 800 }));
  sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  await sleep(100);
  sock.destroy();
  const idle2 = await waitIdle(B, tFull * 2 + 3000);
  assert.ok(idle2 >= 0 && idle2 < Math.max(tFull / 2, 400), `stopped ${idle2} ms after the disconnect`);
  assert.ok((await health(B)).cancelled > h.cancelled);
});

test('slow clients do not hold up others', async () => {
  // a client that sends its request one byte at a time
  const body = JSON.stringify(chatBody({ max_tokens: 3 }));
  const reqText = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`;
  const slow = new Promise((resolve, reject) => {
    const sock = net.connect(B.port, '127.0.0.1');
    let out = '';
    sock.on('data', (d) => { out += d; });
    sock.on('end', () => resolve(out));
    sock.on('error', reject);
    sock.on('connect', async () => {
      for (let i = 0; i < reqText.length; i += Math.ceil(reqText.length / 30)) {
        sock.write(reqText.slice(i, i + Math.ceil(reqText.length / 30)));
        await sleep(40);
      }
    });
  });
  const t0 = Date.now();
  const r = await post(B, '/v1/chat/completions', chatBody({ max_tokens: 3 }));
  assert.equal(r.status, 200);
  assert.ok(Date.now() - t0 < 1000, 'a normal request is not queued behind the slow sender');
  assert.match(await slow, /^HTTP\/1\.1 200/);
  // a client that does not read its stream: generation goes on, others are served
  const sock = net.connect(B.port, '127.0.0.1');
  await new Promise((res) => sock.on('connect', res));
  let streamed = '';
  sock.on('data', (d) => { streamed += d; });
  const sb = JSON.stringify(chatBody({ max_tokens: 600, stream: true, stream_options: { include_usage: true } }));
  sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${sb.length}\r\nConnection: close\r\n\r\n${sb}`);
  sock.pause();
  assert.ok(await waitIdle(B, 60000) >= 0, 'the generation finished while the client did not read');
  assert.equal((await post(B, '/v1/chat/completions', chatBody())).status, 200);
  sock.resume();
  await new Promise((res) => sock.on('end', res));
  // chunked transfer: the last event, then the terminating zero-length chunk
  assert.match(streamed, /data: \[DONE\]\n\n\r\n0\r\n\r\n$/, 'the stream was delivered whole');
  assert.match(streamed, /"completion_tokens":600,/);
});

test('50 concurrent clients against a queue of 8: some 429s, the rest answered', async () => {
  const rs = await Promise.all(Array.from({ length: 50 }, () => post(B, '/v1/chat/completions', chatBody({ max_tokens: 40 }))));
  const codes = rs.map((r) => r.status);
  const ok = codes.filter((c) => c === 200).length, busy = codes.filter((c) => c === 429).length;
  assert.equal(ok + busy, 50, `statuses: ${codes.join(',')}`);
  assert.ok(busy >= 1, 'some clients were turned away');
  assert.ok(ok >= 9, 'the running request and the 8 queued ones were answered');
  const r429 = rs.find((r) => r.status === 429);
  assert.ok(Number(r429.headers.get('retry-after')) >= 1);
  await expectError(r429, 429, 'openai');
  for (const r of rs) if (r.status === 200) assert.equal((await r.json()).usage.completion_tokens, 40);
});

test('afterwards both servers answer /health and a normal request', async () => {
  for (const s of [A, B]) {
    const h = await health(s);
    assert.equal(h.status, 'ok');
    const r = await post(s, '/v1/chat/completions', chatBody());
    assert.equal(r.status, 200);
    const j = await r.json();
    assert.equal(j.choices[0].message.role, 'assistant');
    const m = await post(s, '/v1/messages', { model: 'm', max_tokens: 3, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(m.status, 200);
  }
});

test('SIGTERM mid-stream: the stream ends with an error event, a queued request gets 503', async () => {
  const C = await startServer(['--force-completion', LONG]);
  const stream = fetch(`${C.url}/v1/chat/completions`, { method: 'POST', headers: auth, body: JSON.stringify(chatBody({ max_tokens: 1400, stream: true })) });
  const r = await stream;
  const reader = r.body.getReader();
  let text = new TextDecoder().decode((await reader.read()).value);
  const queued = post(C, '/v1/messages', { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] });
  await sleep(200);
  const exited = C.stop();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  assert.match(text, /data: \{"error":\{"message":"the server is shutting down"/);
  assert.match(text, /data: \[DONE\]\n\n$/);
  const q = await queued;
  await expectError(q, 503, 'anthropic');
  assert.equal((await exited).code, 0, C.stderr().slice(-2000));
});

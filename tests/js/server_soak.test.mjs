// server_soak.test.mjs: 1,000 sequential short requests over loopback, mixing every route
// and both streaming and plain replies (and some refused requests). The server's
// resident memory after the last request must equal its memory after the first 50
// within 2%. Bounded: the loop fails if it runs past 150 s.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, rssKb } from './server_lib.mjs';

const N = 1000, WARM = 50, LIMIT_MS = 150000;

test('1,000 sequential requests leave memory where it was after 50', async () => {
  // Under AddressSanitizer freed memory sits in a quarantine first; keep that small so
  // RSS measures the server and not the sanitizer (LeakSanitizer still runs at exit).
  const asan = process.env.ASAN_OPTIONS ?? '';
  // A quarter of the experts per layer: the expert cache is full within the first 50
  // requests, so its slots filling up later (bounded growth) is not taken for a leak.
  const srv = await startServer(['--max-tokens', '2', '--sessions', '2', '--capacity', '16'], {
    ASAN_OPTIONS: `${asan}${asan ? ':' : ''}quarantine_size_mb=0:thread_local_quarantine_size_kb=0:malloc_context_size=0:allocator_release_to_os_interval_ms=100`,
  });
  const h = { 'content-type': 'application/json' };
  const user = (i) => [{ role: 'user', content: `Request number ${i % 7}: say something.` }];
  const kinds = [
    (i) => ['/v1/chat/completions', { model: 'm', messages: user(i), max_tokens: 2 }],
    (i) => ['/v1/chat/completions', { model: 'm', messages: user(i), max_tokens: 2, stream: true, stream_options: { include_usage: true } }],
    (i) => ['/v1/messages', { model: 'm', messages: user(i), max_tokens: 2 }],
    (i) => ['/v1/messages', { model: 'm', messages: user(i), max_tokens: 2, stream: true }],
    (i) => ['/v1/completions', { model: 'm', prompt: `Once ${i % 5}`, max_tokens: 2 }],
    (i) => ['/v1/messages/count_tokens', { model: 'm', messages: user(i) }],
    () => ['/v1/chat/completions', { model: 'm', messages: [] }],
  ];
  let at50 = 0, failures = 0;
  const t0 = Date.now();
  try {
    for (let i = 0; i < N; i++) {
      assert.ok(Date.now() - t0 < LIMIT_MS, `soak ran past ${LIMIT_MS / 1000} s at request ${i}`);
      const [path, body] = kinds[i % kinds.length](i);
      const r = await fetch(`${srv.url}${path}`, { method: 'POST', headers: h, body: JSON.stringify(body) });
      const text = await r.text();
      const expect = path === '/v1/chat/completions' && body.messages.length === 0 ? 400 : 200;
      if (r.status !== expect) { failures++; if (failures < 5) console.log(r.status, text.slice(0, 200)); }
      if (i + 1 === WARM) at50 = rssKb(srv.proc.pid);
    }
    const end = rssKb(srv.proc.pid);
    console.log(`# RSS after ${WARM}: ${at50} kB, after ${N}: ${end} kB (${(((end - at50) / at50) * 100).toFixed(2)}%), ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    assert.equal(failures, 0);
    assert.ok(Math.abs(end - at50) <= at50 * 0.02, `RSS ${at50} kB -> ${end} kB`);
  } finally {
    const st = await srv.stop();
    assert.equal(st.code, 0, `server exited with ${st.code ?? st.sig}:\n${srv.stderr().slice(-3000)}`);
  }
});

// server_cancel.test.mjs: `flash-moe serve` cancels a long prompt's prefill when its client
// disconnects. A streaming client sends a ~2000-token prompt and leaves while the server is
// prefilling it (seen in /health's prefill progress) with a second request waiting in the
// queue. Checked on the server's own counters and log, not on timing: the prefill stopped
// at a chunk boundary before the end of the prompt, the queued request was answered with
// only its own tokens prefilled after that, and a retry of the long prompt reuses the
// chunks prefilled before the disconnect.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, sleep } from './server_lib.mjs';

const CHUNK = 256; // the library's prefill chunk
const LONG = 'The quick brown fox jumps over the lazy dog, and then it runs away. '.repeat(68); // ~1860 tokens with the chat template (context 2048)
let S;

before(async () => {
  // one compute thread: a slower prefill leaves more chunks between the disconnect and the end
  S = await startServer(['--threads', '1']);
});

after(async () => {
  if (!S) return;
  const r = await S.stop();
  assert.equal(r.code, 0, `server exited with ${r.code ?? r.sig}:\n${S.stderr().slice(-3000)}`);
});

const headers = { 'content-type': 'application/json' };
const chat = (content, extra = {}) => JSON.stringify({ model: 'm', messages: [{ role: 'user', content }], max_tokens: 4, ...extra });
const health = async () => (await fetch(`${S.url}/health`)).json();

async function until(pred, ms = 60000) {
  const t0 = Date.now();
  for (;;) {
    const h = await health();
    if (pred(h) || Date.now() - t0 > ms) return h;
    await sleep(2);
  }
}

test('a client that disconnects during prefill cancels it; the queued request is not held up', async () => {
  const h0 = await health();
  const ac = new AbortController();
  const res = await fetch(`${S.url}/v1/chat/completions`, { method: 'POST', headers, body: chat(LONG, { stream: true }), signal: ac.signal });
  assert.equal(res.status, 200);
  // the server is prefilling the long prompt, past its first chunk
  let h = await until((x) => x.prefill_done >= CHUNK);
  const total = h.prefill_total;
  assert.ok(total > 1800, `the long prompt needs ${total} tokens of prefill`);
  assert.ok(h.prefill_done < total, `prefilling: ${h.prefill_done} of ${total}`);
  // a second request waits behind it
  // (a raw completion: it shares no template prefix with the long prompt, so it gets a
  // session of its own and the cancelled one keeps its chunks for the retry below)
  const second = fetch(`${S.url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'm', prompt: 'Hello there', max_tokens: 4 }) });
  h = await until((x) => x.queued >= 1 || x.prefill_done >= total);
  assert.equal(h.queued, 1, 'the second request is queued');
  assert.ok(h.prefill_done < total, `still prefilling when the client leaves (${h.prefill_done} of ${total})`);
  const doneAtAbort = h.prefill_done;
  ac.abort();
  const r2 = await second;
  assert.equal(r2.status, 200);
  const j2 = await r2.json();
  const own = j2.usage.prompt_tokens - (j2.usage.prompt_tokens_details?.cached_tokens ?? 0);
  const h2 = await health();
  // the long prompt's log line: cancelled, prefill stopped at a chunk boundary before its end
  const m = S.stderr().match(/chat stream: prompt (\d+) tokens \(0 reused\), 0 generated, cancelled, prefill stopped after (\d+) of (\d+) tokens/);
  assert.ok(m, `log line of the cancelled prefill:\n${S.stderr().slice(-1500)}`);
  const kept = Number(m[2]);
  console.log(`# prefill of ${total} tokens: ${doneAtAbort} done when the client left, stopped after ${kept}`);
  assert.equal(Number(m[3]), total);
  assert.ok(kept >= doneAtAbort && kept < total && kept % CHUNK === 0, `stopped after ${kept} of ${total}`);
  // the server's own counter: the cancelled prefix plus the second request's tokens, no more
  assert.equal(h2.prefill_tokens - h0.prefill_tokens, kept + own, 'prefilled tokens');
  assert.ok(h2.cancelled > h0.cancelled);
  assert.equal(h2.prefill_done, 0);

  // a retry of the long prompt reuses the chunks prefilled before the disconnect
  const r3 = await fetch(`${S.url}/v1/chat/completions`, { method: 'POST', headers, body: chat(LONG, { max_tokens: 1 }) });
  assert.equal(r3.status, 200);
  const j3 = await r3.json();
  assert.equal(j3.usage.prompt_tokens_details.cached_tokens, kept, `the retry reuses the kept prefix:\n${S.stderr().slice(-1500)}`);
  const h3 = await health();
  assert.equal(h3.prefill_tokens - h2.prefill_tokens, total - kept);
});

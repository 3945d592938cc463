// server.test.mjs: `flash-moe serve` driven by the official OpenAI and Anthropic clients.
// Three servers: the model itself (sampled text), and two with the testing-only
// --force-completion option (a fixed text streamed token by token through the normal
// generation path) so tool-call parsing, stop sequences and event sequences are checked
// with known text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startServer } from './server_lib.mjs';

const TOOL_TEXT = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>';
const STOP_TEXT = 'Hello world. The answer is 42. Goodbye.';
// a reasoning model's reply with a Qwen3-Coder (XML) tool call
const THINK_TEXT = '<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>';
const KEY = 'sk-test-0123456789';

const WEATHER_OA = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
  },
};
const WEATHER_AN = {
  name: 'get_weather',
  description: 'Current weather of a city',
  input_schema: WEATHER_OA.function.parameters,
};

let real, tool, stop, keyed, think;
const oa = (srv, apiKey = 'none') => new OpenAI({ baseURL: `${srv.url}/v1`, apiKey, maxRetries: 0 });
const an = (srv, apiKey = 'none') => new Anthropic({ baseURL: srv.url, apiKey, maxRetries: 0 });

before(async () => {
  [real, tool, stop, keyed, think] = await Promise.all([
    startServer(['--max-tokens', '64']),
    startServer(['--force-completion', TOOL_TEXT]),
    startServer(['--force-completion', STOP_TEXT]),
    startServer(['--api-key', KEY, '--force-completion', STOP_TEXT]),
    startServer(['--force-completion', THINK_TEXT]),
  ]);
});

after(async () => {
  for (const s of [real, tool, stop, keyed, think]) {
    if (!s) continue;
    const r = await s.stop();
    assert.equal(r.code, 0, `server exited with ${r.code ?? r.sig}:\n${s.stderr().slice(-3000)}`);
  }
});

test('GET /v1/models lists the served model', async () => {
  const page = await oa(real).models.list();
  assert.equal(page.data.length, 1);
  assert.equal(typeof page.data[0].id, 'string');
  const am = await an(real).models.list();
  assert.equal(am.data[0].id, page.data[0].id);
});

test('chat: non-streaming reply, usage, finish_reason, created', async () => {
  const t0 = Math.floor(Date.now() / 1000);
  const req = { model: 'demo', messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say hello.' }], max_tokens: 12, temperature: 0 };
  const r = await oa(real).chat.completions.create(req);
  assert.equal(r.object, 'chat.completion');
  assert.ok(Math.abs(r.created - t0) < 120, 'created is a current unix time');
  const c = r.choices[0];
  assert.equal(c.message.role, 'assistant');
  assert.equal(typeof c.message.content, 'string');
  assert.ok(['stop', 'length'].includes(c.finish_reason));
  assert.ok(r.usage.prompt_tokens > 0);
  assert.ok(r.usage.completion_tokens <= 12);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  if (c.finish_reason === 'length') assert.equal(r.usage.completion_tokens, 12);
  // greedy decoding is deterministic, and the streamed text equals the whole reply
  const r2 = await oa(real).chat.completions.create(req);
  assert.equal(r2.choices[0].message.content, c.message.content);
  const stream = await oa(real).chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null, roles = 0;
  for await (const ch of stream) {
    assert.equal(ch.object, 'chat.completion.chunk');
    if (ch.usage) usage = ch.usage;
    if (!ch.choices.length) continue;
    if (ch.choices[0].delta.role) roles++;
    text += ch.choices[0].delta.content ?? '';
    finish = ch.choices[0].finish_reason ?? finish;
  }
  assert.equal(roles, 1);
  assert.equal(text, c.message.content);
  assert.equal(finish, c.finish_reason);
  assert.deepEqual([usage.prompt_tokens, usage.completion_tokens], [r.usage.prompt_tokens, r.usage.completion_tokens]);
});

test('chat: content as an array of text parts, and a growing conversation reuses the prefix', async () => {
  const c = oa(real);
  const msgs = [{ role: 'user', content: [{ type: 'text', text: 'Tell me ' }, { type: 'text', text: 'a story.' }] }];
  const r1 = await c.chat.completions.create({ model: 'm', messages: msgs, max_tokens: 8 });
  msgs.push({ role: 'assistant', content: r1.choices[0].message.content }, { role: 'user', content: 'Go on.' });
  const r2 = await c.chat.completions.create({ model: 'm', messages: msgs, max_tokens: 8 });
  assert.ok(r2.usage.prompt_tokens > r1.usage.prompt_tokens);
  assert.ok(r2.usage.prompt_tokens_details.cached_tokens > 0, 'the second turn reuses the first turn\'s KV cache');
});

test('chat: max_tokens and max_completion_tokens end with finish_reason length', async () => {
  const c = oa(stop);
  const r = await c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 2);
  assert.ok(STOP_TEXT.startsWith(r.choices[0].message.content));
  const r2 = await c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: 3 });
  assert.equal(r2.usage.completion_tokens, 3);
  const full = await c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(full.choices[0].message.content, STOP_TEXT);
  assert.equal(full.choices[0].finish_reason, 'stop');
});

test('chat: stop sequences cut the text before the match, streaming and not', async () => {
  const c = oa(stop);
  const req = { model: 'm', messages: [{ role: 'user', content: 'hi' }], stop: ['zzz', 'answer'] };
  const r = await c.chat.completions.create(req);
  assert.equal(r.choices[0].message.content, 'Hello world. The ');
  assert.equal(r.choices[0].finish_reason, 'stop');
  const s = await c.chat.completions.create({ ...req, stop: '42', stream: true });
  let text = '', fin;
  for await (const ch of s) { text += ch.choices[0]?.delta?.content ?? ''; fin = ch.choices[0]?.finish_reason ?? fin; }
  assert.equal(text, 'Hello world. The answer is ');
  assert.equal(fin, 'stop');
});

test('completions: text, stop and usage', async () => {
  const r = await oa(stop).completions.create({ model: 'm', prompt: 'Once', max_tokens: 50, stop: ['.'] });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].text, 'Hello world');
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.ok(r.usage.prompt_tokens >= 1);
  const d = await oa(real).completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 4 });
  assert.ok(d.usage.completion_tokens <= 4);
  const st = await oa(real).completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 4, stream: true });
  let text = '';
  for await (const ch of st) text += ch.choices[0]?.text ?? '';
  assert.equal(text, d.choices[0].text);
});

test('chat: tool call parsed from the model output, then the tool result goes back', async () => {
  const c = oa(tool);
  const messages = [{ role: 'user', content: 'Weather in Paris?' }];
  const r = await c.chat.completions.create({ model: 'm', messages, tools: [WEATHER_OA] });
  const ch = r.choices[0];
  assert.equal(ch.finish_reason, 'tool_calls');
  assert.equal(ch.message.content, 'Let me check.');
  assert.equal(ch.message.tool_calls.length, 2);
  assert.deepEqual(JSON.parse(ch.message.tool_calls[1].function.arguments), { city: 'Lyon' });
  assert.notEqual(ch.message.tool_calls[1].id, ch.message.tool_calls[0].id);
  const call = ch.message.tool_calls[0];
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'get_weather');
  assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris', unit: 'celsius' });
  assert.match(call.id, /^call_/);
  // the client sends the tool result back; the model's own template renders it
  messages.push(ch.message, { role: 'tool', tool_call_id: call.id, content: '{"temp": 18}' },
    { role: 'tool', tool_call_id: ch.message.tool_calls[1].id, content: '{"temp": 21}' });
  const r2 = await oa(real).chat.completions.create({ model: 'm', messages, tools: [WEATHER_OA], max_tokens: 8 });
  assert.ok(r2.usage.prompt_tokens > 0);
  assert.ok(['stop', 'length', 'tool_calls'].includes(r2.choices[0].finish_reason));
  // without tools the same text is plain content
  const plain = await c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(plain.choices[0].message.content, TOOL_TEXT);
  assert.equal(plain.choices[0].finish_reason, 'stop');
  // tool_choice none: no parsing either
  const none = await c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }], tools: [WEATHER_OA], tool_choice: 'none' });
  assert.equal(none.choices[0].message.tool_calls, undefined);
});

test('chat: streamed tool call deltas assemble into the call', async () => {
  const s = await oa(tool).chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'Weather?' }], tools: [WEATHER_OA], stream: true });
  const calls = [];
  let text = '', fin;
  for await (const ch of s) {
    const d = ch.choices[0]?.delta ?? {};
    text += d.content ?? '';
    for (const tc of d.tool_calls ?? []) {
      calls[tc.index] ??= { id: '', name: '', args: '' };
      if (tc.id) calls[tc.index].id = tc.id;
      if (tc.function?.name) calls[tc.index].name += tc.function.name;
      calls[tc.index].args += tc.function?.arguments ?? '';
    }
    fin = ch.choices[0]?.finish_reason ?? fin;
  }
  assert.equal(fin, 'tool_calls');
  assert.equal(text, 'Let me check.');
  assert.equal(calls.length, 2);
  assert.equal(calls[0].name, 'get_weather');
  assert.deepEqual(JSON.parse(calls[0].args), { city: 'Paris', unit: 'celsius' });
  assert.deepEqual(JSON.parse(calls[1].args), { city: 'Lyon' });
});

test('messages: non-streaming text and streaming events agree', async () => {
  const c = an(real);
  const req = { model: 'm', max_tokens: 10, system: 'You are terse.', messages: [{ role: 'user', content: 'Say hello.' }] };
  const m = await c.messages.create(req);
  assert.equal(m.type, 'message');
  assert.equal(m.role, 'assistant');
  assert.ok(['end_turn', 'max_tokens'].includes(m.stop_reason));
  assert.ok(m.usage.output_tokens <= 10);
  const text = m.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
  const types = [];
  const stream = c.messages.stream({ ...req, system: [{ type: 'text', text: 'You are terse.' }] });
  stream.on('streamEvent', (e) => types.push(e.type));
  const fm = await stream.finalMessage();
  assert.equal(fm.content.filter((b) => b.type === 'text').map((b) => b.text).join(''), text);
  assert.equal(fm.stop_reason, m.stop_reason);
  assert.equal(fm.usage.output_tokens, m.usage.output_tokens);
  assert.equal(types[0], 'message_start');
  assert.deepEqual(types.slice(-2), ['message_delta', 'message_stop']);
  // the raw SSE: every event's name equals its data's type, and a ping is among them
  const raw = await fetch(`${real.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...req, stream: true }) });
  assert.equal(raw.headers.get('content-type'), 'text/event-stream');
  const events = (await raw.text()).split('\n\n').filter(Boolean).map((e) => {
    const [ev, data] = e.split('\n');
    const name = ev.replace(/^event: /, '');
    assert.equal(JSON.parse(data.replace(/^data: /, '')).type, name);
    return name;
  });
  assert.ok(events.includes('ping'));
  assert.deepEqual(events.filter((e) => e !== 'ping'), types);
  // count_tokens counts what messages.create was charged
  const ct = await c.messages.countTokens({ model: 'm', system: 'You are terse.', messages: req.messages });
  assert.equal(ct.input_tokens, m.usage.input_tokens + m.usage.cache_read_input_tokens);
});

test('messages: tool_use round trip, non-streaming and streaming', async () => {
  const c = an(tool);
  const messages = [{ role: 'user', content: 'Weather in Paris?' }];
  const m = await c.messages.create({ model: 'm', max_tokens: 200, tools: [WEATHER_AN], messages });
  assert.equal(m.stop_reason, 'tool_use');
  assert.deepEqual(m.content.map((b) => b.type), ['text', 'tool_use', 'tool_use']);
  assert.deepEqual(m.content[2].input, { city: 'Lyon' });
  assert.equal(m.content[0].text, 'Let me check.');
  const use = m.content[1];
  assert.equal(use.name, 'get_weather');
  assert.deepEqual(use.input, { city: 'Paris', unit: 'celsius' });
  assert.match(use.id, /^toolu_/);

  const types = [];
  const s = c.messages.stream({ model: 'm', max_tokens: 200, tools: [WEATHER_AN], messages });
  s.on('streamEvent', (e) => types.push(e.type + (e.delta?.type ? `:${e.delta.type}` : '') + (e.content_block?.type ? `:${e.content_block.type}` : '')));
  const fm = await s.finalMessage();
  assert.equal(fm.stop_reason, 'tool_use');
  assert.deepEqual(fm.content[1].input, { city: 'Paris', unit: 'celsius' });
  const seq = types.filter((t) => !t.startsWith('ping'));
  assert.equal(seq[0], 'message_start');
  assert.equal(seq[1], 'content_block_start:text');
  assert.ok(seq.includes('content_block_start:tool_use'));
  assert.ok(seq.includes('content_block_delta:input_json_delta'));
  assert.deepEqual(seq.slice(-3), ['content_block_stop', 'message_delta', 'message_stop']);

  // tool_result goes back to the model through its template
  messages.push({ role: 'assistant', content: m.content }, {
    role: 'user',
    content: [{ type: 'tool_result', tool_use_id: use.id, content: '18 degrees' },
      { type: 'tool_result', tool_use_id: m.content[2].id, content: [{ type: 'text', text: '21 degrees' }] },
      { type: 'text', text: 'Thanks' }],
  });
  const m2 = await an(real).messages.create({ model: 'm', max_tokens: 8, tools: [WEATHER_AN], messages });
  assert.ok(m2.usage.input_tokens + m2.usage.cache_read_input_tokens > 0);
  // tool_choice any: the server prefills the call opening, the forced text follows
  const any = await c.messages.create({ model: 'm', max_tokens: 5, tools: [WEATHER_AN], tool_choice: { type: 'any' }, messages: [{ role: 'user', content: 'x' }] });
  assert.equal(any.stop_reason, 'max_tokens');
});

test('messages: stop_sequences report which sequence matched', async () => {
  const m = await an(stop).messages.create({ model: 'm', max_tokens: 100, stop_sequences: ['nope', 'is 42'], messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(m.stop_reason, 'stop_sequence');
  assert.equal(m.stop_sequence, 'is 42');
  assert.equal(m.content[0].text, 'Hello world. The answer ');
  const m2 = await an(stop).messages.create({ model: 'm', max_tokens: 3, messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(m2.stop_reason, 'max_tokens');
  assert.equal(m2.usage.output_tokens, 3);
});

test('errors surface as the clients\' typed exceptions', async () => {
  const c = oa(real);
  await assert.rejects(c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }], n: 2 }), OpenAI.BadRequestError);
  await assert.rejects(c.chat.completions.create({ model: 'm', messages: [] }), OpenAI.BadRequestError);
  await assert.rejects(c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }], temperature: 7 }), OpenAI.BadRequestError);
  await assert.rejects(c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_object' } }), OpenAI.BadRequestError);
  await assert.rejects(c.chat.completions.create({ model: 'm', messages: [{ role: 'wizard', content: 'x' }] }), OpenAI.BadRequestError);
  await assert.rejects(c.models.retrieve('no-such-model'), OpenAI.NotFoundError);
  await assert.rejects(
    c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }], logprobs: true }),
    (e) => e instanceof OpenAI.BadRequestError && /logprobs/.test(e.message));
  const a = an(real);
  await assert.rejects(a.messages.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] }), Anthropic.BadRequestError);
  await assert.rejects(a.messages.create({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'image', source: {} }] }] }), Anthropic.BadRequestError);
  await assert.rejects(a.messages.create({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], temperature: 1.5 }), Anthropic.BadRequestError);
  // API key
  await assert.rejects(an(keyed, 'wrong').messages.create({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }), Anthropic.AuthenticationError);
  await assert.rejects(oa(keyed, 'wrong').chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'x' }] }), OpenAI.AuthenticationError);
  const ok = await an(keyed, KEY).messages.create({ model: 'm', max_tokens: 3, messages: [{ role: 'user', content: 'x' }] });
  assert.equal(ok.type, 'message');
  const ok2 = await oa(keyed, KEY).chat.completions.create({ model: 'm', max_tokens: 3, messages: [{ role: 'user', content: 'x' }] });
  assert.equal(ok2.object, 'chat.completion');
});

test('reasoning and Qwen3-Coder XML tool calls', async () => {
  const msgs = [{ role: 'user', content: 'Weather in Paris for 3 days?' }];
  const r = await oa(think).chat.completions.create({ model: 'm', messages: msgs, tools: [WEATHER_OA] });
  const m = r.choices[0].message;
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(m.reasoning_content.trim(), 'The user wants the weather.');
  assert.equal(m.content, null);
  assert.equal(m.tool_calls[0].function.name, 'get_weather');
  // typed by the tool's schema: city is a string, days an integer
  assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), { city: 'Paris', days: 3 });
  // streaming: reasoning deltas, then the call
  const s = await oa(think).chat.completions.create({ model: 'm', messages: msgs, tools: [WEATHER_OA], stream: true });
  let reasoning = '', args = '', content = '';
  for await (const ch of s) {
    const d = ch.choices[0]?.delta ?? {};
    reasoning += d.reasoning_content ?? '';
    content += d.content ?? '';
    for (const tc of d.tool_calls ?? []) args += tc.function?.arguments ?? '';
  }
  assert.equal(reasoning.trim(), 'The user wants the weather.');
  assert.equal(content, '');
  assert.deepEqual(JSON.parse(args), { city: 'Paris', days: 3 });
  // Anthropic: a thinking block, then tool_use, in both forms
  const a = await an(think).messages.create({ model: 'm', max_tokens: 300, tools: [WEATHER_AN], messages: msgs, thinking: { type: 'enabled', budget_tokens: 1024 } });
  assert.deepEqual(a.content.map((b) => b.type), ['thinking', 'tool_use']);
  assert.equal(a.content[0].thinking.trim(), 'The user wants the weather.');
  assert.deepEqual(a.content[1].input, { city: 'Paris', days: 3 });
  assert.equal(a.stop_reason, 'tool_use');
  const fm = await an(think).messages.stream({ model: 'm', max_tokens: 300, tools: [WEATHER_AN], messages: msgs }).finalMessage();
  assert.deepEqual(fm.content.map((b) => b.type), ['thinking', 'tool_use']);
  assert.equal(fm.content[0].thinking, a.content[0].thinking);
  assert.deepEqual(fm.content[1].input, { city: 'Paris', days: 3 });
  // without tools, the call stays text after the reasoning
  const plain = await oa(think).chat.completions.create({ model: 'm', messages: msgs });
  assert.match(plain.choices[0].message.content, /^<tool_call>\n<function=get_weather>/);
});

test('interleaved conversations each keep their own KV cache (LRU of sessions)', async () => {
  const c = oa(real);
  const a = [{ role: 'user', content: 'Conversation A: please list three colours of the rainbow and explain each.' }];
  const b = [{ role: 'user', content: 'Conversation B: describe how a bicycle gear works in a few sentences.' }];
  const ra = await c.chat.completions.create({ model: 'm', messages: a, max_tokens: 6, temperature: 0 });
  const rb = await c.chat.completions.create({ model: 'm', messages: b, max_tokens: 6, temperature: 0 });
  a.push({ role: 'assistant', content: ra.choices[0].message.content }, { role: 'user', content: 'And a fourth?' });
  b.push({ role: 'assistant', content: rb.choices[0].message.content }, { role: 'user', content: 'And brakes?' });
  const ra2 = await c.chat.completions.create({ model: 'm', messages: a, max_tokens: 4, temperature: 0 });
  const rb2 = await c.chat.completions.create({ model: 'm', messages: b, max_tokens: 4, temperature: 0 });
  // each second turn reuses at least its whole first-turn prompt, although the other
  // conversation ran in between
  assert.ok(ra2.usage.prompt_tokens_details.cached_tokens >= ra.usage.prompt_tokens - 1,
    `A: ${ra2.usage.prompt_tokens_details.cached_tokens} cached of ${ra.usage.prompt_tokens}`);
  assert.ok(rb2.usage.prompt_tokens_details.cached_tokens >= rb.usage.prompt_tokens - 1,
    `B: ${rb2.usage.prompt_tokens_details.cached_tokens} cached of ${rb.usage.prompt_tokens}`);
});

test('a short prompt sharing only the system prompt does not take over a long conversation\'s cache', async () => {
  const c = oa(real);
  const a = [{ role: 'user', content: 'Conversation C: write a long explanation of how a hash table handles collisions, '
    + 'with chaining and with open addressing, and compare their memory use and speed in detail.' }];
  const ra = await c.chat.completions.create({ model: 'm', messages: a, max_tokens: 6, temperature: 0 });
  // shares the system prompt and the user-turn header: more than half of its own tokens,
  // but far less than half of conversation C's
  await c.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, temperature: 0 });
  a.push({ role: 'assistant', content: ra.choices[0].message.content }, { role: 'user', content: 'Shorter, please.' });
  const ra2 = await c.chat.completions.create({ model: 'm', messages: a, max_tokens: 2, temperature: 0 });
  assert.ok(ra2.usage.prompt_tokens_details.cached_tokens >= ra.usage.prompt_tokens - 1,
    `C: ${ra2.usage.prompt_tokens_details.cached_tokens} cached of ${ra.usage.prompt_tokens}`);
});

// The official OpenAI Node SDK (pinned in package-lock.json) against `moeflux serve`
// (run.sh starts it with --api-key test-key on the bundled model).
import test from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.MOEFLUX_BASE_URL;
const client = new OpenAI({ apiKey: 'test-key', baseURL, maxRetries: 0 });
const model = 'moeflux-tiny-kjv';
const user = (content) => [{ role: 'user', content }];

const tools = [{
  type: 'function',
  function: {
    name: 'get_verse',
    description: 'Look up a verse',
    parameters: { type: 'object', properties: { book: { type: 'string' }, chapter: { type: 'integer' } } },
  },
}];
const call = '<tool_call>\n{"name": "get_verse", "arguments": {"book": "Genesis", "chapter": 1}}\n</tool_call>';

test('models list the served model', async () => {
  const models = await client.models.list();
  assert.equal(models.data[0].id, model);
});

test('chat completion', async () => {
  const r = await client.chat.completions.create({ model, messages: user('In the beginning'), max_tokens: 10, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('streaming gives the same reply as a plain request', async () => {
  const req = { model, messages: user('And God said'), max_tokens: 12, temperature: 0 };
  const plain = await client.chat.completions.create(req);
  const stream = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, plain.choices[0].message.content);
  assert.equal(finish, plain.choices[0].finish_reason);
  assert.equal(usage.completion_tokens, plain.usage.completion_tokens);
});

test('completions', async () => {
  const r = await client.completions.create({ model, prompt: 'The LORD is my shepherd', max_tokens: 8, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(typeof r.choices[0].text, 'string');
});

test('tools round trip: a tool call comes back as tool_calls and its result goes back in', async () => {
  // The reply continues an assistant message that holds a tool call (the bundled model does
  // not write tool calls by itself); the server parses it into tool_calls.
  const messages = [...user('Read me Genesis 1'), { role: 'assistant', content: call }];
  const r = await client.chat.completions.create({
    model, messages, tools, max_tokens: 1, temperature: 0, continue_final_message: true,
  });
  const msg = r.choices[0].message;
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(msg.tool_calls.length, 1);
  assert.equal(msg.tool_calls[0].type, 'function');
  assert.equal(msg.tool_calls[0].function.name, 'get_verse');
  assert.deepEqual(JSON.parse(msg.tool_calls[0].function.arguments), { book: 'Genesis', chapter: 1 });

  const next = await client.chat.completions.create({
    model, tools, max_tokens: 6, temperature: 0,
    messages: [...user('Read me Genesis 1'), msg,
      { role: 'tool', tool_call_id: msg.tool_calls[0].id, content: 'In the beginning God created the heaven and the earth.' }],
  });
  assert.equal(typeof next.choices[0].message.content, 'string');
});

test('tool calls stream as deltas', async () => {
  const stream = await client.chat.completions.create({
    model, tools, max_tokens: 1, temperature: 0, stream: true, continue_final_message: true,
    messages: [...user('Read me Genesis 1'), { role: 'assistant', content: call }],
  });
  const calls = [];
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      for (const t of c.delta.tool_calls ?? []) calls.push(t);
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(finish, 'tool_calls');
  assert.equal(calls.length, 1);
  assert.equal(calls[0].index, 0);
  assert.equal(calls[0].function.name, 'get_verse');
  assert.ok(calls[0].id.length > 0);
});

test('tool call arguments stream in fragments that make the arguments', async () => {
  // A call in the Qwen3.5 syntax whose reply ends inside it: its name and first parameter go
  // out with the continued message, the closing brace when the reply ends.
  const partial = '<tool_call>\n<function=get_verse>\n<parameter=book>\nGenesis\n</parameter>\n';
  const req = {
    model, tools, max_tokens: 2, temperature: 0, continue_final_message: true,
    messages: [...user('Read me Genesis'), { role: 'assistant', content: partial }],
  };
  const plain = await client.chat.completions.create(req);
  const whole = plain.choices[0].message.tool_calls;
  assert.equal(whole.length, 1);
  assert.deepEqual(JSON.parse(whole[0].function.arguments), { book: 'Genesis' });
  const stream = await client.chat.completions.create({ ...req, stream: true });
  const pieces = [];
  for await (const chunk of stream)
    for (const c of chunk.choices) pieces.push(...(c.delta.tool_calls ?? []));
  assert.ok(pieces.length >= 2, `${pieces.length} pieces`);
  assert.equal(pieces[0].function.name, 'get_verse');
  assert.ok(pieces[0].id.length > 0);
  assert.ok(pieces.slice(1).every((p) => p.index === 0 && p.id === undefined));
  assert.equal(pieces.map((p) => p.function.arguments).join(''), whole[0].function.arguments);
});

test('errors surface as the SDK typed errors', async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages: user('x'), max_tokens: 1 << 30 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'max_tokens');
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: 'wizard', content: 'x' }] }),
    (e) => e instanceof OpenAI.BadRequestError && /role/.test(e.message));
  await assert.rejects(client.models.retrieve('no-such-model'),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
  const stranger = new OpenAI({ apiKey: 'wrong', baseURL, maxRetries: 0 });
  await assert.rejects(stranger.models.list(),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
});

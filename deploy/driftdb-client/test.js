// The npm DriftDB client 1.0.12, unmodified, against a local three-node
// raftmesh cluster: A on node 1 and B on node 3 (CBOR) in one room see the
// same seqs and values; replace, relay and compact; an HTTP send through
// node 2 reaches both; node 3 is killed and B continues on node 2, getting
// everything pushed meanwhile with no gap. Every wait is bounded.
//
// Env: HTTP_PORTS=p1,p2,p3 and NODE3_PID (the pid to kill).
'use strict';

globalThis.WebSocket = require('ws');
const { Api, DbConnection, HttpConnection } = require('driftdb');
const assert = require('assert');

// The client reconnects to a killed node every second and rejects each
// attempt's promise unhandled; those are expected here, not failures.
process.on('unhandledRejection', () => {});
// The client logs each reconnect attempt; keep the output to the checks.
console.log = () => {};
const say = (m) => process.stdout.write(`${m}\n`);

const [p1, p2, p3] = process.env.HTTP_PORTS.split(',');
const base = (p) => `http://127.0.0.1:${p}/`;

async function until(what, ok, ms = 15000) {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// A key's values as a client sees them: the subscription's `init` and the
// live pushes can overlap (a push applied while the get was answered comes
// both ways), so values are kept once per seq, in seq order.
function watch(db, key) {
  const seen = [];
  db.subscribe(key, (v) => {
    if (seen.some((x) => x.seq === v.seq)) return;
    seen.push(v);
    seen.sort((a, b) => a.seq - b.seq);
  });
  return seen;
}

const push = (db, key, value, type, extra = {}) =>
  db.send({ type: 'push', key, value, action: { type, ...extra } });

async function main() {
  const room = await new Api(base(p1)).newRoom();
  assert.ok(room.room && room.room.length >= 24, JSON.stringify(room));
  assert.ok(room.socket_url.startsWith(`ws://127.0.0.1:${p1}/room/`), room.socket_url);
  const on3 = await new Api(base(p3)).getRoom(room.room);
  assert.strictEqual(on3.room, room.room);
  assert.ok(on3.socket_url.includes(`:${p3}/`), on3.socket_url);
  say('ok   - Api.newRoom on node 1, Api.getRoom on node 3');

  const a = new DbConnection();
  await a.connect(room.socket_url);
  const b = new DbConnection();
  await b.connect(on3.socket_url, true);
  const seenA = watch(a, 'k');
  const seenB = watch(b, 'k');
  for (let i = 0; i < 10; i++) push(i % 2 ? b : a, 'k', { n: i }, 'append');
  await until('10 pushes on both', () => seenA.length >= 10 && seenB.length >= 10);
  const seqs = (s) => s.map((v) => v.seq);
  assert.deepStrictEqual(seqs(seenA), seqs(seenB));
  assert.deepStrictEqual(seenA.map((v) => v.value), seenB.map((v) => v.value));
  assert.deepStrictEqual(seqs(seenA), [...seqs(seenA)].sort((x, y) => x - y));
  say('ok   - A on node 1 and B on node 3 (CBOR) see the same seqs and values');

  const cursorA = watch(a, 'cursor');
  const cursorB = watch(b, 'cursor');
  push(b, 'cursor', [1, 2], 'relay');
  await until('a relay on both', () => cursorA.length === 1 && cursorB.length === 1);
  assert.deepStrictEqual(cursorA[0].value, [1, 2]);
  push(a, 'k', { reset: 'all' }, 'replace');
  await until('a replace on both', () => seenA.length >= 11 && seenB.length >= 11);
  const last = seenA[seenA.length - 1];
  assert.deepStrictEqual(last.value, { reset: 'all' });
  push(a, 'k', { n: 'after' }, 'append');
  await until('an append after the replace', () => seenB.length >= 12);
  push(a, 'k', { compacted: true }, 'compact', { seq: last.seq });
  // compact is not delivered; a fresh subscriber sees the compacted stream.
  const c = new DbConnection();
  await c.connect(room.socket_url);
  const seenC = watch(c, 'k');
  await until('the compacted stream', () => seenC.length >= 2);
  assert.deepStrictEqual(seenC[0], { value: { compacted: true }, seq: last.seq });
  assert.deepStrictEqual(seenC[1].value, { n: 'after' });
  c.disconnect();
  say('ok   - relay, replace and compact as the spec says');

  const on2 = await new Api(base(p2)).getRoom(room.room);
  const http = new HttpConnection(on2.http_url);
  const answer = await http.send({ type: 'push', key: 'k', value: 'via-http', action: { type: 'append' } });
  assert.deepStrictEqual(answer, { type: 'stream_size', key: 'k', size: 3 });
  await until('the HTTP push on both sockets', () =>
    seenA.some((v) => v.value === 'via-http') && seenB.some((v) => v.value === 'via-http'));
  const got = await http.send({ type: 'get', key: 'k', seq: 0 });
  assert.strictEqual(got.type, 'init');
  assert.strictEqual(got.data.length, 3);
  say('ok   - HttpConnection through node 2 reaches sockets on nodes 1 and 3');

  // Node 3 dies; B's client keeps retrying node 3, so the application
  // moves it to node 2 and resyncs with get (subscribe sends seq 0).
  let bUp = true;
  b.statusListener.addListener((s) => { bUp = s.connected; });
  process.kill(Number(process.env.NODE3_PID), 'SIGKILL');
  await until('B to notice node 3 is gone', () => !bUp);
  for (let i = 0; i < 5; i++) push(a, 'k', { during: i }, 'append');
  await until('A to see the pushes made while B was away', () =>
    seenA.filter((v) => v.value && v.value.during !== undefined).length === 5);
  b.disconnect();
  const b2 = new DbConnection();
  await b2.connect(on2.socket_url, true);
  const resynced = watch(b2, 'k');
  await until('B resynced on node 2', () => resynced.length >= 8);
  // The stream now: the compacted value at the replace's seq, the append
  // after it, the HTTP push and the 5 made while B was away.
  assert.strictEqual(resynced.length, 8, JSON.stringify(resynced));
  const tail = seenA.slice(seenA.findIndex((v) => v.seq === last.seq));
  // A saw the replace, then every later push; B's resync holds the compacted
  // value at that seq and then exactly A's later ones: no gap.
  assert.deepStrictEqual(resynced.slice(1).map((v) => v.seq), tail.slice(1).map((v) => v.seq));
  push(a, 'k', 'live-again', 'append');
  await until('B live on node 2', () => resynced.some((v) => v.value === 'live-again'));
  say('ok   - node 3 killed: B continues on node 2 with no gap');
  a.disconnect();
  b2.disconnect();
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stdout.write(`FAIL - ${e && e.stack ? e.stack : e}\n`);
    process.exit(1);
  },
);

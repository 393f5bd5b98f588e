// Real work for Node 20 under the jail's seccomp policy and Landlock rules:
// files in /tmp, crypto, zlib, a worker thread, child processes, timers.
// Prints "node ok" only when every step gave the expected answer.
const fs = require('fs'), os = require('os'), path = require('path');
const cp = require('child_process'), crypto = require('crypto'), zlib = require('zlib');
const { Worker } = require('worker_threads');
const assert = require('assert');

const d = fs.mkdtempSync(path.join(os.tmpdir(), 'x'));
fs.writeFileSync(d + '/a', 'hi');
assert.strictEqual(fs.readFileSync(d + '/a', 'utf8'), 'hi');
fs.renameSync(d + '/a', d + '/b');
assert.deepStrictEqual(fs.readdirSync(d), ['b']);
fs.rmSync(d, { recursive: true });
assert.strictEqual(crypto.createHash('sha256').update('x').digest('hex').length, 64);
assert.strictEqual(zlib.gunzipSync(zlib.gzipSync('abc')).toString(), 'abc');
assert.strictEqual(cp.spawnSync('/bin/sh', ['-c', 'echo hi']).stdout.toString(), 'hi\n');
assert.ok(process.memoryUsage().rss > 0); // reads /proc/self
assert.ok(os.totalmem() > 0 && os.loadavg().length === 3);

const steps = [];
const w = new Worker('require("worker_threads").parentPort.postMessage(41 + 1)', { eval: true });
w.on('message', (m) => { steps.push('worker ' + m); w.terminate(); });
cp.execFile('/bin/echo', ['child'], (err, out) => { assert.ifError(err); steps.push(out.trim()); });
setTimeout(() => steps.push('timer'), 5);
process.on('exit', () => {
  assert.deepStrictEqual(steps.sort(), ['child', 'timer', 'worker 42']);
  console.log('node ok');
});

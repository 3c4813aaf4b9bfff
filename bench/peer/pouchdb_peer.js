// The PouchDB side of bench/peer_pouchdb_bench.py, run with node.
//
//   node pouchdb_peer.js <module dir> fill <db url> <jsonl file> <batch>
//     bulkDocs every line of the file (one product document a line) into the server's database,
//     `batch` documents a request; prints {"filled": n, "doc_count": n}.
//   node pouchdb_peer.js <module dir> replicate <db url> <local dir> [<batch_size> <batches_limit>]
//     a fresh PouchDB (node, leveldb adapter) in <local dir> replicates from the server's database
//     until complete; prints {"seconds": s, "docs_written": n, "doc_count": n, "adapter": ...}.
//     The clock covers PouchDB.replicate() from its call until it resolves (not node's start,
//     not opening the empty local database). Without batch settings PouchDB's defaults apply.
//   node pouchdb_peer.js <module dir> push <db url> <local dir> <jsonl file> [<batch_size> <batches_limit>]
//     a fresh PouchDB in <local dir> is filled with every line of the file (bulkDocs of 1,000; not
//     timed), then replicates to the server's (empty) database until complete; prints
//     {"seconds": s, "docs_written": n, "remote_doc_count": n, ...}. The clock covers
//     PouchDB.replicate(local, remote) only.
// Exits 1 with {"error": message} on any failure.
const fs = require("fs");
const path = require("path");
const readline = require("readline");

const [moduleDir, command, ...args] = process.argv.slice(2);
const PouchDB = require(path.join(moduleDir, "node_modules", "pouchdb"));
const say = (event) => process.stdout.write(JSON.stringify(event) + "\n");

async function fill(url, file, batch) {
  const remote = new PouchDB(url);
  let docs = [];
  let filled = 0;
  const flush = async () => {
    const answers = await remote.bulkDocs(docs);
    const failed = answers.filter((a) => a.error);
    if (failed.length) throw new Error(`bulkDocs refused ${failed.length} documents: ${JSON.stringify(failed[0])}`);
    filled += docs.length;
    docs = [];
  };
  const lines = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line) continue;
    docs.push(JSON.parse(line));
    if (docs.length >= batch) await flush();
  }
  if (docs.length) await flush();
  const info = await remote.info();
  say({ filled, doc_count: info.doc_count });
}

async function replicate(url, dir, batchSize, batchesLimit) {
  const local = new PouchDB(dir);
  const remote = new PouchDB(url);
  const before = await local.info();   // opens the store before the clock starts
  if (before.doc_count !== 0) throw new Error(`local database is not empty: ${before.doc_count} documents`);
  const options = {};
  if (batchSize) options.batch_size = Number(batchSize);
  if (batchesLimit) options.batches_limit = Number(batchesLimit);
  const started = process.hrtime.bigint();
  const result = await PouchDB.replicate(remote, local, options);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const info = await local.info();
  if (!result.ok) throw new Error(`replication did not complete: ${JSON.stringify(result.errors)}`);
  say({ seconds, docs_written: result.docs_written, doc_count: info.doc_count, adapter: local.adapter,
        batch_size: options.batch_size || null, batches_limit: options.batches_limit || null });
  await local.close();
}

async function push(url, dir, file, batchSize, batchesLimit) {
  const local = new PouchDB(dir);
  const remote = new PouchDB(url);
  let docs = [];
  const flush = async () => {
    const answers = await local.bulkDocs(docs);
    const failed = answers.filter((a) => a.error);
    if (failed.length) throw new Error(`local bulkDocs refused ${failed.length} documents`);
    docs = [];
  };
  const lines = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line) continue;
    docs.push(JSON.parse(line));
    if (docs.length >= 1000) await flush();
  }
  if (docs.length) await flush();
  const before = await remote.info();   // creates the remote database before the clock starts
  if (before.doc_count !== 0) throw new Error(`remote database is not empty: ${before.doc_count} documents`);
  const options = {};
  if (batchSize) options.batch_size = Number(batchSize);
  if (batchesLimit) options.batches_limit = Number(batchesLimit);
  const started = process.hrtime.bigint();
  const result = await PouchDB.replicate(local, remote, options);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (!result.ok) throw new Error(`replication did not complete: ${JSON.stringify(result.errors)}`);
  const info = await remote.info();
  say({ seconds, docs_written: result.docs_written, remote_doc_count: info.doc_count,
        batch_size: options.batch_size || null, batches_limit: options.batches_limit || null });
  await local.close();
}

(async () => {
  if (command === "fill") await fill(args[0], args[1], Number(args[2]));
  else if (command === "replicate") await replicate(args[0], args[1], args[2], args[3]);
  else if (command === "push") await push(args[0], args[1], args[2], args[3], args[4]);
  else throw new Error(`unknown command ${command}`);
})().catch((error) => {
  say({ error: String(error && error.stack || error) });
  process.exit(1);
});

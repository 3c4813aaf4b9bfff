// Upload a file with tus-js-client (node), as a stock client would.
// argv: <module dir> <endpoint> <file> <token> <chunk size> [<upload url to resume>]
// Prints one JSON line per event: {"url": ...} when the upload URL is known, then
// {"progress": [sent, total]}..., and {"done": url} or {"error": message}; exits 0 or 1.
const path = require("path");
const fs = require("fs");
const [moduleDir, endpoint, file, token, chunkSize, uploadUrl] = process.argv.slice(2);
const tus = require(path.join(moduleDir, "node_modules", "tus-js-client"));

const say = (event) => process.stdout.write(JSON.stringify(event) + "\n");
const upload = new tus.Upload(fs.readFileSync(file), {
  endpoint,
  uploadUrl: uploadUrl || null,
  chunkSize: Number(chunkSize),
  headers: { Authorization: `Bearer ${token}` },
  metadata: { filename: path.basename(file), purpose: "file" },
  retryDelays: [],                 // a cut ends this run: the next run resumes from the URL
  storeFingerprintForResuming: false,
  onUploadUrlAvailable: () => say({ url: upload.url }),
  onProgress: (sent, total) => say({ progress: [sent, total] }),
  onError: (error) => { say({ error: String(error) }); process.exit(1); },
  onSuccess: () => { say({ done: upload.url }); process.exit(0); },
});
upload.start();

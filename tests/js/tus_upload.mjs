// Upload a file with tus-js-client under Node, the way a browser page would.
// usage: node tus_upload.mjs ENDPOINT TOKEN FILE METADATA_JSON CHUNK_SIZE
// Prints {"url": ..., "creationOffset": ...} on success; exits 1 with the error otherwise.
import { readFileSync } from "node:fs";
import * as tus from "tus-js-client";

const [endpoint, token, file, metadata, chunkSize] = process.argv.slice(2);
const data = readFileSync(file);
let creationOffset = null;
const upload = new tus.Upload(data, {
  endpoint,
  headers: { Authorization: `Bearer ${token}` },
  metadata: JSON.parse(metadata),
  uploadDataDuringCreation: true,
  chunkSize: Number(chunkSize),
  retryDelays: [],
  onAfterResponse(req, res) {
    if (req.getMethod() === "POST") creationOffset = res.getHeader("Upload-Offset");
  },
  onError(error) {
    console.error(String(error));
    process.exit(1);
  },
  onSuccess() {
    console.log(JSON.stringify({ url: upload.url, creationOffset }));
  },
});
upload.start();

// Encode texts with @lenml/tokenizers (transformers.js tokenizers) from a tokenizer.json +
// tokenizer_config.json directory: the outside reference for the demo model's token ids.
//   node scripts/demo/encode.mjs MODEL_DIR < texts.json   (JSON list of strings)
// Prints a JSON list of {"text", "ids", "decoded"}.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "..", "tests", "js", "package.json"));
const { TokenizerLoader } = require("@lenml/tokenizers");

const dir = process.argv[2];
const tokenizerJSON = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
const texts = JSON.parse(fs.readFileSync(0, "utf8"));
const out = texts.map((text) => {
  const ids = tok.encode(text, { add_special_tokens: false });
  return { text, ids, decoded: tok.decode(ids, { skip_special_tokens: false }) };
});
process.stdout.write(JSON.stringify(out) + "\n");

// tokenizer.test.mjs: flash-moe's tokenizer against the outside reference (transformers.js
// tokenizers via @lenml/tokenizers 3.7.2) on the real Qwen3, DeepSeek-V3 and Llama-2
// tokenizer files: ids for every corpus case with add_special_tokens=false, our decode of
// the reference ids against the reference decode, and round trips where the reference has
// them. One node:test per check, so tests/run.sh counts them. Needs $FM_BIN.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { TOKENIZERS, CASES, caseText, VARIANTS, VARIANT_CASES } from "./tokenizer_ref.mjs";
import { TokenizerLoader } from "@lenml/tokenizers";
import { mkdirSync } from "node:fs";

const BIN = process.env.FM_BIN || new URL("../../build/flash-moe", import.meta.url).pathname;
const tmp = mkdtempSync(join(tmpdir(), "fm-tok-"));
process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));

// Known differences between the reference and HF tokenizers (documented, not hidden).
// U+FEFF after a space: JavaScript's \s includes U+FEFF, Oniguruma's (HF) and PCRE2's
// do not (it is not White_Space), so in " \uFEFFx" the reference splits " " from the
// BOM where HF and we keep " \uFEFF" together in ` ?[^\s\p{L}\p{N}]+`.
// U+0085 (NEL): JavaScript's \s excludes it; Oniguruma's \s (HF; its RE document lists
// U+0085 under \s) and PCRE2's include it, so " \u0085" splits differently.
// These cases are listed (not run) so the count of checks stays honest.
const FEFF = "JS \\s includes U+FEFF; HF (Oniguruma) and PCRE2 do not";
const NEL = "JS \\s excludes U+0085; HF (Oniguruma) and PCRE2 include it";
const KNOWN_REFERENCE_DIFFS = {
  "qwen3/bom_after_space": FEFF,
  "deepseek_v3/bom_after_space": FEFF,
  "qwen3/nel": NEL,
};

function ours(dir, text) {
  const f = join(tmp, "in.txt");
  writeFileSync(f, text);
  const out = execFileSync(BIN, ["tokenize", dir, "--text-file", f], { encoding: "utf8", maxBuffer: 1 << 28 });
  return JSON.parse(out);
}
const decoded = new Map(); // the same ids are decoded once
function oursDecode(dir, ids) {
  const key = dir + ":" + ids.join(",");
  if (!decoded.has(key)) {
    const f = join(tmp, "ids.txt");
    writeFileSync(f, ids.join(","));
    decoded.set(key, execFileSync(BIN, ["detokenize", dir, "--ids-file", f], { encoding: "utf8", maxBuffer: 1 << 28 }));
  }
  return decoded.get(key);
}

// A large mixed text: this repository's tokenizer sources plus the corpus, ~300 KB.
function bigText() {
  const root = new URL("../../", import.meta.url).pathname;
  let s = "";
  for (const f of ["src/tokenizer.c", "tests/test_tokenizer.c", "tests/js/tokenizer_ref.mjs"]) {
    try { s += readFileSync(join(root, f), "utf8"); } catch { /* optional */ }
  }
  for (let r = 0; r < 10; r++) for (const k of Object.keys(CASES)) s += caseText("qwen3", k) + (r % 2 ? "\n" : " ");
  return s.replaceAll("\ufeff", "").replaceAll("\u0085", "");  // see KNOWN_REFERENCE_DIFFS
}

for (const [name, spec] of Object.entries(TOKENIZERS)) {
  const ref = spec.load();
  const dir = spec.dir();
  for (const caseName of [...Object.keys(CASES), "big_mixed"]) {
    const text = caseName === "big_mixed" ? bigText() : caseText(name, caseName);
    const expected = ref.encode(text, { add_special_tokens: false });
    const key = `${name}/${caseName}`;
    const skip = KNOWN_REFERENCE_DIFFS[key];
    if (skip) {
      console.log(`not compared: ${key}: known reference difference: ${skip}`);
      continue;
    }
    let got = null;
    test(`encode ${key}`, () => {
      got = ours(dir, text);
      assert.deepEqual(got, expected);
    });
    const refText = expected.length ? ref.decode(expected, { skip_special_tokens: false }) : "";
    test(`decode ${key}`, () => {
      assert.equal(oursDecode(dir, expected), refText);
    });
    if (refText === text && text.length > 0) {
      test(`round trip ${key}`, () => {
        assert.equal(oursDecode(dir, got ?? ours(dir, text)), text);
      });
    }
  }
}

// BOS/EOS: `tokenize --add-special` against the reference's add_special_tokens=true.
// DeepSeek-V3 is not compared: its tokenizer.json post_processor adds nothing, but its
// tokenizer_config.json says LlamaTokenizerFast with add_bos_token=true, and Python
// transformers' LlamaTokenizerFast rebuilds the post-processor from that flag (BOS added);
// we follow transformers, transformers.js keeps the tokenizer.json post_processor.
for (const [name, spec] of Object.entries(TOKENIZERS)) {
  if (name === "deepseek_v3") {
    console.log("not compared: add_special deepseek_v3: transformers adds BOS from add_bos_token, transformers.js does not");
    continue;
  }
  const ref = spec.load();
  const text = CASES.english;
  test(`add_special ${name}`, () => {
    const f = join(tmp, "in_special.txt");
    writeFileSync(f, text);
    const got = JSON.parse(execFileSync(BIN, ["tokenize", spec.dir(), "--text-file", f, "--add-special"], { encoding: "utf8" }));
    assert.deepEqual(got, ref.encode(text, { add_special_tokens: true }));
  });
}

// Variants: encode every variant case (and the corpus) and compare ids. Decoding is not
// compared for the Metaspace variant: transformers.js strips only one leading space from
// the first token where HF's Metaspace decoder drops every "\u2581" of the first token.
for (const [vname, make] of Object.entries(VARIANTS)) {
  const { json, config } = make();
  const ref = TokenizerLoader.fromPreTrained({ tokenizerJSON: json, tokenizerConfig: config });
  const dir = join(tmp, vname);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(json));
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(config));
  const texts = { ...VARIANT_CASES };
  for (const k of ["english", "contractions", "python", "digits", "space_runs", "leading_spaces", "crlf",
                   "cjk", "emoji_zwj", "nfc_needed", "empty"])
    texts[k] = CASES[k];
  for (const [cname, text] of Object.entries(texts)) {
    const expected = ref.encode(text, { add_special_tokens: false });
    test(`encode ${vname}/${cname}`, () => {
      assert.deepEqual(ours(dir, text), expected);
    });
  }
}

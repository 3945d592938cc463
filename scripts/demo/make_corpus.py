#!/usr/bin/python3
"""Build the demo model's training corpus from Python sources installed on this machine.

  /usr/bin/python3 scripts/demo/make_corpus.py [--out tmp/demo-data]

Sources: the CPython 3.11 standard library (PSF-2.0) and permissively licensed packages in
/usr/lib/python3/dist-packages; each package's license is read from its installed metadata
(License: field and "License ::" classifiers) and recorded. Files are filtered (UTF-8, 200 B to
150 kB, no generated data tables), deduplicated (exact content and whitespace-normalised
content), and split deterministically by content hash: ~2% validation, the rest training.
Writes <out>/train.jsonl and <out>/val.jsonl (one {"text", "path"} per line) and
models/demo/training/manifest.json (package, version, license, files, bytes).
"""
import argparse
import glob
import hashlib
import json
import os
import re

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DIST = "/usr/lib/python3/dist-packages"
STDLIB = "/usr/lib/python3.11"

# (package dir(s), metadata dir glob)
PACKAGES = [
    (["jinja2"], "Jinja2-*-info"),
    (["markupsafe"], "MarkupSafe-*-info"),
    (["click"], "click-*-info"),
    (["attr", "attrs"], "attrs-*-info"),
    (["charset_normalizer"], "charset_normalizer-*-info"),
    (["colorama"], "colorama-*-info"),
    (["dateutil"], "python_dateutil-*-info"),
    (["distro"], "distro-*-info"),
    (["yaml"], "PyYAML-*-info"),
    (["blinker"], "blinker-*-info"),
    (["babel"], "Babel-*-info"),
    (["httplib2"], "httplib2-*-info"),
    (["jwt"], "PyJWT-*-info"),
    (["oauthlib"], "oauthlib-*-info"),
    (["cryptography"], "cryptography-*-info"),
    (["astunparse"], "astunparse-*-info"),
    (["numpy"], "numpy-*-info"),
    (["mpmath"], "mpmath-*-info"),
]
PERMISSIVE = ("BSD", "MIT", "Apache", "PSF", "Python Software Foundation")
SKIP_DIRS = ("/site-packages/", "/dist-packages/", "/idlelib/", "/lib2to3/tests/data/", "/__pycache__/")


def read_metadata(pattern):
    ds = sorted(glob.glob(os.path.join(DIST, pattern)))
    if not ds:
        return None
    d = ds[0]
    for fn in ("METADATA", "PKG-INFO"):
        p = os.path.join(d, fn)
        if os.path.exists(p):
            txt = open(p, encoding="utf-8", errors="replace").read()
            head = txt.split("\n\n")[0]
            meta = {"metadata": os.path.basename(d)}
            for line in head.splitlines():
                if line.startswith("Name:"):
                    meta["name"] = line[5:].strip()
                elif line.startswith("Version:"):
                    meta["version"] = line[8:].strip()
                elif line.startswith("License:"):
                    meta["license"] = line[8:].strip()
                elif line.startswith("Classifier: License ::"):
                    meta.setdefault("classifiers", []).append(line[len("Classifier: "):].strip())
            return meta
    return None


def is_permissive(meta):
    text = " ".join([meta.get("license", "")] + meta.get("classifiers", []))
    return any(k in text for k in PERMISSIVE) and "GPL" not in text and "MPL" not in text


def good_text(t):
    if not (200 <= len(t) <= 150_000):
        return False
    lines = t.splitlines()
    if not lines or max(len(x) for x in lines) > 1000:
        return False
    if sum(len(x) for x in lines) / len(lines) > 100:
        return False
    # generated tables: mostly numbers / string literals
    digits = sum(c.isdigit() for c in t)
    if digits / len(t) > 0.25:
        return False
    non_ascii = sum(ord(c) > 127 for c in t)
    return non_ascii / len(t) < 0.05


def norm_key(t):
    return hashlib.sha1(re.sub(r"\s+", " ", t).strip().encode()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tmp", "demo-data"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    sources = [("cpython-stdlib", [STDLIB], {"name": "CPython standard library", "version": "3.11",
                                            "license": "PSF-2.0 (/usr/lib/python3.11/LICENSE.txt)"})]
    for dirs, pat in PACKAGES:
        meta = read_metadata(pat)
        if meta is None or not is_permissive(meta):
            print("skip", dirs, meta)
            continue
        sources.append((meta.get("name", dirs[0]), [os.path.join(DIST, d) for d in dirs], meta))
    seen_exact, seen_norm = set(), set()
    manifest = []
    n_dup = 0
    with open(os.path.join(a.out, "train.jsonl"), "w") as ftr, open(os.path.join(a.out, "val.jsonl"), "w") as fva:
        for name, dirs, meta in sources:
            files = []
            for d in dirs:
                files += sorted(glob.glob(os.path.join(d, "**", "*.py"), recursive=True))
            nf = nb = nv = 0
            for p in files:
                rel = "/" + os.path.relpath(p, os.path.dirname(dirs[0])) if name != "cpython-stdlib" else p
                if any(s in rel for s in SKIP_DIRS):
                    continue
                try:
                    t = open(p, encoding="utf-8").read()
                except (UnicodeDecodeError, OSError):
                    continue
                t = t.replace("\r\n", "\n").strip("\n") + "\n"
                if not good_text(t):
                    continue
                h = hashlib.sha1(t.encode()).hexdigest()
                k = norm_key(t)
                if h in seen_exact or k in seen_norm:
                    n_dup += 1
                    continue
                seen_exact.add(h)
                seen_norm.add(k)
                rec = json.dumps({"text": t, "path": p}) + "\n"
                if int(h[:8], 16) % 100 < 2:
                    fva.write(rec)
                    nv += 1
                else:
                    ftr.write(rec)
                nf += 1
                nb += len(t.encode())
            entry = dict(meta)
            entry.update({"source": name, "paths": dirs, "files": nf, "bytes": nb, "val_files": nv})
            manifest.append(entry)
            print("%-28s %-40s files %5d  %9d bytes" % (name, entry.get("license", "")[:40], nf, nb))
    out = {"python": "/usr/bin/python3 scripts/demo/make_corpus.py", "duplicates_dropped": n_dup,
           "split": "validation = files whose sha1(content) mod 100 < 2", "sources": manifest,
           "total_files": sum(m["files"] for m in manifest), "total_bytes": sum(m["bytes"] for m in manifest)}
    os.makedirs(os.path.join(ROOT, "models", "demo", "training"), exist_ok=True)
    with open(os.path.join(ROOT, "models", "demo", "training", "manifest.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("total", out["total_files"], "files", out["total_bytes"], "bytes; duplicates dropped", n_dup)


if __name__ == "__main__":
    main()

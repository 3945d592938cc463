#!/usr/bin/env python3
"""Build the demo model's training corpus from the Python sources installed on this machine.

  python3 scripts/demo/make_corpus.py --out DIR [--manifest FILE] [--cap-mb 40]

Sources: the running interpreter's standard library (PSF-2.0) and every distribution in its
site-packages (sysconfig "purelib"/"platlib") whose installed metadata names a permissive
license (License-Expression, License, or "License ::" classifiers: MIT, BSD, Apache, PSF,
ISC, Zlib, Unlicense, HPND) and none of GPL/LGPL/AGPL/MPL/EPL/proprietary. A distribution's
files are the *.py entries of its RECORD. Files are filtered (UTF-8, 200 B to 150 kB, no
minified or generated tables), deduplicated (exact and whitespace-normalised content), at most
--cap-mb per distribution (in RECORD order), and split deterministically by content hash:
files whose sha1 mod 100 is 0 form the validation split.
Writes DIR/train.jsonl and DIR/val.jsonl ({"text", "path"} per line) and the manifest
(distribution, version, license, files, bytes) to --manifest (default DIR/manifest.json).
"""
import argparse
import csv
import email.parser
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig

PERMISSIVE = ("MIT", "BSD", "Apache", "PSF", "Python Software Foundation", "ISC", "Zlib",
              "Unlicense", "HPND", "Historical Permission")
REFUSE = ("GPL", "MPL", "Mozilla", "EPL", "Eclipse", "Proprietary", "proprietary", "Commercial",
          "NVIDIA", "CC-BY-NC", "Other/")
SKIP_PARTS = ("/__pycache__/", "/idlelib/", "/lib2to3/tests/data/", "/site-packages/", "/dist-packages/",
              "/test/data/", "/tests/data/")


def license_of(meta):
    """The license text used for the decision: License-Expression, else the first line of
    License, plus every license classifier."""
    parts = []
    if meta.get("License-Expression"):
        parts.append(meta["License-Expression"])
    elif meta.get("License"):
        parts.append(meta["License"].strip().splitlines()[0][:200] if meta["License"].strip() else "")
    parts += [c for c in meta.get_all("Classifier", []) if c.startswith("License ::")]
    return " | ".join(p for p in parts if p)


def is_permissive(lic):
    return any(k in lic for k in PERMISSIVE) and not any(k in lic for k in REFUSE)


def good_text(t):
    if not (200 <= len(t) <= 150_000):
        return False
    lines = t.splitlines()
    if not lines or max(len(x) for x in lines) > 1000:
        return False
    if sum(len(x) for x in lines) / len(lines) > 100:
        return False
    if sum(c.isdigit() for c in t) / len(t) > 0.25:  # generated tables
        return False
    return sum(ord(c) > 127 for c in t) / len(t) < 0.05


def norm_key(t):
    return hashlib.sha1(re.sub(r"\s+", " ", t).strip().encode()).hexdigest()


def distributions(site):
    """(name, version, license, [absolute .py paths]) for each *.dist-info in site."""
    out = []
    for d in sorted(glob.glob(os.path.join(site, "*.dist-info"))):
        try:
            with open(os.path.join(d, "METADATA"), encoding="utf-8", errors="replace") as f:
                meta = email.parser.Parser().parse(f, headersonly=True)
            with open(os.path.join(d, "RECORD"), encoding="utf-8", errors="replace") as f:
                rows = [r[0] for r in csv.reader(f) if r]
        except OSError:
            continue
        files = [os.path.normpath(os.path.join(site, r)) for r in rows if r.endswith(".py")]
        out.append((meta.get("Name", os.path.basename(d)), meta.get("Version", "?"), license_of(meta), files))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--manifest")
    ap.add_argument("--cap-mb", type=float, default=40.0)
    ap.add_argument("--site", action="append", help="site-packages folder(s) to read instead of the interpreter's")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    paths = sysconfig.get_paths()
    stdlib = paths["stdlib"]
    sites = a.site or sorted({paths["purelib"], paths["platlib"]})
    std_files = sorted(p for p in glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)
                       if not any(s in p for s in SKIP_PARTS))
    sources = [("CPython standard library", sys.version.split()[0],
                "PSF-2.0 (%s/LICENSE.txt)" % stdlib, std_files)]
    skipped = []
    for site in sites:
        for name, ver, lic, files in distributions(site):
            if is_permissive(lic):
                sources.append((name, ver, lic, files))
            elif files:
                skipped.append({"name": name, "version": ver, "license": lic, "py_files": len(files)})
    seen_exact, seen_norm = set(), set()
    manifest, n_dup = [], 0
    cap = int(a.cap_mb * 1e6)
    with open(os.path.join(a.out, "train.jsonl"), "w") as ftr, open(os.path.join(a.out, "val.jsonl"), "w") as fva:
        for name, ver, lic, files in sources:
            nf = nb = nv = 0
            for p in files:
                if nb >= cap:
                    break
                if any(s in p for s in SKIP_PARTS[:3]):
                    continue
                try:
                    with open(p, encoding="utf-8") as f:
                        t = f.read()
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
                if int(h[:8], 16) % 100 == 0:
                    fva.write(rec)
                    nv += 1
                else:
                    ftr.write(rec)
                nf += 1
                nb += len(t.encode())
            if nf:
                manifest.append({"name": name, "version": ver, "license": lic, "files": nf, "bytes": nb,
                                 "val_files": nv})
    out = {"command": "python3 scripts/demo/make_corpus.py", "python": sys.version.split()[0],
           "site_packages": sites, "duplicates_dropped": n_dup, "cap_bytes_per_distribution": cap,
           "split": "validation = files whose sha1(content) mod 100 == 0",
           "total_files": sum(m["files"] for m in manifest), "total_bytes": sum(m["bytes"] for m in manifest),
           "sources": manifest, "left_out_not_permissive": skipped}
    with open(a.manifest or os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("corpus: %d distributions, %d files, %.1f MB; duplicates dropped %d; left out (license) %d"
          % (len(manifest), out["total_files"], out["total_bytes"] / 1e6, n_dup, len(skipped)), flush=True)


if __name__ == "__main__":
    main()

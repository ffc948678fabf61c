#!/usr/bin/env python3
"""Independent reference for `imgdedup similarity` (python3 hashlib).

usage: simref.py check CSV METRIC BS REPO   compare a csv matrix with a recomputation
       simref.py top K BS REPO               print 'image,seed1,seed2..' best seeds (containment desc)
Images are REPO's *.raw/*.img files, ids relative to REPO."""
import csv, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blockhash import ZERO, blocks  # the one reference block hasher

def digests(path, bs):
    return [None if d == ZERO else d for d in blocks(path, bs)]

def load(repo, bs):
    imgs = {}
    for dp, dn, fn in os.walk(repo):
        dn[:] = [d for d in dn if d != ".imgdedup"]
        for f in fn:
            if f.endswith((".raw", ".img")):
                p = os.path.join(dp, f)
                imgs[os.path.relpath(p, repo)] = [d for d in digests(p, bs) if d is not None]
    return imgs

def value(imgs, metric, a, b):
    if a == b:
        return 1.0
    A, B = imgs[a], imgs[b]
    sa, sb = set(A), set(B)
    if metric == "jaccard":
        u = len(sa | sb)
        return len(sa & sb) / u if u else 0.0
    return sum(1 for d in A if d in sb) / len(A) if A else 0.0

if sys.argv[1] == "check":
    path, metric, bs, repo = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    imgs = load(repo, bs)
    rows = list(csv.reader(open(path)))
    assert rows[0][0] == "image", rows[0]
    cols = rows[0][1:]
    assert sorted(cols) == sorted(imgs), (cols, sorted(imgs))
    assert [r[0] for r in rows[1:]] == cols, "rows and columns in different orders"
    worst = 0.0
    for r in rows[1:]:
        for c, v in zip(cols, r[1:]):
            assert len(v.split(".")[1]) >= 4, "fewer than 4 decimals: " + v
            worst = max(worst, abs(float(v) - value(imgs, metric, r[0], c)))
    assert worst < 1e-5, "largest difference %g" % worst
    print("%s matrix of %d images matches (largest difference %.2g)" % (metric, len(cols), worst))
elif sys.argv[1] == "top":
    k, bs, repo = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    imgs = load(repo, bs)
    for a in sorted(imgs):
        others = sorted((b for b in imgs if b != a),
                        key=lambda b: (-value(imgs, "containment", a, b), -value(imgs, "jaccard", a, b), b))
        print(",".join([a] + others[:k]))
